"""Continuous batching's engine on a GPU: tokens against whisper.decode, throughput against static passes.

Usage: python -m scripts.bench_continuous --clips DIR --output out.json [--model synthetic:medium]
No HTTP: the benchmark clips (realistic decode lengths from their text, see scripts/bench_clips.py) go
through `Transcriber.run_batch` in passes of --requests-per-pass requests (static batching, as the
service did), then through `ContinuousScheduler` all at once; the slot decoder's tokens are compared
with whisper.decode's on windows of different lengths that join the decode at different steps.
"""

from __future__ import annotations

import argparse
import gc
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity
from whisper.audio import SAMPLE_RATE
from whisper.decoding import DecodingOptions

from app.config import load_settings
from app.worker import precision, synthetic
from app.worker.decoding.cross_attention import CrossAttentionOptions
from app.worker.decoding.memory import slots_that_fit
from app.worker.decoding.plan import greedy_plan
from app.worker.decoding.slots import SlotDecoder
from app.worker.decoding.static import SlotPass
from app.worker.engine import AudioItem, Transcriber, TranscriptionOptions
from app.worker.loading import load_model
from app.worker.scheduler import ContinuousScheduler
from app.worker.vad import VadSplitter
from scripts.bench_clips import load_clips, tokens_per_second

STATIC_WINDOWS = 16


def decode_clip(path: Path) -> np.ndarray:
    raw = subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(path), "-f", "f32le", "-ac", "1", "-ar", "16000", "-"],
        check=True,
        capture_output=True,
    ).stdout
    return np.frombuffer(raw, dtype=np.float32).copy()


def identity(model: torch.nn.Module, waveforms: list[np.ndarray], capacity: int) -> dict:
    """Slot decoder vs whisper.decode on windows of different lengths admitted at different steps.

    The synthetic model never ends a window by itself (end-of-text suppressed): each row stops at
    its realistic limit, so its tokens must be whisper.decode's first tokens for that window.
    """
    from app.worker.engine import log_mel_batch

    options = DecodingOptions(language="en", fp16=True, **synthetic.decoding_overrides(model))
    with torch.inference_mode():
        features = model.encoder(log_mel_batch(waveforms, model.dims.n_mels, model.device).half())
        started = time.perf_counter()
        reference = whisper_decode(model, features, options)
        reference_seconds = time.perf_counter() - started
    plan, initial, _ = greedy_plan(model, options)
    # whisper's own cross-attention call: the faster kernels round differently (scripts/bench_peers.py measures them)
    decoder = SlotDecoder(model, capacity, cross=CrossAttentionOptions("sdpa"))
    decoder.prepare(plan)
    limits = [synthetic.window_tokens(model, len(w)) or plan.max_tokens for w in waveforms]
    waiting = list(range(len(waveforms)))
    slot_window: dict[int, int] = {}
    got: dict[int, list[int]] = {}
    steps = 0
    while waiting or decoder.occupied:
        free = decoder.free_slots()
        if waiting and free and steps % 5 == 0:
            taken, waiting = waiting[: min(8, len(free))], waiting[min(8, len(free)) :]
            slots = free[: len(taken)]
            decoder.admit(slots, features[taken], plan, initial, [limits[i] for i in taken])
            slot_window.update(zip(slots, taken, strict=True))
        if decoder.occupied:
            decoder.step()
        for result in decoder.finished():
            got[slot_window.pop(result.slot)] = result.tokens
        steps += 1
    same = sum(got[i] == reference[i].tokens[: limits[i]] for i in range(len(waveforms)))
    varlen = decoder.varlen
    del decoder
    # the same decoder as a static pass: every window admitted at once
    with torch.inference_mode():
        static = SlotPass(model, len(waveforms))(features, options, limits)
    same_static = sum(static[i].tokens == reference[i].tokens[: limits[i]] for i in range(len(waveforms)))
    return {
        "windows": len(waveforms),
        "identical": same,
        "identical_static_pass": same_static,
        "self_attention": "varlen" if varlen else "grouped",
        "token_counts": sorted(len(t) for t in got.values()),
        "whisper_decode_seconds": round(reference_seconds, 2),
    }


def whisper_decode(model, features, options):
    import whisper

    return whisper.decode(model, features, options)


