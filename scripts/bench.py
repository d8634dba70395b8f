"""Service throughput over HTTP from many concurrent clients, against the one-at-a-time service.

Usage: python -m scripts.bench [--model synthetic:medium] [--clients 64] [--gpus 1,2] [--clips DIR]
In one run: the service on 1 GPU under load (aggregate realtime factor, latency percentiles, batch
sizes, GPU memory), the lone 10-second clip on that idle service, the same service with max batch
size 1, the service on every GPU count of --gpus, and the engine alone (scripts/bench_engine.py).
Writes benchmarks/results/<gpu>-<shape>.json. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import random
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests

from app.config import load_settings
from harness.service import ServiceProcess, sample_labels, sample_name
from scripts.bench_clips import Clip, load_clips, make_clips, tokens_per_second

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
STARTUP_SECONDS = 600.0
LONE_REPEATS = 20
LONE_WARMUP = 3
REQUEST_TIMEOUT = 600.0
# the latency target is for clips up to this long
SHORT_CLIP_SECONDS = 30.0


@dataclass
class Load:
    """What the clients saw in one measured run."""

    wall_seconds: float = 0.0
    audio_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    # (latency, clip seconds) of each answered request
    timed: list[tuple[float, float]] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)


# the clips are English; naming the language spares random weights from "detecting" a different one
# per window, which would split each batch into one decode per language (a real model hears English)
LANGUAGE = "en"


def transcribe(session: requests.Session, url: str, name: str, audio: bytes) -> requests.Response:
    return session.post(
        f"{url}/transcribe", files={"file": (name, audio)}, data={"language": LANGUAGE}, timeout=REQUEST_TIMEOUT
    )


def closed_loop(url: str, clips: list[Clip], payloads: dict[str, bytes], clients: int, seconds: float) -> Load:
    """`clients` senders, each sending a random clip as soon as its previous answer came back."""
    load = Load()
    lock = threading.Lock()
    started = time.perf_counter()
    deadline = started + seconds

    def client(index: int) -> None:
        rng = random.Random(index)
        with requests.Session() as session:
            while time.perf_counter() < deadline:
                clip = rng.choice(clips)
                sent = time.perf_counter()
                try:
                    response = transcribe(session, url, clip.file, payloads[clip.file])
                    outcome = "ok" if response.status_code == 200 else str(response.status_code)
                except requests.RequestException as error:
                    outcome = type(error).__name__
                with lock:
                    if outcome == "ok":
                        load.latencies.append(time.perf_counter() - sent)
                        load.timed.append((load.latencies[-1], clip.seconds))
                        load.audio_seconds += clip.seconds
                    else:
                        load.errors[outcome] = load.errors.get(outcome, 0) + 1

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    # requests still in flight at the deadline finish and count: the wall clock waits for them
    load.wall_seconds = time.perf_counter() - started
    return load


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


class GpuMemory:
    """Polls nvidia-smi once a second: the most memory each GPU held and its mean utilisation."""

    def __init__(self) -> None:
        self.peak_mib: dict[str, int] = {}
        self.utilisation: dict[str, list[int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        query = ["nvidia-smi", "--query-gpu=index,memory.used,utilization.gpu", "--format=csv,noheader,nounits"]
        while not self._stop.wait(1.0):
            try:
                lines = subprocess.run(query, check=True, capture_output=True, text=True).stdout.splitlines()
            except (OSError, subprocess.CalledProcessError):
                return
            for line in lines:
                index, used, busy = (part.strip() for part in line.split(","))
                self.peak_mib[index] = max(self.peak_mib.get(index, 0), int(used))
                self.utilisation.setdefault(index, []).append(int(busy))

    def __enter__(self) -> GpuMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        return {
            "peak_memory_used_mib": self.peak_mib,
            "mean_utilisation_percent": {i: round(statistics.mean(v), 1) for i, v in self.utilisation.items() if v},
        }


def histogram_delta(before: dict[str, float], after: dict[str, float], name: str) -> dict:
    """Count, mean and per-bucket counts of histogram `name` over a run, summed across workers."""

    def total(samples: dict[str, float], suffix: str, le: str | None = None) -> float:
        return sum(
            value for key, value in samples.items()
            if sample_name(key) == f"{name}{suffix}" and (le is None or sample_labels(key).get("le") == le)
        )  # fmt: skip

    count = total(after, "_count") - total(before, "_count")
    summed = total(after, "_sum") - total(before, "_sum")
    edges = sorted({sample_labels(key)["le"] for key in after if sample_name(key) == f"{name}_bucket"}, key=float)
    cumulative = {edge: total(after, "_bucket", edge) - total(before, "_bucket", edge) for edge in edges}
    buckets, previous = {}, 0.0
    for edge in edges:
        if cumulative[edge] - previous:
            buckets[f"<={edge}"] = int(cumulative[edge] - previous)
        previous = cumulative[edge]
    return {"count": int(count), "mean": round(summed / count, 2) if count else None, "buckets": buckets}


def busy_share(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, float]:
    """Share of the wall time each model worker spent inside predict (its inference_seconds)."""
    return {
        f"worker={sample_labels(key)['worker']}": round((value - before.get(key, 0.0)) / wall, 3)
        for key, value in after.items()
        if sample_name(key) == "whisper_inference_seconds_sum"
    }


def run_service(
    args: argparse.Namespace, workdir: Path, clips: list[Clip], payloads: dict[str, bytes], lone: Clip | None,
    gpus: int, clients: int, max_batch_size: int, seconds: float, profile_output: Path | None = None,
    continuous: str = "off", sweep: list[int] | None = None,
) -> dict:  # fmt: skip
    """Start the service, warm it up, measure it under load (and a lone clip when asked), stop it.

    `sweep`: client counts measured one after another on the same service (each after its own
    warm-up), the throughput/latency curve; the first also gives the run's main figures."""
    env = {
        "WHISPER_MODEL": args.model,
        "WHISPER_SYNTHETIC_TOKENS": str(args.tokens),
        "WHISPER_SYNTHETIC_TOKENS_PER_SECOND": str(args.tokens_per_second),
        "WHISPER_CONTINUOUS_BATCHING": continuous.partition("+")[0],
        "WHISPER_DEVICE": args.device,
        "WHISPER_DEVICES": str(gpus),
        "WHISPER_MAX_BATCH_SIZE": str(max_batch_size),
        "WHISPER_BATCH_TIMEOUT": str(args.batch_timeout),
        "WHISPER_MAX_WINDOWS_PER_PASS": str(args.windows_per_pass),
        # admission control must not turn the benchmark's own clients away
        "WHISPER_MAX_QUEUE": str(2 * clients),
    }
    # a mode such as "on+http4" also sets the number of HTTP processes
    if "+http" in continuous:
        env["WHISPER_HTTP_PROCESSES"] = continuous.partition("+http")[2]
    sweep = sweep or [clients]
    clients = max(sweep)
    env["WHISPER_MAX_QUEUE"] = str(2 * clients)
    print(
        f"service: {gpus} GPU(s), {sweep} clients, max batch size {max_batch_size}, continuous {continuous}", flush=True
    )
    service = ServiceProcess(
        Path(tempfile.mkdtemp(prefix="service-", dir=workdir)), load_settings().model_cache_dir, STARTUP_SECONDS,
        WHISPER_LOG_LEVEL="warning", **env,
    )  # fmt: skip
    with service, GpuMemory() as memory:
        curve = []
        for index, count in enumerate(sweep):
            # graphs are captured at start-up; the warm-up lets allocators, caches and the clients settle
            closed_loop(service.url, clips, payloads, count, args.warmup)
            curve.append(
                measure_load(args, service, clips, payloads, gpus, count, max_batch_size, seconds,
                             profile_output if index == len(sweep) - 1 else None)
            )  # fmt: skip
            print(json.dumps(curve[-1]), flush=True)
        result = dict(curve[0])
        result["continuous_batching"] = continuous
        if len(curve) > 1:
            result["sweep"] = curve
        if lone is not None:
            result["lone_10s"] = lone_latency(service.url, lone, payloads[lone.file])
        result["gpu"] = memory.summary()
    print(json.dumps({k: v for k, v in result.items() if k != "sweep"}), flush=True)
    return result


