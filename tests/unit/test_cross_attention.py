"""Cross-attention of the decode step: float8 scales and round trip, the cache, and the split-KV kernel.

The kernel itself runs here in Triton's CPU interpreter (a subprocess: the interpreter is chosen when
Triton is imported), on small shapes that exercise its splits, several query rows and float8 keys
and values; on a GPU, `python -m scripts.bench_attention` checks the compiled kernel at the decoder's
real shapes against torch's attention and exits non-zero outside the same tolerance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from app.worker.decoding import cross_attention
from app.worker.decoding.cross_attention import (
    FP8_MAX,
    CrossAttentionCache,
    CrossAttentionOptions,
    dequantize,
    head_scales,
    quantize,
)

ROOT = Path(__file__).resolve().parents[2]
HEADS, HEAD_WIDTH = 4, 64


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_each_heads_scale_is_its_largest_magnitude_over_the_float8_maximum() -> None:
    x = randn(2, 50, HEADS * HEAD_WIDTH)
    x[1, 7, 2 * HEAD_WIDTH + 5] = -300.0  # row 1, head 2
    scales = head_scales(x, HEADS)
    assert scales.shape == (2, HEADS) and scales.dtype == torch.float32
    assert scales[1, 2] == pytest.approx(300.0 / FP8_MAX)
    per_head = x.view(2, 50, HEADS, HEAD_WIDTH).abs().amax(dim=(1, 3))
    torch.testing.assert_close(scales, per_head / FP8_MAX)


def test_the_round_trip_keeps_every_value_within_e4m3s_rounding() -> None:
    # heads of very different magnitudes: a scale per head keeps each one's relative precision
    x = randn(3, 40, HEADS * HEAD_WIDTH) * torch.tensor([1e-3, 1.0, 30.0, 500.0]).repeat_interleave(HEAD_WIDTH)
    scales = head_scales(x, HEADS)
    stored = quantize(x, scales, HEADS)
    assert stored.dtype == torch.float8_e4m3fn
    back = dequantize(stored, scales, HEADS, torch.float32)
    # e4m3 keeps 3 mantissa bits: half a unit in the last place is 1/16 of a normal value; values below
    # its smallest normal (2^-6 of the scale) lose relative precision but not absolute
    error = (back - x).abs()
    bound = torch.maximum(x.abs() / 16, scales.repeat_interleave(HEAD_WIDTH, dim=1)[:, None, :] * 2**-9)
    assert bool((error <= bound).all())
    # the largest value of each head lands exactly on float8's maximum, so nothing saturates
    assert stored.float().abs().amax() == FP8_MAX


def test_an_all_zero_head_quantises_to_zeros_not_nan() -> None:
    x = torch.zeros(1, 10, HEADS * HEAD_WIDTH)
    scales = head_scales(x, HEADS)
    assert bool((scales > 0).all())
    back = dequantize(quantize(x, scales, HEADS), scales, HEADS, torch.float32)
    assert torch.equal(back, x)


def test_the_step_kernel_is_whispers_call_on_the_cpu_and_cudnn_or_triton_on_cuda() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert cross_attention.resolve(CrossAttentionOptions("auto"), cpu) == "sdpa"
    assert cross_attention.resolve(CrossAttentionOptions("auto", fp8=True), cpu) == "sdpa"
    assert cross_attention.resolve(CrossAttentionOptions("triton"), cuda) == "triton"
    assert cross_attention.resolve(CrossAttentionOptions("auto", fp8=True), cuda) == "triton"
    with pytest.raises(ValueError, match="float8"):
        cross_attention.resolve(CrossAttentionOptions("cudnn", fp8=True), cuda)


@pytest.mark.parametrize("fp8", [False, True], ids=["float32", "float8"])
def test_the_cache_stores_each_window_in_its_slot_and_attends_over_it(fp8: bool) -> None:
    layers, capacity, frames, width = 2, 5, 30, HEADS * HEAD_WIDTH
    cache = CrossAttentionCache(
        layers, capacity, frames, width, HEADS, torch.device("cpu"), torch.float32, CrossAttentionOptions(fp8=fp8)
    )
    keys, values = randn(2, frames, width, seed=1) * 3, randn(2, frames, width, seed=2)
    slots = torch.tensor([3, 1])
    cache.store(1, slots, keys, values)
    query = randn(4, 1, width, seed=3)
    attended = cache.attend(1, 4, query)
    assert attended.shape == (4, 1, width)
    if fp8:
        # what the float8 slots hold: each key and value rounded to e4m3 at its head's scale
        scales = head_scales(keys, HEADS), head_scales(values, HEADS)
        keys = dequantize(quantize(keys, scales[0], HEADS), scales[0], HEADS, torch.float32)
        values = dequantize(quantize(values, scales[1], HEADS), scales[1], HEADS, torch.float32)
    expected = cross_attention.sdpa(query[[3, 1]], keys, values, HEADS)
    torch.testing.assert_close(attended[[3, 1]], expected, atol=1e-5, rtol=0)
    if fp8:
        assert cache.keys.dtype == torch.float8_e4m3fn
        # slots stored nowhere else, and free slots keep unit scales
        assert torch.equal(cache.key_scales[1, 3], head_scales(keys, HEADS)[0])
        assert bool((cache.key_scales[0] == 1).all()) and bool((cache.key_scales[1, [0, 2, 4]] == 1).all())


INTERPRETED_CHECK = """
import json, sys, torch
from app.worker.decoding import cross_attention, split_kv