def static_run(transcriber: Transcriber, jobs: list[AudioItem], per_pass: int) -> tuple[float, list, int]:
    """Seconds for every job in passes of `per_pass`, the outcomes, and the windows decoded (follow-ups too)."""
    torch.cuda.synchronize()
    started = time.perf_counter()
    outcomes = []
    windows = 0
    for first in range(0, len(jobs), per_pass):
        result = transcriber.run_batch(jobs[first : first + per_pass])
        outcomes += result.outcomes
        windows += result.statistics.windows
    torch.cuda.synchronize()
    return time.perf_counter() - started, outcomes, windows


def continuous_run(scheduler: ContinuousScheduler, jobs: list[AudioItem]) -> tuple[float, int, list[float], list, int]:
    """All jobs submitted at once; seconds to the last answer, steps, each job's time to its answer, outcomes,
    and the windows they took (seek-back rounds included)."""
    torch.cuda.synchronize()
    started = time.perf_counter()
    for index, job in enumerate(jobs):
        scheduler.submit(index, job)
    steps = 0
    answered = [0.0] * len(jobs)
    outcomes: list = [None] * len(jobs)
    windows = 0
    while scheduler.busy:
        for finished in scheduler.step():
            answered[finished.key] = time.perf_counter() - started
            outcomes[finished.key] = finished.outcome
            windows += finished.windows
        steps += 1
    torch.cuda.synchronize()
    return time.perf_counter() - started, steps, answered, outcomes, windows


def same_transcripts(static: list, continuous: list) -> dict[str, int]:
    """Requests whose segments agree both ways (tokens, times, text; the per-window log-probabilities move
    in the last digits with the batch a window is computed in), and those that differ: where either
    way sampled a window (transcribe()'s fallback past greedy draws at random), or not."""

    def key(outcome: object) -> object:
        segments = getattr(outcome, "segments", None)
        if segments is None:
            return repr(outcome)
        return [(s.start, s.end, s.text, s.tokens) for s in segments]

    def sampled(outcome: object) -> bool:
        return any(s.temperature > 0 for s in getattr(outcome, "segments", ()))

    counts = {"identical": 0, "differ_where_sampled": 0, "differ_greedy": 0}
    for a, b in zip(static, continuous, strict=True):
        if key(a) == key(b):
            counts["identical"] += 1
        elif sampled(a) or sampled(b):
            counts["differ_where_sampled"] += 1
        else:
            counts["differ_greedy"] += 1
    return counts


