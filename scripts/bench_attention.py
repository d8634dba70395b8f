"""The decode step's cross-attention on a GPU: each kernel's output against torch's, and the bytes it reads
per second beside a device-to-device copy's, in one run.

Usage: python -m scripts.bench_attention --output attention.json [--rows 1,16,64,256]
One query row per window and head over 1,500 audio frames, medium's 16 heads of 64, float16 keys and
values in the decoder's token-major cache layout (float8 for the fp8 row), each call replayed from a
CUDA graph as the decoder runs it. Bytes read = the keys and values (the query and output are a
thousandth of them). The copy's figure counts its reads and its writes: both cross the same HBM.
Exits non-zero where a kernel's output leaves the tolerance (this is the GPU check of
tests/unit/test_cross_attention.py, which runs the kernel in Triton's CPU interpreter).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from app.worker.decoding import cross_attention

HEADS, HEAD_WIDTH, FRAMES = 16, 64, 1500
WIDTH = HEADS * HEAD_WIDTH
# float16 output against a float32 reference; float8 keys and values against the float16 ones
TOLERANCE = {"float16": 2e-3, "float8": 6e-2}
CALLS_PER_GRAPH = 10


def graph_seconds(call: Callable[[], object], replays: int = 5) -> float:
    """Seconds per call: CALLS_PER_GRAPH calls captured once (after a warm-up that builds any plan), median replay."""
    side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(CALLS_PER_GRAPH):
            call()
    graph.replay()
    samples = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1000 / CALLS_PER_GRAPH)
    return sorted(samples)[replays // 2]


def copy_bandwidth(gib: float = 4.0) -> float:
    """Bytes per second a device-to-device copy moves (read + written)."""
    source = torch.empty(int(gib * 2**30), dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    seconds = graph_seconds(lambda: target.copy_(source))
    return 2 * source.numel() / seconds


def first_call_ms(call: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    started = time.perf_counter()
    call()
    torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - started)


def measure(rows: int, copy: float) -> dict[str, dict[str, float | str]]:
    generator = torch.Generator(device="cuda").manual_seed(rows)
    query = torch.randn(rows, 1, WIDTH, device="cuda", generator=generator).half()
    keys = torch.randn(rows, FRAMES, WIDTH, device="cuda", generator=generator).half()
    values = torch.randn(rows, FRAMES, WIDTH, device="cuda", generator=generator).half()
    reference = cross_attention.sdpa(query.float(), keys.float(), values.float(), HEADS)
    key_scales, value_scales = cross_attention.head_scales(keys, HEADS), cross_attention.head_scales(values, HEADS)
    keys8 = cross_attention.quantize(keys, key_scales, HEADS)
    values8 = cross_attention.quantize(values, value_scales, HEADS)

    def forced(backend: SDPBackend) -> Callable[[], Tensor]:
        def call() -> Tensor:
            with sdpa_kernel([backend]):
                return cross_attention.sdpa(query, keys, values, HEADS)

        return call

    kernels: dict[str, tuple[Callable[[], Tensor], int]] = {
        "sdpa (torch's own pick, cuDNN allowed)": (
            lambda: cross_attention.sdpa(query, keys, values, HEADS), 2),
        "flash (sdpa forced)": (forced(SDPBackend.FLASH_ATTENTION), 2),
        "efficient (sdpa forced)": (forced(SDPBackend.EFFICIENT_ATTENTION), 2),
        "cudnn (cross_attention.cudnn)": (lambda: cross_attention.cudnn(query, keys, values, HEADS), 2),
        "triton split-KV, float16": (lambda: cross_attention.triton(query, keys, values, HEADS), 2),
        "triton split-KV, float8 e4m3": (
            lambda: cross_attention.triton(query, keys8, values8, HEADS, key_scales, value_scales), 1),
    }  # fmt: skip
    results: dict[str, dict[str, float | str]] = {}
    kv_elements = 2 * rows * FRAMES * WIDTH
    for name, (call, element_bytes) in kernels.items():
        try:
            first = first_call_ms(call)
            error = (call().float() - reference).abs().max().item()
            seconds = graph_seconds(call)
        except Exception as exc:  # a backend this torch or GPU lacks: reported, not fatal
            results[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            continue
        bandwidth = kv_elements * element_bytes / seconds
        results[name] = {
            "ms": round(1000 * seconds, 4),
            "bytes_read_tb_per_s": round(bandwidth / 1e12, 3),
            "share_of_copy_bandwidth": round(bandwidth / copy, 3),
            "max_abs_error_vs_float32": float(f"{error:.3g}"),
            "first_call_ms": round(first, 1),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1,16,64,256", help="windows (slots) per call")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    copy = copy_bandwidth()
    report: dict[str, object] = {
        "command": "python -m scripts.bench_attention " + " ".join(sys.argv[1:]),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "shape": {"heads": HEADS, "head_width": HEAD_WIDTH, "frames": FRAMES, "query_rows": 1},
        "copy_tb_per_s": round(copy / 1e12, 3),
    }
    failures = []
    for rows in (int(r) for r in args.rows.split(",")):
        measured = measure(rows, copy)
        report[f"rows_{rows}"] = measured
        print(json.dumps({rows: measured}, indent=1), flush=True)
        for name, figures in measured.items():
            limit = TOLERANCE["float8" if "float8" in name else "float16"]
            error = figures.get("max_abs_error_vs_float32")
            if isinstance(error, float) and not error <= limit:
                failures.append(f"{name} at {rows} rows: max error {error} > {limit}")
        torch.cuda.empty_cache()
    report["failures"] = failures
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    if failures:
        sys.exit("outside tolerance: " + "; ".join(failures))


if __name__ == "__main__":
    main()