def measure_load(
    args: argparse.Namespace, service: ServiceProcess, clips: list[Clip], payloads: dict[str, bytes], gpus: int,
    clients: int, max_batch_size: int, seconds: float, profile_output: Path | None,
) -> dict:  # fmt: skip
    """One measured closed-loop run of `clients` on a warmed-up service."""
    before = service.metric_samples()
    with sampled_stacks(service, args.profile_worker, profile_output):
        load = closed_loop(service.url, clips, payloads, clients, seconds)
    after = service.metric_samples()
    short = [latency for latency, clip_seconds in load.timed if clip_seconds <= SHORT_CLIP_SECONDS]
    result = {
        "gpus": gpus,
        "clients": clients,
        "max_batch_size": max_batch_size,
        "requests": len(load.latencies),
        "errors": load.errors,
        "audio_seconds": round(load.audio_seconds, 1),
        "wall_seconds": round(load.wall_seconds, 2),
        "rtf": round(load.audio_seconds / load.wall_seconds, 1),
        "p50_ms": round(1000 * percentile(load.latencies, 0.50)) if load.latencies else None,
        "p95_ms": round(1000 * percentile(load.latencies, 0.95)) if load.latencies else None,
        "p99_ms": round(1000 * percentile(load.latencies, 0.99)) if load.latencies else None,
        "clips_up_to_30s_p50_ms": round(1000 * percentile(short, 0.50)) if short else None,
        "clips_up_to_30s_p95_ms": round(1000 * percentile(short, 0.95)) if short else None,
        "batch_size": histogram_delta(before, after, "whisper_batch_size"),
        "windows_per_pass": histogram_delta(before, after, "whisper_batch_windows"),
        "worker_busy_share": busy_share(before, after, load.wall_seconds),
        # where a request's time went, server side: arrival to answer, ffmpeg, queued until its
        # pass began, one pass; the rest of arrival-to-answer is the HTTP process's own
        "mean_seconds": {
            part: histogram_delta(before, after, name)["mean"]
            for part, name in (
                ("request", "whisper_request_duration_seconds"),
                ("decode", "whisper_audio_decode_seconds"),
                ("queue_wait", "whisper_queue_wait_seconds"),
                ("pass", "whisper_inference_seconds"),
            )
        },
    }
    if load.errors:
        print(f"errors {load.errors}; the service's log ends:\n{service.logs()}", flush=True)
    return result