def profile_steps(scheduler: ContinuousScheduler, jobs: list[AudioItem], table: Path) -> dict:
    """Kernel time over 30 steps with the slots full: what bounds a step."""
    for index, job in enumerate(jobs):
        scheduler.submit(("profile", index), job)
    for _ in range(20):
        scheduler.step()
    with torch.profiler.profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        torch.cuda.synchronize()
        started = time.perf_counter()
        occupied = scheduler.occupied
        for _ in range(30):
            scheduler.step()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    while scheduler.busy:
        scheduler.step()
    events = profiler.key_averages()
    table.write_text(events.table(sort_by="device_time_total", row_limit=25))
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    return {
        "occupied_slots": occupied,
        "ms_per_step": round(1000 * seconds / 30, 2),
        "gpu_kernel_ms_per_step": round(sum(e.device_time_total for e in kernels) / 1000 / 30, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="synthetic:medium")
    parser.add_argument("--clips", type=Path, required=True)
    parser.add_argument("--tokens-per-second", type=float, default=None)
    parser.add_argument("--slots", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=4, help="times the clip set is sent")
    parser.add_argument("--requests-per-pass", type=int, default=64)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument(
        "--vad", choices=("on", "off"), default="on", help="the engine's window splitter, as WHISPER_VAD in the service"
    )
    args = parser.parse_args()
    clips, lone = load_clips(args.clips)
    rate = tokens_per_second(clips) if args.tokens_per_second is None else args.tokens_per_second
    waveforms = [decode_clip(args.clips / clip.file) for clip in clips]
    rng = np.random.default_rng(0)
    jobs = [
        AudioItem(waveforms[i], TranscriptionOptions(language="en"))
        for i in rng.permutation(len(clips) * args.repeat) % len(clips)
    ]
    audio_seconds = sum(len(job.waveform) for job in jobs) / SAMPLE_RATE
    settings = load_settings()
    model = load_model(args.model, "cuda", settings.model_cache_dir, settings.synthetic_tokens)
    model.tokens_per_second = rate
    precision.cast_to_fp16(model)
    command = "python -m scripts.bench_continuous " + shlex.join(sys.argv[1:])
    report: dict = {"command": command, "device": torch.cuda.get_device_name(), "model": args.model,
                    "tokens_per_second": rate, "requests": len(jobs),
                    "audio_seconds": round(audio_seconds, 1)}  # fmt: skip

    def write() -> None:
        args.output.write_text(json.dumps(report, indent=1) + "\n")

    # windows of 2-30 s of speech: lengths, and so token counts, differ
    cuts = [w[: int(SAMPLE_RATE * s)] for w, s in zip(waveforms * 2, np.linspace(2, 30, 48), strict=False)]
    report["identity"] = identity(model, cuts, capacity=16)
    print(json.dumps(report["identity"]), flush=True)
    write()
    gc.collect()
    torch.cuda.empty_cache()

    splitter = VadSplitter(model.device, enabled=args.vad == "on")
    report["vad"] = args.vad
    static = Transcriber(model, args.slots, splitter=splitter, budget=synthetic.token_budget(model))
    static_run(static, jobs[: args.requests_per_pass], args.requests_per_pass)  # warm-up
    seconds, static_outcomes, windows_decoded = static_run(static, jobs, args.requests_per_pass)
    report["static"] = {
        "seconds": round(seconds, 2),
        "rtf": round(audio_seconds / seconds, 1),
        "requests_per_pass": args.requests_per_pass,
        "capacity": static.max_windows_per_pass,
        "windows_decoded": windows_decoded,
        "windows_per_audio_minute": round(60 * windows_decoded / audio_seconds, 2),
    }
    # the static engine against itself with passes half as large: how much batch composition alone moves
    _, half_pass_outcomes, _ = static_run(static, jobs, args.requests_per_pass // 2)
    report["static"]["same_transcripts_with_half_passes"] = same_transcripts(static_outcomes, half_pass_outcomes)
    lone_job = AudioItem(decode_clip(args.clips / lone.file), TranscriptionOptions(language="en"))
    static.run_batch([lone_job])
    started = time.perf_counter()
    for _ in range(5):
        static.run_batch([lone_job])
    report["static"]["lone_10s_ms"] = round(1000 * (time.perf_counter() - started) / 5, 1)
    print(json.dumps(report["static"]), flush=True)
    write()
    del static
    gc.collect()
    torch.cuda.empty_cache()

    small = Transcriber(model, STATIC_WINDOWS, splitter=splitter, budget=synthetic.token_budget(model))
    slots = slots_that_fit(model, args.slots)
    started = time.perf_counter()
    scheduler = ContinuousScheduler(small, slots)
    report["continuous"] = {"slots": slots, "startup_seconds": round(time.perf_counter() - started, 1)}
    continuous_run(scheduler, jobs[: args.requests_per_pass])  # warm-up
    seconds, steps, answered, outcomes, windows = continuous_run(scheduler, jobs)
    report["continuous"].update({"seconds": round(seconds, 2), "rtf": round(audio_seconds / seconds, 1), "steps": steps,
                                 "ms_per_step": round(1000 * seconds / steps, 2),
                                 "self_attention": "varlen" if scheduler.decoder.varlen else "grouped",
                                 "median_seconds_to_answer": round(float(np.median(answered)), 2),
                                 "same_transcripts_as_static": same_transcripts(static_outcomes, outcomes),
                                 "windows_decoded": windows,
                                 "windows_per_audio_minute": round(60 * windows / audio_seconds, 2)})  # fmt: skip
    continuous_run(scheduler, [lone_job])
    lone_times = [continuous_run(scheduler, [lone_job])[0] for _ in range(5)]
    report["continuous"]["lone_10s_ms"] = round(1000 * float(np.median(lone_times)), 1)
    print(json.dumps(report["continuous"]), flush=True)
    write()
    report["continuous"]["profile"] = profile_steps(scheduler, jobs[:300], args.output.with_suffix(".profile.txt"))
    report["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    write()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
