"""Which attention kernel whisper's decoder self-attention runs on this GPU, and which graph-capturable
call gives bit-identical results.

Usage: python -m scripts.probe_attention [--output attention.json]
whisper calls F.scaled_dot_product_attention on exactly the keys decoded so far, so a CUDA graph cannot
hold it (the length changes every step). A variable-length kernel reading a static cache with the used
length as a device tensor can be captured; it may replace whisper's call only where it is bit-identical
for every length and batch size the decoder meets. Shapes are medium's (16 heads of 64).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

HEADS, HEAD_WIDTH, CONTEXT = 16, 64, 448
ROWS = (1, 32, 256)
# whisper's initial tokens (3) plus up to 224 sampled ones
KEY_COUNTS = range(3, 228)


def whisper_layout(x: torch.Tensor) -> torch.Tensor:
    """(rows, tokens, width) viewed per head, as whisper's qkv_attention does."""
    return x.view(*x.shape[:2], HEADS, -1).permute(0, 2, 1, 3)


def varlen_flash(q: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, used: torch.Tensor, max_k: int,
                 num_splits: int | None) -> torch.Tensor:  # fmt: skip
    """Flash attention over the first `used` positions of static (rows, CONTEXT, width) caches."""
    rows = q.shape[0]
    device = q.device
    cum_q = torch.arange(rows + 1, dtype=torch.int32, device=device)
    cum_k = cum_q * CONTEXT
    extra = {} if num_splits is None else {"num_splits": num_splits}
    out = torch.ops.aten._flash_attention_forward(
        q.view(rows, HEADS, HEAD_WIDTH), cache_k.view(-1, HEADS, HEAD_WIDTH), cache_v.view(-1, HEADS, HEAD_WIDTH),
        cum_q, cum_k, 1, max_k, 0.0, False, False, seqused_k=used, **extra,
    )[0]  # fmt: skip
    return out.view(rows, 1, HEADS, HEAD_WIDTH).permute(0, 2, 1, 3)


def identity(variants: dict) -> dict:
    """For each variant, how many (rows, n_keys) cases match whisper's call bit for bit."""
    generator = torch.Generator(device="cuda").manual_seed(0)
    counts = {name: 0 for name in variants}
    errors: dict[str, str] = {}
    cases = 0
    for rows in ROWS:
        cache_k = torch.randn(rows, CONTEXT, HEADS * HEAD_WIDTH, device="cuda", generator=generator).half()
        cache_v = torch.randn(rows, CONTEXT, HEADS * HEAD_WIDTH, device="cuda", generator=generator).half()
        q = torch.randn(rows, 1, HEADS * HEAD_WIDTH, device="cuda", generator=generator).half()
        for n_keys in KEY_COUNTS:
            cases += 1
            # whisper's keys are a contiguous (rows, n, width) tensor of their own
            k, v = cache_k[:, :n_keys].contiguous(), cache_v[:, :n_keys].contiguous()
            reference = F.scaled_dot_product_attention(whisper_layout(q), whisper_layout(k), whisper_layout(v))
            used = torch.full((rows,), n_keys, dtype=torch.int32, device="cuda")
            for name, variant in variants.items():
                if name in errors:
                    continue
                try:
                    got = variant(q, k, v, cache_k, cache_v, used, n_keys)
                except Exception as error:  # a kernel this torch lacks: reported, not fatal
                    errors[name] = f"{type(error).__name__}: {str(error)[:200]}"
                    continue
                counts[name] += bool(torch.equal(got, reference))
    return {"cases": cases, "identical": counts, "errors": errors}