heads, results = 4, []
for rows, tokens, frames, dtype, fp8, tiling in json.loads(sys.argv[1]):
    g = torch.Generator().manual_seed(rows * 100 + frames)
    width = heads * 64
    q = torch.randn(rows, tokens, width, generator=g).to(getattr(torch, dtype))
    # keys and values sliced from a larger cache, as the decoder's [layer, :rows] views are
    k = torch.randn(rows + 2, frames, width, generator=g).to(q.dtype)[:rows] * 2
    v = torch.randn(rows + 2, frames, width, generator=g).to(q.dtype)[:rows]
    scales = (None, None)
    if fp8:
        scales = (cross_attention.head_scales(k, heads), cross_attention.head_scales(v, heads))
        k, v = cross_attention.quantize(k, scales[0], heads), cross_attention.quantize(v, scales[1], heads)
    # against what the slots hold: float8 values times their scales
    keys = cross_attention.dequantize(k, scales[0], heads, torch.float32) if fp8 else k.float()
    values = cross_attention.dequantize(v, scales[1], heads, torch.float32) if fp8 else v.float()
    reference = cross_attention.sdpa(q.float(), keys, values, heads)
    out = split_kv.attention(q, k, v, heads, *scales, tiling=split_kv.Tiling(*tiling))
    splits = split_kv.split_count(rows * tokens * heads, frames, split_kv.Tiling(*tiling))[0]
    results.append({"error": (out.float() - reference).abs().max().item(), "dtype": str(out.dtype),
                    "shape": list(out.shape), "splits": splits})
print(json.dumps(results))
"""
# (rows, query tokens, frames, dtype, float8, (frames per tile, warps, target programs))
CASES = [
    (3, 1, 200, "float16", False, (32, 1, 8)),  # one program per row and head
    (2, 1, 300, "float16", False, (32, 1, 64)),  # frames split over programs, a ragged last tile
    (2, 3, 70, "float32", False, (32, 1, 48)),  # several query rows (whisper's prompt)
    (2, 1, 200, "float16", True, (32, 1, 8)),  # float8, unsplit
    (2, 1, 200, "float16", True, (64, 1, 64)),  # float8, split
]


def test_the_split_kv_kernel_matches_torchs_attention_in_tritons_interpreter() -> None:
    environment = os.environ | {"TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    finished = subprocess.run(
        [sys.executable, "-c", INTERPRETED_CHECK, json.dumps(CASES)], env=environment, capture_output=True,
        text=True, timeout=600, check=False,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-3000:]
    results = json.loads(finished.stdout.strip().splitlines()[-1])
    assert [r["splits"] > 1 for r in results] == [False, True, True, False, True]
    for (rows, tokens, _, dtype, _, _), result in zip(CASES, results, strict=True):
        assert result["shape"] == [rows, tokens, HEADS * HEAD_WIDTH]
        assert result["dtype"] == f"torch.{dtype}"
        # the output's float16 rounding alone
        assert result["error"] <= 2e-3, result
