"""Cross-attention of the decoder's token step at memory bandwidth, and its cache of keys and values.

Each token step reads every window's cross-attention keys and values (1,500 audio frames per layer):
at a few hundred windows that is tens of GB a step against under a GB of weights, so the step is
bound by how fast the attention kernel reads them. torch's default (flash attention, whose one-row
form is far from bandwidth) is kept where a call meets many shapes (the prefill, the CPU); the step,
whose shape is fixed per slot bucket and which runs inside CUDA graphs, takes one of:

- "cudnn": cuDNN's attention. It builds a plan per shape (tens of ms of CPU), which the graph
  capture's warm-up run pays once per bucket; a replay costs nothing more.
- "triton": our split-KV kernel (split_kv.py); also the only one that reads float8 keys and values.
- "sdpa": whisper's own call (torch picks flash; bit-identical to whisper.decode).

The figures behind "auto" (cuDNN where it is available, for float16) are in benchmarks/README.md
("Cross-attention at memory bandwidth"), measured by scripts/bench_attention.py.

float8 (e4m3) keys and values, WHISPER_FP8_CROSS_ATTENTION: one scale per window, layer and head,
taken from the largest magnitude of that head's keys (or values) so nothing saturates. Half the
bytes per step and per slot; what it does to word error rate is measured in benchmarks/README.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

if TYPE_CHECKING:
    from app.worker.decoding.split_kv import Tiling

log = logging.getLogger(__name__)

Backend = Literal["auto", "sdpa", "cudnn", "triton"]
FP8 = torch.float8_e4m3fn
# e4m3's largest finite value
FP8_MAX = 448.0
# a scale never below this, so an all-zero head (padding) quantises to zeros, not NaN
SMALLEST_SCALE = 1e-12


@dataclass(frozen=True)
class CrossAttentionOptions:
    """How a decoder's step attends to the audio: the kernel, and whether keys and values are float8."""

    backend: Backend = "auto"
    fp8: bool = False


_configured = CrossAttentionOptions()


def configure(options: CrossAttentionOptions) -> None:
    """This process's choice (the worker sets it from the settings before it builds a decoder)."""
    global _configured
    _configured = options


def configured() -> CrossAttentionOptions:
    return _configured


def resolve(options: CrossAttentionOptions, device: torch.device) -> Literal["sdpa", "cudnn", "triton"]:
    """The kernel a step on `device` runs under `options`."""
    if device.type != "cuda":
        return "sdpa"
    if options.fp8:
        if options.backend not in ("auto", "triton"):
            raise ValueError(f"float8 cross-attention runs on the triton kernel, not {options.backend!r}")
        return "triton"
    if options.backend == "auto":
        return "cudnn" if cudnn_works(device) else "triton"
    return options.backend


def cudnn_works(device: torch.device, n_head: int = 16, head_width: int = 64, n_frames: int = 1500) -> bool:
    """Whether cuDNN's attention runs the step's shape here (a cuDNN too old, or a GPU it does not cover, raises)."""
    if not torch.backends.cudnn.is_available():  # type: ignore[no-untyped-call]
        return False
    try:
        query = torch.zeros(1, 1, n_head * head_width, dtype=torch.float16, device=device)
        keys = torch.zeros(1, n_frames, n_head * head_width, dtype=torch.float16, device=device)
        cudnn(query, keys, keys, n_head)
    except RuntimeError as error:
        log.warning("cuDNN attention unavailable, the triton kernel instead: %s", error)
        return False
    return True


# -- float8 ------------------------------------------------------------------------------------------