def launch_cost(rows: int = 32, n_keys: int = 100, calls: int = 2000) -> dict:
    """CPU microseconds per call, the GPU queue kept from filling by a sync every 100 calls."""
    q = whisper_layout(torch.randn(rows, 1, HEADS * HEAD_WIDTH, device="cuda").half())
    k = whisper_layout(torch.randn(rows, n_keys, HEADS * HEAD_WIDTH, device="cuda").half())
    v = whisper_layout(torch.randn(rows, n_keys, HEADS * HEAD_WIDTH, device="cuda").half())
    direct = torch.ops.aten._scaled_dot_product_flash_attention
    results = {}
    for name, call in (("F.scaled_dot_product_attention", lambda: F.scaled_dot_product_attention(q, k, v)),
                       ("aten._scaled_dot_product_flash_attention", lambda: direct(q, k, v)),
                       ("graph replay (empty graph)", None)):  # fmt: skip
        if call is None:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                q.add_(0)
            call = graph.replay
        for _ in range(50):
            call()
        torch.cuda.synchronize()
        cpu = 0.0
        for _ in range(calls // 100):
            started = time.perf_counter()
            for _ in range(100):
                call()
            cpu += time.perf_counter() - started
            torch.cuda.synchronize()
        results[name] = round(1e6 * cpu / calls, 1)
    return results


def new_shape_cost(rows: int = 24) -> dict:
    """CPU time of the first call at each key count (a shape never seen) against a repeat call."""
    cache_k = torch.randn(rows, CONTEXT, HEADS * HEAD_WIDTH, device="cuda").half()
    cache_v = torch.randn(rows, CONTEXT, HEADS * HEAD_WIDTH, device="cuda").half()
    q = whisper_layout(torch.randn(rows, 1, HEADS * HEAD_WIDTH, device="cuda").half())
    timings: dict[str, list[float]] = {"first": [], "repeat": []}
    for attempt in ("first", "repeat"):
        for n_keys in KEY_COUNTS:
            k, v = whisper_layout(cache_k[:, :n_keys]), whisper_layout(cache_v[:, :n_keys])
            torch.cuda.synchronize()
            started = time.perf_counter()
            F.scaled_dot_product_attention(q, k, v)
            timings[attempt].append(time.perf_counter() - started)
    return {f"{name}_median_us": round(1e6 * statistics.median(values), 1) for name, values in timings.items()} | {
        f"{name}_total_ms": round(1e3 * sum(values), 1) for name, values in timings.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()

    def forced(backend: SDPBackend):
        def run(q, k, v, *_):
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(whisper_layout(q), whisper_layout(k), whisper_layout(v))

        return run

    variants = {
        "sdpa forced to flash": forced(SDPBackend.FLASH_ATTENTION),
        "sdpa forced to efficient": forced(SDPBackend.EFFICIENT_ATTENTION),
        "sdpa forced to cudnn": forced(SDPBackend.CUDNN_ATTENTION),
        "sdpa on a slice of a token-major static cache (the decoder's)": lambda q, k, v, ck, cv, used, n: (
            F.scaled_dot_product_attention(whisper_layout(q), whisper_layout(ck[:, :n]), whisper_layout(cv[:, :n]))
        ),
        "sdpa on a head-major copy": lambda q, k, v, *_: F.scaled_dot_product_attention(
            whisper_layout(q), whisper_layout(k).contiguous(), whisper_layout(v).contiguous()
        ),
        "varlen flash, max_k 448": lambda q, k, v, ck, cv, used, n: varlen_flash(q, ck, cv, used, CONTEXT, None),
        "varlen flash, max_k 256": lambda q, k, v, ck, cv, used, n: varlen_flash(q, ck, cv, used, 256, None),
        "varlen flash, max_k 448, 1 split": lambda q, k, v, ck, cv, used, n: varlen_flash(q, ck, cv, used, CONTEXT, 1),
        "varlen flash, max_k exact": lambda q, k, v, ck, cv, used, n: varlen_flash(q, ck, cv, used, n, None),
    }
    report: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for name, measure in (("identity", lambda: identity(variants)), ("cpu_us_per_call", launch_cost),
                          ("new_shape_cost", new_shape_cost)):  # fmt: skip
        report[name] = measure()
        text = json.dumps(report, indent=1)
        print(json.dumps({name: report[name]}, indent=1), flush=True)
        if args.output:
            args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
