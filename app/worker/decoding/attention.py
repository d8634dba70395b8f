"""Attention as whisper computes it, on views of static caches: dense, causal and variable-length forms."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor
from whisper.model import ResidualAttentionBlock

log = logging.getLogger(__name__)


def split_heads(x: Tensor, n_head: int) -> Tensor:
    """(rows, tokens, width) viewed as (rows, heads, tokens, head width), as whisper's attention does."""
    return x.view(*x.shape[:2], n_head, -1).permute(0, 2, 1, 3)


def attend(q: Tensor, k: Tensor, v: Tensor, n_head: int, causal: bool = False) -> Tensor:
    """whisper's qkv_attention (its SDPA branch), on views of static caches."""
    heads = split_heads(q, n_head), split_heads(k, n_head), split_heads(v, n_head)
    attended = F.scaled_dot_product_attention(*heads, is_causal=causal)
    return attended.permute(0, 2, 1, 3).flatten(start_dim=2)


def cross_attention_and_mlp(block: ResidualAttentionBlock, x: Tensor, keys: Tensor, values: Tensor) -> Tensor:
    """The rest of ResidualAttentionBlock.forward after its self-attention, over cached cross keys and values."""
    query = block.cross_attn.query(block.cross_attn_ln(x))
    x = x + block.cross_attn.out(attend(query, keys, values, block.cross_attn.n_head))
    return x + block.mlp(block.mlp_ln(x))


def dense_attention(query: Tensor, keys: Tensor, values: Tensor) -> Tensor:
    """whisper's call: (rows, heads, 1, d) queries over (rows, heads, n, d) keys, no mask."""
    return F.scaled_dot_product_attention(query, keys, values)


def varlen_attention(query: Tensor, keys: Tensor, values: Tensor, lengths: Tensor, offsets: Tensor) -> Tensor:
    """Flash attention of one query per row over the first `lengths[row]` keys of that row's cache.

    query: (rows, heads, d); keys, values: (rows * n_ctx, heads, d); lengths: (rows,) int32;
    offsets: int32 0, 1, 2, ... (at least rows + 1 of them). Shapes and pointers stay fixed, so a
    CUDA graph can hold the call.
    """
    rows = query.shape[0]
    n_ctx = keys.shape[0] // rows
    output, *_ = torch.ops.aten._flash_attention_forward(
        query, keys, values, offsets[: rows + 1], offsets[: rows + 1] * n_ctx, 1, n_ctx, 0.0, False, False,
        seqused_k=lengths,
    )  # fmt: skip
    return output


def varlen_is_exact(device: torch.device, n_head: int, head_width: int, n_ctx: int, bitwise: bool = True) -> bool:
    """Whether flash attention's variable-length form gives, bit for bit, whisper's dense call's rows.

    The dense call is whisper's: a batch of rows of one length. Probed once at start-up on random data
    at lengths around the kernel's block sizes, with rows of other lengths beside them in the
    variable-length call. Any difference (or the op missing in this torch) keeps the grouped attention.
    (whisper's own call splits long key ranges over several blocks when batch x heads is small, so at
    a handful of rows and over 256 keys even whisper.decode's results depend on the batch's size.)
    With `bitwise` False, rows within fp16 rounding of the dense call's are enough: for a decoder whose
    cross-attention kernel already rounds differently from whisper's call (cuDNN, split-KV).
    """
    rows, others = 16, 4
    try:
        generator = torch.Generator(device=device).manual_seed(0)
        offsets = torch.arange(rows + others + 1, dtype=torch.int32, device=device)
        flat = ((rows + others) * n_ctx, n_head, head_width)
        for length in sorted({1, 2, 63, 64, 65, 127, 128, 129, 255, 256, 257, 300, n_ctx - 1, n_ctx}):
            shape = (rows + others, n_ctx, n_head, head_width)
            keys = torch.randn(shape, device=device, dtype=torch.float16, generator=generator)
            values = torch.randn(shape, device=device, dtype=torch.float16, generator=generator)
            query = torch.randn(
                rows + others, n_head, head_width, device=device, dtype=torch.float16, generator=generator
            )
            lengths = torch.randint(
                1, n_ctx + 1, (rows + others,), device=device, generator=generator, dtype=torch.int32
            )
            lengths[:rows] = length
            varlen = varlen_attention(query, keys.view(flat), values.view(flat), lengths, offsets)
            dense = dense_attention(
                query[:rows, :, None],
                keys[:rows, :length].permute(0, 2, 1, 3),
                values[:rows, :length].permute(0, 2, 1, 3),
            )
            same = (
                torch.equal(dense[:, :, 0], varlen[:rows])
                if bitwise
                else torch.allclose(dense[:, :, 0], varlen[:rows], rtol=1e-2, atol=1e-2)
            )
            if not same:
                log.warning("varlen attention differs from the dense call at %d keys", length)
                return False
        return True
    except (RuntimeError, TypeError) as error:
        log.warning("varlen attention unavailable: %s", error)
        return False