@contextlib.contextmanager
def sampled_stacks(service: ServiceProcess, seconds: float, output: Path | None) -> Iterator[None]:
    """py-spy over the service's processes for the first `seconds` of the block: where CPU time goes.

    Writes, per process, the functions most often on the stack (inclusive share of samples). Any
    failure (py-spy missing, ptrace refused) is reported in the file, never fatal to the benchmark.
    """
    if not seconds or output is None:
        yield
        return
    raw = output.with_suffix(".raw")
    command = ["py-spy", "record", "--pid", str(service.process.pid), "--subprocesses", "--nonblocking",
               "--rate", "50", "--duration", str(int(seconds)), "--format", "raw", "--output", str(raw)]  # fmt: skip
    try:
        spy = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as error:
        output.write_text(f"py-spy did not start: {error}\n")
        yield
        return
    try:
        yield
    finally:
        log = spy.communicate()[0].decode(errors="replace")
        output.write_text(summarise_stacks(raw) if raw.exists() else f"py-spy wrote nothing:\n{log}")
        raw.unlink(missing_ok=True)


PROCESS_FRAME = re.compile(r'process (\d+):"([^"]*)";?')


def summarise_stacks(raw: Path, top: int = 60) -> str:
    """Per process: samples, and the `top` functions by share of samples with them on the stack."""
    per_process: dict[str, dict[str, int]] = {}
    innermost: dict[str, dict[str, int]] = {}
    totals: dict[str, int] = {}
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        # py-spy opens a stack with 'process PID:"command line"' for each process on the way down
        # (a spawned worker's command line holds ';' itself); the innermost one ran the frames
        processes = PROCESS_FRAME.findall(stack)
        frames = [frame for frame in PROCESS_FRAME.sub("", stack).split(";") if frame]
        if not count.isdigit() or not processes or not frames:
            continue
        process = f"process {processes[-1][0]}: {processes[-1][1][:70]}"
        totals[process] = totals.get(process, 0) + int(count)
        functions = per_process.setdefault(process, {})
        # a function counts once per sample however deep it recurses; line numbers are dropped
        for name in {frame.rsplit(":", 1)[0] for frame in frames}:
            functions[name] = functions.get(name, 0) + int(count)
        # the line running when sampled: inside a C call (a kernel launch, a wait) it is the caller's
        lines = innermost.setdefault(process, {})
        lines[frames[-1]] = lines.get(frames[-1], 0) + int(count)
    report = []
    for process, samples in sorted(totals.items(), key=lambda item: -item[1]):
        report.append(f"{process}: {samples} samples")
        ranked = sorted(per_process[process].items(), key=lambda item: -item[1])[:top]
        report.extend(f"  {100 * n / samples:5.1f}%  {name}" for name, n in ranked)
        report.append("  where the samples landed (innermost Python line):")
        ranked = sorted(innermost[process].items(), key=lambda item: -item[1])[:15]
        report.extend(f"  {100 * n / samples:5.1f}%  {line}" for line, n in ranked)
    return "\n".join(report) + "\n"