def head_scales(x: Tensor, n_head: int) -> Tensor:
    """(rows, heads) float32 factors: x's largest magnitude per row and head, over FP8_MAX.

    x: (rows, frames, width), width = heads x head width."""
    rows, frames, width = x.shape
    largest = x.view(rows, frames, n_head, width // n_head).abs().amax(dim=(1, 3)).float()
    return (largest / FP8_MAX).clamp(min=SMALLEST_SCALE)


def quantize(x: Tensor, scales: Tensor, n_head: int) -> Tensor:
    """x / scale per row and head, as float8 e4m3 (rows, frames, width)."""
    rows, frames, width = x.shape
    heads = x.view(rows, frames, n_head, width // n_head).float() / scales[:, None, :, None]
    return heads.clamp(-FP8_MAX, FP8_MAX).to(FP8).view(rows, frames, width)


def dequantize(x: Tensor, scales: Tensor, n_head: int, dtype: torch.dtype) -> Tensor:
    """quantize's inverse, up to float8's rounding."""
    rows, frames, width = x.shape
    heads = x.view(rows, frames, n_head, width // n_head).float() * scales[:, None, :, None]
    return heads.to(dtype).view(rows, frames, width)


# -- attention ---------------------------------------------------------------------------------------


def _heads(x: Tensor, n_head: int) -> Tensor:
    return x.view(*x.shape[:2], n_head, -1).permute(0, 2, 1, 3)


def sdpa(query: Tensor, keys: Tensor, values: Tensor, n_head: int) -> Tensor:
    """whisper's qkv_attention (its SDPA branch): (rows, tokens, width) over (rows, frames, width)."""
    attended = F.scaled_dot_product_attention(_heads(query, n_head), _heads(keys, n_head), _heads(values, n_head))
    return attended.permute(0, 2, 1, 3).flatten(start_dim=2)


def cudnn(query: Tensor, keys: Tensor, values: Tensor, n_head: int) -> Tensor:
    """sdpa on cuDNN's kernel alone (the worker keeps cuDNN out of attention everywhere else)."""
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        return sdpa(query, keys, values, n_head)


def triton(
    query: Tensor, keys: Tensor, values: Tensor, n_head: int, key_scales: Tensor | None = None,
    value_scales: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """The split-KV kernel, with the tiling tuned for this shape (tuned on first use outside a capture)."""
    from app.worker.decoding import split_kv

    key = (tuple(query.shape), tuple(keys.shape), keys.dtype, query.device)
    tiling = _tilings.get(key)
    if tiling is None:
        if torch.cuda.is_current_stream_capturing():
            tiling = split_kv.TILINGS[0]
        else:
            tiling = _tilings[key] = _fastest(
                lambda t: split_kv.attention(query, keys, values, n_head, key_scales, value_scales, t),
                split_kv.TILINGS,
            )
    return split_kv.attention(query, keys, values, n_head, key_scales, value_scales, tiling)


_tilings: dict[tuple[object, ...], Tiling] = {}


def _fastest(run: Callable[[Tiling], object], candidates: tuple[Tiling, ...], repeats: int = 5) -> Tiling:
    """The candidate whose run takes least GPU time (a median of `repeats`, after one warm-up each)."""
    times = []
    for candidate in candidates:
        run(candidate)
        samples = []
        for _ in range(repeats):
            start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            start.record()
            run(candidate)
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        times.append(sorted(samples)[repeats // 2])
    return candidates[times.index(min(times))]


class CrossAttentionCache:
    """Every slot's cross-attention keys and values for every layer, and the step's attention over them.

    >>> cache = CrossAttentionCache(layers=24, capacity=256, n_frames=1500, width=1024, n_head=16,
    ...                             device=device, dtype=torch.float16)
    >>> cache.store(layer, slots, keys, values)       # at admission: (len(slots), frames, width) each
    >>> attended = cache.attend(layer, rows, query)  # in the step: (rows, 1, width)
    """

    def __init__(
        self, layers: int, capacity: int, n_frames: int, width: int, n_head: int, device: torch.device,
        dtype: torch.dtype, options: CrossAttentionOptions | None = None,
    ) -> None:  # fmt: skip
        options = options or configured()
        self.n_head = n_head
        self.dtype = dtype
        self.fp8 = options.fp8
        self.backend = resolve(options, device)
        stored = FP8 if self.fp8 else dtype
        self.keys = torch.zeros(layers, capacity, n_frames, width, dtype=stored, device=device)
        self.values = torch.zeros(layers, capacity, n_frames, width, dtype=stored, device=device)
        # ones, not zeros: a free slot's rows still run through the kernel
        self.key_scales = torch.ones(layers, capacity, n_head, dtype=torch.float32, device=device)
        self.value_scales = torch.ones(layers, capacity, n_head, dtype=torch.float32, device=device)
        log.info("cross-attention: %s kernel, %s keys and values", self.backend, "float8" if self.fp8 else dtype)

    def store(self, layer: int, slots: Tensor, keys: Tensor, values: Tensor) -> None:
        """Keys and values (len(slots), frames, width) of newly admitted windows into their slots."""
        if self.fp8:
            key_scales, value_scales = head_scales(keys, self.n_head), head_scales(values, self.n_head)
            self.key_scales[layer].index_copy_(0, slots, key_scales)
            self.value_scales[layer].index_copy_(0, slots, value_scales)
            keys, values = quantize(keys, key_scales, self.n_head), quantize(values, value_scales, self.n_head)
            # index_copy_ has no float8 kernel: the same bytes, copied as bytes
            self.keys[layer].view(torch.uint8).index_copy_(0, slots, keys.view(torch.uint8))
            self.values[layer].view(torch.uint8).index_copy_(0, slots, values.view(torch.uint8))
            return
        self.keys[layer].index_copy_(0, slots, keys)
        self.values[layer].index_copy_(0, slots, values)

    def attend(self, layer: int, rows: int, query: Tensor) -> Tensor:
        """Slots [0, rows)'s queries (rows, tokens, width) over their keys and values of `layer`."""
        keys, values = self.keys[layer, :rows], self.values[layer, :rows]
        if self.backend == "triton":
            scales = (self.key_scales[layer, :rows], self.value_scales[layer, :rows]) if self.fp8 else (None, None)
            return triton(query, keys, values, self.n_head, *scales)
        if self.fp8:
            # the reference path (the CPU): the same rounding, attended in the query's precision
            key_scales, value_scales = self.key_scales[layer, :rows], self.value_scales[layer, :rows]
            keys = dequantize(keys, key_scales, self.n_head, query.dtype)
            values = dequantize(values, value_scales, self.n_head, query.dtype)
        attend = cudnn if self.backend == "cudnn" else sdpa
        return attend(query, keys, values, self.n_head)
