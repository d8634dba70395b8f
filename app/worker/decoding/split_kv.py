# Triton's kernels take untyped pointers and constexprs: its decorator and their signatures stay unannotated
# mypy: disable-error-code="untyped-decorator,no-untyped-def"
"""A split-KV (flash-decoding) Triton kernel: a few query rows per window over its cached keys and values.

Cross-attention in a decode step is one query row per head over 1,500 audio frames: no matrix product
to speak of, all memory traffic. Each program reads one head's keys and values for a stretch of
frames once (an online softmax, as flash attention does), and where rows x heads alone would leave
the GPU's memory system idle the frames are split over several programs whose partial results a
second, small kernel combines. Keys and values may be float8 (e4m3) with one scale per window and
head: the bytes read halve, the arithmetic stays in float32.

Kept apart from cross_attention.py because Triton is imported only where a kernel runs on a GPU (or
in Triton's CPU interpreter, which the tests use).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton  # type: ignore[import-untyped]
import triton.language as tl  # type: ignore[import-untyped]
from torch import Tensor

LOG2_E = 1.4426950408889634


@dataclass(frozen=True)
class Tiling:
    """How one call is cut: frames per tile, warps per program, and the programs to aim for (which sets
    how many splits the frames get)."""

    block_frames: int = 64
    warps: int = 4
    target_programs: int = 2048


# what cross_attention's tuning tries, the default first
TILINGS = (
    Tiling(64, 4, 2048),
    Tiling(32, 2, 2048),
    Tiling(64, 4, 8192),
    Tiling(128, 4, 4096),
    Tiling(128, 8, 8192),
    Tiling(32, 4, 4096),
)


@triton.jit
def _partial_attention(
    query, keys, values, key_scales, value_scales, output, part_acc, part_max, part_sum,
    q_len, n_frames, frames_per_split, splits,
    stride_q_row, stride_q_token, stride_k_row, stride_k_frame, stride_v_row, stride_v_frame,
    stride_o_row, stride_o_token, softmax_scale,
    N_HEAD: tl.constexpr, HEAD_WIDTH: tl.constexpr, BLOCK_FRAMES: tl.constexpr, SPLIT: tl.constexpr,
    SCALED: tl.constexpr,
):  # fmt: skip
    program = tl.program_id(0)
    split = tl.program_id(1)
    head = program % N_HEAD
    row_token = program // N_HEAD
    row = row_token // q_len
    token = row_token % q_len
    width = tl.arange(0, HEAD_WIDTH)
    # log2(e) folded into the query: the softmax runs on exp2
    q = tl.load(query + row * stride_q_row + token * stride_q_token + head * HEAD_WIDTH + width).to(tl.float32)
    q = q * (softmax_scale * 1.4426950408889634)
    if SCALED:
        q = q * tl.load(key_scales + row * N_HEAD + head)
    start = split * frames_per_split
    end = tl.minimum(start + frames_per_split, n_frames)
    frame = tl.arange(0, BLOCK_FRAMES)
    k_base = keys + row * stride_k_row + head * HEAD_WIDTH
    v_base = values + row * stride_v_row + head * HEAD_WIDTH
    running_max = tl.full([1], float("-inf"), tl.float32)
    running_sum = tl.zeros([1], tl.float32)
    acc = tl.zeros([HEAD_WIDTH], tl.float32)
    # every tile holds at least one frame (splits are never empty), so the running max stays finite
    for tile in range(start, end, BLOCK_FRAMES):
        frames = tile + frame
        inside = frames < end
        k = tl.load(k_base + frames[:, None] * stride_k_frame + width[None, :], mask=inside[:, None], other=0.0)
        scores = tl.sum(k.to(tl.float32) * q[None, :], axis=1)
        scores = tl.where(inside, scores, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(scores, axis=0))
        correction = tl.exp2(running_max - new_max)
        weights = tl.exp2(scores - new_max)
        running_sum = running_sum * correction + tl.sum(weights, axis=0)
        v = tl.load(v_base + frames[:, None] * stride_v_frame + width[None, :], mask=inside[:, None], other=0.0)
        acc = acc * correction + tl.sum(weights[:, None] * v.to(tl.float32), axis=0)
        running_max = new_max
    if SPLIT:
        part = program * splits + split
        tl.store(part_acc + part * HEAD_WIDTH + width, acc)
        tl.store(part_max + part + tl.arange(0, 1), running_max)
        tl.store(part_sum + part + tl.arange(0, 1), running_sum)
    else:
        result = acc / running_sum
        if SCALED:
            result = result * tl.load(value_scales + row * N_HEAD + head)
        out = output + row * stride_o_row + token * stride_o_token + head * HEAD_WIDTH + width
        tl.store(out, result.to(output.dtype.element_ty))


@triton.jit
def _combine(
    part_acc, part_max, part_sum, value_scales, output, q_len, splits, stride_o_row, stride_o_token,
    N_HEAD: tl.constexpr, HEAD_WIDTH: tl.constexpr, MAX_SPLITS: tl.constexpr, SCALED: tl.constexpr,
):  # fmt: skip
    program = tl.program_id(0)
    head = program % N_HEAD
    row_token = program // N_HEAD
    row = row_token // q_len
    token = row_token % q_len
    split = tl.arange(0, MAX_SPLITS)
    used = split < splits
    width = tl.arange(0, HEAD_WIDTH)
    maxima = tl.load(part_max + program * splits + split, mask=used, other=float("-inf"))
    sums = tl.load(part_sum + program * splits + split, mask=used, other=0.0)
    accs = tl.load(part_acc + (program * splits + split)[:, None] * HEAD_WIDTH + width[None, :], mask=used[:, None],
                   other=0.0)  # fmt: skip
    weights = tl.exp2(maxima - tl.max(maxima, axis=0))
    result = tl.sum(accs * weights[:, None], axis=0) / tl.sum(sums * weights, axis=0)
    if SCALED:
        result = result * tl.load(value_scales + row * N_HEAD + head)
    out = output + row * stride_o_row + token * stride_o_token + head * HEAD_WIDTH + width
    tl.store(out, result.to(output.dtype.element_ty))


def split_count(programs: int, n_frames: int, tiling: Tiling) -> tuple[int, int]:
    """(splits, frames per split) for `programs` (rows x tokens x heads) programs before splitting."""
    wanted = max(1, min(64, math.ceil(tiling.target_programs / programs)))
    per_split = math.ceil(n_frames / wanted / tiling.block_frames) * tiling.block_frames
    return math.ceil(n_frames / per_split), per_split


def attention(
    query: Tensor, keys: Tensor, values: Tensor, n_head: int, key_scales: Tensor | None = None,
    value_scales: Tensor | None = None, tiling: Tiling = TILINGS[0],
) -> Tensor:  # fmt: skip
    """softmax(q k^T / sqrt(d)) v per head, no mask.

    query: (rows, tokens, width); keys, values: (rows, frames, width), token-major (frame stride
    `width`, unit stride inside a row); float16/bfloat16/float32, or float8 with `key_scales` and
    `value_scales` (rows, heads) float32, the factors that give back the original values. Returns
    (rows, tokens, width) in the query's dtype.
    """
    rows, q_len, width = query.shape
    n_frames = keys.shape[1]
    head_width = width // n_head
    for name, tensor in (("query", query), ("keys", keys), ("values", values)):
        if tensor.stride(-1) != 1:
            raise ValueError(f"{name} must have unit stride in its last dimension")
    scaled = key_scales is not None
    if scaled != (value_scales is not None):
        raise ValueError("keys and values are scaled together or not at all")
    output = torch.empty(rows, q_len, width, dtype=query.dtype, device=query.device)
    programs = rows * q_len * n_head
    splits, per_split = split_count(programs, n_frames, tiling)
    split = splits > 1
    if split:
        part_acc = torch.empty(programs * splits, head_width, dtype=torch.float32, device=query.device)
        part_max = torch.empty(programs * splits, dtype=torch.float32, device=query.device)
        part_sum = torch.empty(programs * splits, dtype=torch.float32, device=query.device)
    else:
        part_acc = part_max = part_sum = output
    # unused pointers must still be tensors
    k_scales = key_scales if key_scales is not None else output
    v_scales = value_scales if value_scales is not None else output
    _partial_attention[(programs, splits)](
        query, keys, values, k_scales, v_scales, output, part_acc, part_max, part_sum,
        q_len, n_frames, per_split, splits,
        query.stride(0), query.stride(1), keys.stride(0), keys.stride(1), values.stride(0), values.stride(1),
        output.stride(0), output.stride(1), 1.0 / math.sqrt(head_width),
        N_HEAD=n_head, HEAD_WIDTH=head_width, BLOCK_FRAMES=tiling.block_frames, SPLIT=split, SCALED=scaled,
        num_warps=tiling.warps,
    )  # fmt: skip
    if split:
        _combine[(programs,)](
            part_acc, part_max, part_sum, v_scales, output, q_len, splits, output.stride(0), output.stride(1),
            N_HEAD=n_head, HEAD_WIDTH=head_width, MAX_SPLITS=triton.next_power_of_2(splits), SCALED=scaled,
            num_warps=1,
        )  # fmt: skip
    return output
