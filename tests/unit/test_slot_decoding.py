"""The slot decoder against whisper.decode: real tiny.en on real speech of different lengths, windows
joining and leaving the running decode at different steps, tokens identical.

On the CPU the rows of equal length are attended together by whisper's own call; on the GPU the
same scheduling runs as CUDA graphs (scripts/bench_engine.py checks the identity there).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import whisper
from whisper.decoding import DecodingOptions
from whisper.model import Whisper

from app.worker import synthetic
from app.worker.decoding.graphs import bucket
from app.worker.decoding.plan import greedy_plan
from app.worker.decoding.slots import SlotDecoder
from app.worker.engine import log_mel_batch


@pytest.fixture(scope="module")
def speech_features(tiny_en_model: Whisper, five_second_clips: list[Path]) -> torch.Tensor:
    """Encoder output of six windows of real speech, from about 2 s to 30 s: they end at different steps."""
    clips = [whisper.load_audio(str(path)) for path in five_second_clips]
    long = np.concatenate(clips)
    waveforms = [clips[0][: 2 * 16000], clips[1], clips[2], clips[3], long[: 18 * 16000], long[: 30 * 16000]]
    with torch.inference_mode():
        return tiny_en_model.encoder(log_mel_batch(waveforms, tiny_en_model.dims.n_mels, torch.device("cpu")))


def run_slots(model: Whisper, features: torch.Tensor, options: DecodingOptions, capacity: int, limits=None) -> dict:
    """Admit windows in waves (two now, more after a few steps, the rest as slots free up): tokens by window."""
    plan, initial, _ = greedy_plan(model, options)
    decoder = SlotDecoder(model, capacity=capacity)
    waiting = list(range(len(features)))
    limits = limits or [plan.max_tokens] * len(features)
    window_of_slot: dict[int, int] = {}
    results: dict[int, tuple[list[int], float, float]] = {}
    steps = 0
    while waiting or decoder.occupied:
        free = decoder.free_slots()
        # admit at most two at a time, and only every third step: windows start at different positions
        if waiting and free and steps % 3 == 0:
            taken = waiting[: min(2, len(free))]
            waiting = waiting[len(taken) :]
            slots = free[: len(taken)]
            decoder.admit(slots, features[taken], plan, initial, [limits[i] for i in taken])
            window_of_slot.update(zip(slots, taken, strict=True))
        if decoder.occupied:
            decoder.step()
        for result in decoder.finished():
            results[window_of_slot.pop(result.slot)] = (result.tokens, result.sum_logprob, result.no_speech_prob)
        steps += 1
        assert steps < 2000
    return results


@pytest.mark.parametrize("capacity", [3, 8], ids=["slots-reused", "spare-slots"])
def test_slot_tokens_match_whisper_decode(tiny_en_model: Whisper, speech_features: torch.Tensor, capacity: int) -> None:
    options = DecodingOptions(language="en", fp16=False)
    with torch.inference_mode():
        expected = whisper.decode(tiny_en_model, speech_features, options)
    got = run_slots(tiny_en_model, speech_features, options, capacity)
    lengths = {len(reference.tokens) for reference in expected}
    assert len(lengths) >= 4, f"the windows should end at different steps: {lengths}"
    for index, reference in enumerate(expected):
        tokens, sum_logprob, no_speech = got[index]
        assert tokens == reference.tokens, index
        assert sum_logprob / (len(tokens) + 1) == pytest.approx(reference.avg_logprob, rel=1e-4, abs=1e-6)
        assert no_speech == pytest.approx(reference.no_speech_prob, rel=1e-4, abs=1e-9)


def test_prompted_windows_match_whisper_decode(tiny_en_model: Whisper, speech_features: torch.Tensor) -> None:
    options = DecodingOptions(language="en", fp16=False, prompt="Stella, snow peas and a toy frog.")
    with torch.inference_mode():
        expected = whisper.decode(tiny_en_model, speech_features[:3], options)
    got = run_slots(tiny_en_model, speech_features[:3], options, capacity=2)
    assert [got[i][0] for i in range(3)] == [reference.tokens for reference in expected]


def test_a_window_stops_at_its_own_limit() -> None:
    """The synthetic model's per-window token counts: each row ends at its limit, not the batch's."""
    model = synthetic.build_model("tiny", "cpu", tokens_per_window=50)
    options = DecodingOptions(language="en", fp16=False, **model.decoding_overrides())
    features = torch.randn(3, 1500, 384)
    with torch.inference_mode():
        features = model.encoder(torch.randn(3, 80, 3000))
    got = run_slots(model, features, options, capacity=4, limits=[5, 17, 1])
    assert [len(got[i][0]) for i in range(3)] == [5, 17, 1]
    # the first tokens are those of an unlimited decode: a limit only cuts the row short
    with torch.inference_mode():
        reference = whisper.decode(model, features, options)
    assert got[1][0] == reference[1].tokens[:17]


def test_buckets_cover_every_slot_count() -> None:
    assert [bucket(n, 40) for n in (1, 3, 16, 17, 33, 40)] == [1, 4, 16, 32, 40, 40]