def lone_latency(url: str, lone: Clip, audio: bytes) -> dict:
    """Latency of one 10-second clip at a time on the otherwise idle service."""
    time.sleep(1.0)
    latencies = []
    with requests.Session() as session:
        for attempt in range(LONE_WARMUP + LONE_REPEATS):
            sent = time.perf_counter()
            transcribe(session, url, lone.file, audio).raise_for_status()
            if attempt >= LONE_WARMUP:
                latencies.append(time.perf_counter() - sent)
    return {
        "repeats": LONE_REPEATS,
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "min_ms": round(1000 * min(latencies), 1),
        "max_ms": round(1000 * max(latencies), 1),
    }


def run_engine(args: argparse.Namespace, output: Path, clips_dir: Path) -> dict:
    """scripts/bench_engine.py on one GPU; its JSON and kernel profiles land beside `output`."""
    command = [sys.executable, "-m", "scripts.bench_engine", "--model", args.model, "--clips", str(clips_dir),
               "--batches", args.engine_batches, "--output", str(output)]  # fmt: skip
    env = {**os.environ, "WHISPER_SYNTHETIC_TOKENS": str(args.tokens), "CUDA_VISIBLE_DEVICES": args.engine_gpu}
    print("engine alone:", shlex.join(command), flush=True)
    subprocess.run(command, cwd=REPO, env=env, check=True)
    return json.loads(output.read_text())


def gpu_name() -> str:
    try:
        names = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], check=True, capture_output=True, text=True
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "cpu"
    return f"{names[0]} x{len(names)}"


