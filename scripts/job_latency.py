"""Latency of short synchronous requests alone and beside a long job, through the real server (CPU, tiny.en).

    python -m scripts.job_latency --output benchmarks/results/cpu-tiny.en-job-latency.json

Starts the service with its defaults (or --env settings), times --requests sequential /transcribe
calls of a five-second clip alone, then times the same calls while eleven-minute jobs run back to back
(a new one submitted as each ends): a call counts only if its job was running both before it began and
after it ended. Writes p50/p95 of each, the jobs' own timings, and the machine's load average sampled
through the run (other work on the machine moves these figures, so they go in the output with them).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from harness.jobs_client import job, jobs_env, submitted, wait_until_over, wait_until_windows_done
from harness.service import ServiceProcess
from harness.speech import SENTENCES, long_speech, looped, speak

# one waits for the model to load, and for an eleven-minute job on a busy 2-core machine
STARTUP_SECONDS = 600.0
JOB_SECONDS = 1800.0
# how often the load average is sampled
LOAD_SAMPLE_SECONDS = 5.0


class LoadSampler:
    """The 1-minute load average every few seconds, on a thread of its own, until stopped."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while True:
            self.samples.append((round(time.monotonic() - self._started, 1), os.getloadavg()[0]))
            if self._stop.wait(LOAD_SAMPLE_SECONDS):
                return

    def between(self, start: float, end: float) -> dict:
        values = [load for at, load in self.samples if start <= at <= end] or [os.getloadavg()[0]]
        return {"min": min(values), "mean": round(float(np.mean(values)), 2), "max": max(values)}

    def now(self) -> float:
        return time.monotonic() - self._started


def timed(service: ServiceProcess, clip: Path) -> float:
    began = time.monotonic()
    response = service.transcribe(clip, response_format="text")
    seconds = time.monotonic() - began
    assert response.status_code == 200, response.text
    return seconds


def summary(seconds: list[float]) -> dict:
    return {
        "requests": len(seconds),
        "p50_s": round(float(np.percentile(seconds, 50)), 3),
        "p95_s": round(float(np.percentile(seconds, 95)), 3),
        "seconds": [round(s, 3) for s in seconds],
    }


def beside_jobs(service: ServiceProcess, clip: Path, long: Path, wanted: int) -> tuple[list[float], int, list[dict]]:
    """Calls timed while a long job runs, jobs submitted back to back so that one always does.

    A call counts only if the same job was running before it began and after it ended; also returned: how
    many did not count, and each job's final state.
    """
    seconds: list[float] = []
    dropped = 0
    jobs: list[dict] = []
    job_id = ""

    def running() -> bool:
        return bool(job(service, job_id).json()["status"] == "running")

    while len(seconds) < wanted:
        if not job_id or not running():
            if job_id:
                jobs.append(wait_until_over(service, job_id, JOB_SECONDS))
            job_id = submitted(service, long, response_format="text")
            # the first window decides the job's language; from the second on it runs at full pace
            wait_until_windows_done(service, job_id, 1)
        took = timed(service, clip)
        if running():
            seconds.append(took)
        else:
            dropped += 1
    jobs.append(wait_until_over(service, job_id, JOB_SECONDS))
    return seconds, dropped, jobs


def measure(args: argparse.Namespace, workdir: Path) -> dict:
    audio = workdir / "audio"
    audio.mkdir()
    clip = speak(SENTENCES[1], audio / "clip.wav")
    long = looped(long_speech(audio / "minute.wav", minimum_seconds=65), 10, audio / "ten-minutes.ogg")
    env = jobs_env(workdir / "jobs.db", workdir / "job-uploads", **dict(pair.split("=", 1) for pair in args.env))
    with LoadSampler() as load, ServiceProcess(workdir / "service", args.cache, STARTUP_SECONDS, **env) as service:
        for _ in range(args.warmup):
            timed(service, clip)
        began = load.now()
        alone = [timed(service, clip) for _ in range(args.requests)]
        alone_ended = load.now()

        beside_began = load.now()
        beside, dropped, jobs = beside_jobs(service, clip, long, args.requests)
        beside_ended = load.now()
    assert all(body["status"] == "done" for body in jobs), jobs
    return {
        "command": "python -m scripts.job_latency " + shlex.join(sys.argv[1:]),
        "model": "tiny.en",
        "device": "cpu",
        "cores": os.cpu_count(),
        "settings": {"the service's defaults, but": args.env},
        "clip_seconds": 5,
        "alone": {**summary(alone), "load_average_1m": load.between(began, alone_ended)},
        "beside_jobs": {
            **summary(beside),
            "dropped_as_their_job_ended_during_them": dropped,
            "load_average_1m": load.between(beside_began, beside_ended),
        },
        "jobs": [
            {
                "audio_seconds": body["progress"]["audio_seconds"],
                "windows": body["progress"]["windows_total"],
                "timings": body["timings"],
            }
            for body in jobs
        ],
        "load_average_1m_samples": load.samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=30, help="short calls timed alone, and beside jobs")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "whisper-model-cache")
    parser.add_argument("--output", type=Path, help="write the results here as JSON")
    parser.add_argument("--env", action="append", default=[], help="a setting for the service: NAME=VALUE")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        report = measure(args, Path(workdir))
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
