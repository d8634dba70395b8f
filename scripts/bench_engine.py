"""The engine alone (no HTTP): throughput by batch size, with and without the GPU optimisations.

Usage: python -m scripts.bench_engine --clips DIR --output engine.json [--model synthetic:medium]
Drives `Transcriber.transcribe_batch` on full 30-second windows cut from the benchmark clips, so the
figures are the ceiling the service's batches can reach. Run by scripts/bench.py on one GPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity
from whisper.audio import CHUNK_LENGTH, N_SAMPLES, SAMPLE_RATE
from whisper.decoding import DecodingOptions, DecodingResult

from app.config import load_settings
from app.worker import precision, synthetic
from app.worker.decoding import static
from app.worker.engine import AudioItem, Transcriber, log_mel_batch
from app.worker.loading import load_model
from scripts.bench_clips import load_clips

LONE_SECONDS = 10.0
# whisper.decode pays ~20 ms a token step at any batch size: few runs are enough to see it
REFERENCE_BATCHES = (1, 64)


def clip_audio(directory: Path) -> np.ndarray:
    """All benchmark clips decoded by ffmpeg and joined: the speech the windows are cut from."""
    clips, _ = load_clips(directory)
    pieces = []
    for clip in clips:
        decoded = subprocess.run(
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(directory / clip.file),
             "-f", "f32le", "-ac", "1", "-ar", str(SAMPLE_RATE), "-"],
            check=True, capture_output=True,
        ).stdout  # fmt: skip
        pieces.append(np.frombuffer(decoded, dtype=np.float32))
    return np.concatenate(pieces)


def windows(audio: np.ndarray, count: int) -> list[AudioItem]:
    """`count` jobs of exactly one full window each, taken round the joined audio."""
    starts = [(i * N_SAMPLES) % (len(audio) - N_SAMPLES) for i in range(count)]
    return [AudioItem(audio[s : s + N_SAMPLES].copy()) for s in starts]


def timed(run: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    started = time.perf_counter()
    run()
    torch.cuda.synchronize()
    return time.perf_counter() - started


def measure(engine: Transcriber, jobs: list[AudioItem], repeats: int) -> dict:
    """Median wall time of transcribe_batch over `repeats` runs after one warm-up, split by stage."""
    engine.transcribe_batch(jobs)  # warm-up: graph capture and allocator growth stay out of the figures
    totals = [timed(lambda: engine.transcribe_batch(jobs)) for _ in range(repeats)]
    waveforms = [job.waveform for job in jobs]
    encode = statistics.median(timed(lambda: engine.encode(waveforms)) for _ in range(repeats))
    total = statistics.median(totals)
    seconds = len(jobs) * CHUNK_LENGTH
    print(f"{len(jobs)} windows: {seconds / total:.1f}x realtime", flush=True)
    return {
        "windows": len(jobs),
        "seconds": round(total, 4),
        "rtf": round(seconds / total, 1),
        "encoder_ms_per_window": round(1000 * encode / len(jobs), 3),
        "rest_ms_per_window": round(1000 * (total - encode) / len(jobs), 3),
    }


def greedy_options(model: torch.nn.Module) -> DecodingOptions:
    return DecodingOptions(language="en", fp16=True, **synthetic.decoding_overrides(model))


@torch.inference_mode()
def reference_decode(model: torch.nn.Module, jobs: list[AudioItem]) -> tuple[torch.Tensor, list[DecodingResult]]:
    """Encoder features of `jobs` and whisper.decode's results on them.

    Run before the engine is built: its decoder then takes most of the GPU's free memory, and
    whisper.decode's growing caches for 64 windows would no longer fit beside it on an 80 GB GPU.
    """
    mel = log_mel_batch([job.waveform for job in jobs], model.dims.n_mels, model.device).half()
    features = model.encoder(mel)
    return features, static.WhisperDecoder(model, len(jobs))(features, greedy_options(model))


def identical_tokens(engine: Transcriber, features: torch.Tensor, reference: list[DecodingResult]) -> dict:
    """Token-for-token agreement of the graphed decoder with whisper.decode on the same features."""
    with torch.inference_mode():
        graphed = engine.decode(features, greedy_options(engine.model))
    same = sum(r.tokens == g.tokens for r, g in zip(reference, graphed, strict=True))
    drift = max(abs(r.avg_logprob - g.avg_logprob) for r, g in zip(reference, graphed, strict=True))
    return {"windows": len(features), "identical": same, "max_avg_logprob_difference": drift}


def optimised(model_spec: str, audio: np.ndarray, batches: list[int], repeats: int, profile_stem: Path) -> dict:
    """The engine as the service runs it: throughput by batch size, token identity, a lone clip."""
    settings = load_settings()
    model = load_model(model_spec, "cuda", settings.model_cache_dir, settings.synthetic_tokens)
    precision.cast_to_fp16(model)  # as the engine will; bit-identical to whisper's casts per call
    # 64 windows fill a graph's batch exactly; 50 run in it with 14 padding rows
    references = [reference_decode(model, windows(audio, n)) for n in (64, 50)]
    torch.cuda.empty_cache()
    engine = Transcriber(model, max(batches), budget=synthetic.token_budget(model))
    lone = [AudioItem(audio[: int(LONE_SECONDS * SAMPLE_RATE)].copy())]
    engine.transcribe_batch(lone)
    lone_seconds = statistics.median(timed(lambda: engine.transcribe_batch(lone)) for _ in range(5))
    return {
        "capacity": engine.max_windows_per_pass,
        "identity": [identical_tokens(engine, features, reference) for features, reference in references],
        "optimised": [measure(engine, windows(audio, b), repeats) for b in batches if b <= engine.max_windows_per_pass],
        "lone_10s_engine_ms": round(1000 * lone_seconds, 1),
        "profile": [
            profile(engine, jobs, profile_stem.with_suffix(f".profile-{len(jobs)}.txt"))
            for jobs in (lone, windows(audio, 128))
        ],
        "max_memory_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }


def reference(model_spec: str, audio: np.ndarray, cast_once: bool) -> list[dict]:
    """The engine before these optimisations, at the batch sizes of REFERENCE_BATCHES."""
    settings = load_settings()
    model = load_model(model_spec, "cuda", settings.model_cache_dir, settings.synthetic_tokens)
    # the engine as it was: whisper.decode at any size, and fp32 weights unless cast once
    capacity = max(REFERENCE_BATCHES)
    decoder = static.WhisperDecoder(model, capacity)
    engine = Transcriber(model, capacity, decoder=decoder, budget=synthetic.token_budget(model), cast_weights=cast_once)
    return [measure(engine, windows(audio, b), 1) for b in REFERENCE_BATCHES]


def profile(engine: Transcriber, jobs: list[AudioItem], table: Path) -> dict:
    """Kernel time of one transcribe_batch by operator: what bounds a pass of this size."""
    engine.transcribe_batch(jobs)
    with torch.profiler.profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        seconds = timed(lambda: engine.transcribe_batch(jobs))
    events = profiler.key_averages()
    table.write_text(events.table(sort_by="device_time_total", row_limit=25))
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    top = sorted(kernels, key=lambda e: e.device_time_total, reverse=True)[:6]
    return {
        "windows": len(jobs),
        "wall_ms": round(1000 * seconds, 1),
        "gpu_kernel_ms": round(sum(e.device_time_total for e in kernels) / 1000, 1),
        "kernel_launches": sum(e.count for e in kernels),
        "top_kernels": [
            {"name": e.key[:80], "count": e.count, "ms": round(e.device_time_total / 1000, 1)} for e in top
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="synthetic:medium")
    parser.add_argument("--clips", type=Path, required=True)
    parser.add_argument("--batches", default="1,16,64,128,256", help="windows per pass to measure")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    audio = clip_audio(args.clips)
    report: dict = {"device": torch.cuda.get_device_name(), "model": args.model}
    # the small unoptimised engines first: the optimised one sizes itself to the GPU's free memory
    for cast_once, label in ((True, "whisper_decode_fp16_once"), (False, "whisper_decode_fp32_weights")):
        report[label] = reference(args.model, audio, cast_once)
        gc.collect()  # this engine's model and caches go before the next one loads
        torch.cuda.empty_cache()
        args.output.write_text(json.dumps(report, indent=1))
    batches = [int(b) for b in args.batches.split(",")]
    report.update(optimised(args.model, audio, batches, args.repeats, args.output.with_suffix("")))
    args.output.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
