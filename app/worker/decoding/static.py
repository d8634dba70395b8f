"""Static passes: a batch of windows decoded to its end, through the one slot decoder or whisper.decode.

A static pass is a continuous batch whose windows are all admitted at once: the slot decoder prefills
every window of the pass into its slots, steps until the last one ends, and the results are whisper's
(the tokens bit for bit). whisper.decode serves the CPU and what the slots do not cover (sampling,
beam search).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import whisper
from torch import Tensor
from whisper.decoding import DecodingOptions, DecodingResult
from whisper.model import Whisper

from app.worker.decoding.memory import windows_that_fit
from app.worker.decoding.plan import greedy_plan
from app.worker.decoding.slots import SlotDecoder, SlotResult, decoding_result

log = logging.getLogger(__name__)


class BatchDecoder(Protocol):
    """Decodes encoder features of at most `capacity` windows per pass, like whisper.decode."""

    capacity: int

    def __call__(
        self, features: Tensor, options: DecodingOptions, limits: Sequence[int] | None = None
    ) -> list[DecodingResult]:
        """`limits`: the most tokens each window may decode (it then ends); None: to end-of-text."""
        ...

    def prepare(self, options: DecodingOptions) -> int:
        """Do the one-time work for `options` at every batch size now; returns how many graphs it made."""
        ...


class WhisperDecoder:
    """whisper.decode itself: the path on the CPU, and the reference the slot decoder must match."""

    def __init__(self, model: Whisper, capacity: int) -> None:
        self.model = model
        self.capacity = capacity

    def __call__(
        self, features: Tensor, options: DecodingOptions, limits: Sequence[int] | None = None
    ) -> list[DecodingResult]:
        # a per-window limit (a synthetic model's realistic lengths) is the slot decoder's only
        return whisper.decode(self.model, features, options)

    def prepare(self, options: DecodingOptions) -> int:
        return 0


class SlotPass:
    """Greedy passes of up to `capacity` windows through the slot decoder, all admitted at once.

    >>> decode = SlotPass(model, capacity=128)
    >>> results = decode(features, DecodingOptions(language="en", fp16=True))
    """

    def __init__(self, model: Whisper, capacity: int) -> None:
        self.model = model
        self.capacity = capacity
        self.slots = SlotDecoder(model, capacity)

    def __call__(
        self, features: Tensor, options: DecodingOptions, limits: Sequence[int] | None = None
    ) -> list[DecodingResult]:
        prepared = greedy_plan(self.model, options) if features.dtype == self.slots.dtype else None
        if prepared is None:
            return whisper.decode(self.model, features, options)
        plan, initial_tokens, tokenizer = prepared
        results: list[DecodingResult] = []
        for first in range(0, len(features), self.capacity):
            chunk = features[first : first + self.capacity]
            rows = range(len(chunk))
            chunk_limits = [plan.max_tokens] * len(chunk) if limits is None else limits[first : first + len(chunk)]
            self.slots.admit(list(rows), chunk, plan, initial_tokens, chunk_limits)
            ended: dict[int, SlotResult] = {}
            while len(ended) < len(chunk):
                if self.slots.occupied:
                    self.slots.step()
                ended.update({result.slot: result for result in self.slots.finished()})
            language = options.language or "en"
            results += [decoding_result(ended[row], plan, tokenizer, language, chunk[row]) for row in rows]
        return results

    def prepare(self, options: DecodingOptions) -> int:
        """Capture the step graphs of `options`' plan for every bucket of slots, before any request waits."""
        prepared = greedy_plan(self.model, options)
        return self.slots.prepare(prepared[0]) if prepared is not None else 0


def batch_decoder(model: Whisper, max_windows_per_pass: int, gpu_share: float = 1.0) -> BatchDecoder:
    """Static passes through the slot decoder on the GPU, sized to free memory; whisper.decode on the CPU."""
    if model.device.type != "cuda":
        return WhisperDecoder(model, max_windows_per_pass)
    decoder = SlotPass(model, windows_that_fit(model, max_windows_per_pass, gpu_share))
    log.info("static passes of up to %d windows through the slot decoder", decoder.capacity)
    return decoder
