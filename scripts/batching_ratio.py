"""Throughput of N clips sent together (batched by the service) vs the same clips one after another.

Usage: python scripts/batching_ratio.py --url http://127.0.0.1:8000 CLIP [CLIP ...]
Both passes hit the same running service, so the ratio is what batching buys on this machine.
"""

from __future__ import annotations

import argparse
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests


def post(url: str, clip: Path) -> float:
    """Transcribe one clip; return its audio duration as the service measured it."""
    with clip.open("rb") as audio:
        response = requests.post(f"{url}/transcribe", files={"file": (clip.name, audio)}, timeout=600)
    response.raise_for_status()
    return response.json()["duration"]


def one_after_another(url: str, clips: list[Path]) -> tuple[float, float]:
    started = time.perf_counter()
    audio = sum(post(url, clip) for clip in clips)
    return audio, time.perf_counter() - started


def all_together(url: str, clips: list[Path]) -> tuple[float, float]:
    barrier = threading.Barrier(len(clips))

    def send(clip: Path) -> float:
        barrier.wait()
        return post(url, clip)

    started = time.perf_counter()
    with ThreadPoolExecutor(len(clips)) as pool:
        audio = sum(pool.map(send, clips))
    return audio, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("clips", nargs="+", type=Path)
    args = parser.parse_args()
    post(args.url, args.clips[0])  # warm-up: first-call allocations are not part of either figure
    audio, sequential = one_after_another(args.url, args.clips)
    _, together = all_together(args.url, args.clips)
    print(f"{len(args.clips)} clips, {audio:.1f} s of audio")
    print(f"one after another: {sequential:.2f} s wall, {audio / sequential:.2f}x realtime")
    print(f"sent together:     {together:.2f} s wall, {audio / together:.2f}x realtime")
    print(f"batched / one-at-a-time throughput: {sequential / together:.2f}x")


if __name__ == "__main__":
    main()