def default_output(model: str, device: str) -> Path:
    """benchmarks/results/<gpu>-<shape>.json, e.g. h100-medium.json."""
    kind = "cpu"
    if device == "cuda":
        name = gpu_name().lower()
        kind = next((k for k in ("h200", "h100", "a100", "l40s", "l4", "a10") if k in name), name.split()[-2])
    return RESULTS / f"{kind}-{model.removeprefix('synthetic:')}.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="synthetic:medium")
    parser.add_argument("--tokens", type=int, default=100, help="WHISPER_SYNTHETIC_TOKENS")
    parser.add_argument(
        "--tokens-per-second", type=float, default=None,
        help="realistic decode lengths: tokens per second of each window (default: the clips' own rate, "
        "from their text; 0 keeps --tokens per window)",
    )  # fmt: skip
    parser.add_argument(
        "--continuous",
        default="off",
        help="WHISPER_CONTINUOUS_BATCHING values to measure in turn, e.g. off,on,on+http4 (+httpN: N HTTP processes)",
    )
    parser.add_argument("--sweep", default="", help="client counts measured on one service, e.g. 16,64,256")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--gpus", default="1", help="GPU counts to measure, e.g. 1,2; the first is the main run")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients per GPU")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of measured load per run")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds of load before each measured run")
    parser.add_argument(
        "--baseline-duration", type=float, default=30.0, help="seconds of the one-at-a-time run; 0 skips it"
    )
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--batch-timeout", type=float, default=0.05)
    parser.add_argument("--windows-per-pass", type=int, default=256)
    parser.add_argument("--engine-batches", default="1,16,64,128,256", help="windows per pass; empty skips the engine")
    parser.add_argument("--engine-gpu", default="0", help="CUDA_VISIBLE_DEVICES for the engine-alone run")
    parser.add_argument("--clips", type=Path, help="clips made by scripts/bench_clips.py; made here if absent")
    parser.add_argument("--output", type=Path)
    parser.add_argument(
        "--profile-worker", type=float, default=0.0, metavar="SECONDS",
        help="sample the service's stacks with py-spy in each GPU count's measured run; writes <output>.stacks*.txt",
    )  # fmt: skip
    args = parser.parse_args()
    gpu_counts = [int(g) for g in args.gpus.split(",")]
    output = args.output or default_output(args.model, args.device)
    output.parent.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="whisper-bench-") as scratch:
        workdir = Path(scratch)
        clips_dir = args.clips or workdir / "clips"
        clips, lone = load_clips(clips_dir) if args.clips else make_clips(clips_dir, 60, 4, seed=0)
        if args.tokens_per_second is None:
            args.tokens_per_second = tokens_per_second(clips)
        payloads = {c.file: (clips_dir / c.file).read_bytes() for c in [*clips, lone]}
        report: dict = {
            "device": gpu_name() if args.device == "cuda" else "cpu",
            "model_shape": args.model.removeprefix("synthetic:"),
            "tokens_per_window": None if args.tokens_per_second else args.tokens,
            "tokens_per_second": args.tokens_per_second or None,
            "clips": {
                "count": len(clips),
                "seconds": round(sum(c.seconds for c in clips), 1),
                "format": "espeak-ng speech, 16 kHz mono Opus, 5-30 s and 2-5 min",
            },
        }
        sweep = [int(c) for c in args.sweep.split(",") if c]
        modes = args.continuous.split(",")
        if sweep:
            report["command"] = "python -m scripts.bench " + shlex.join(sys.argv[1:])
            report["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            report["modes"] = {}
            for mode in modes:
                report["modes"][mode] = run_service(
                    args, workdir, clips, payloads, lone, gpu_counts[0], args.clients, args.max_batch_size,
                    args.duration, output.with_suffix(f".stacks-{mode.replace('+', '-')}.txt"), continuous=mode,
                    sweep=sweep,
                )  # fmt: skip
                output.write_text(json.dumps(report, indent=1) + "\n")
            print(f"wrote {output}")
            return
        by_gpus = {}
        for gpus in gpu_counts:
            by_gpus[str(gpus)] = run_service(
                args, workdir, clips, payloads, lone if gpus == gpu_counts[0] else None,
                gpus, args.clients * gpus, args.max_batch_size, args.duration,
                output.with_suffix(".stacks.txt" if gpus == gpu_counts[0] else f".stacks-{gpus}gpus.txt"),
            )  # fmt: skip
        baseline = None
        if args.baseline_duration:
            baseline = run_service(
                args, workdir, clips, payloads, None, gpu_counts[0], args.clients * gpu_counts[0], 1,
                args.baseline_duration,
            )  # fmt: skip
        report["command"] = "python -m scripts.bench " + shlex.join(sys.argv[1:])
        report["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        write_report(output, report, by_gpus, baseline, None)
        engine = None
        if args.device == "cuda" and args.engine_batches:
            engine = run_engine(args, output.with_suffix(".engine.json"), clips_dir)
    write_report(output, report, by_gpus, baseline, engine)


def write_report(
    output: Path, report: dict, by_gpus: dict[str, dict], baseline: dict | None, engine: dict | None
) -> None:
    """The results JSON; written once the services are measured, and again with the engine's figures."""
    main_run = next(iter(by_gpus.values()))
    best = max(engine["optimised"], key=lambda row: row["rtf"]) if engine else None
    report.update(
        {
            "service_rtf": main_run["rtf"],
            "baseline_rtf": baseline["rtf"] if baseline else None,
            "ratio_vs_one_at_a_time": round(main_run["rtf"] / baseline["rtf"], 2) if baseline else None,
            "engine_rtf": best["rtf"] if best else None,
            "engine_best_windows_per_pass": best["windows"] if best else None,
            "lone_10s_p50_ms": main_run["lone_10s"]["p50_ms"],
            "p50_ms": main_run["p50_ms"],
            "p95_ms": main_run["p95_ms"],
            "p99_ms": main_run["p99_ms"],
            "service": main_run,
            "baseline": baseline,
            "engine": engine,
        }
    )
    if len(by_gpus) > 1:
        report["gpus"] = by_gpus
        report["scaling"] = {g: round(r["rtf"] / main_run["rtf"], 2) for g, r in by_gpus.items()}
    output.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {output}")
    print(json.dumps({k: v for k, v in report.items() if not isinstance(v, dict)}, indent=1))


if __name__ == "__main__":
    main()
