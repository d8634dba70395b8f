"""Diarization error rate and speed on conversations of real voices (scripts/conversations.py).

    python -m scripts.bench_diarization --output benchmarks/results/cpu-diarization.json
    python -m scripts.bench_diarization --clips DIR --output gpu.json   # speed alone, over DIR's audio files

DER is pyannote.metrics' (install it with `pip install pyannote.metrics`; it has no weights), scored with no
collar and with the customary 0.25 s collar, overlap counted. Speed is the time the diarizer takes per minute
of audio, over all conversations in one batched pass and each alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import whisper
from whisper.audio import SAMPLE_RATE

from app.contract import DiarizationOptions
from app.worker.diarization import Diarizer, SpeakerTurn
from harness.conversations import Conversation, conversations


def annotation(turns: list[tuple[str, float, float]]) -> Any:
    from pyannote.core import Annotation, Segment

    labelled = Annotation()
    for speaker, start, end in turns:
        labelled[Segment(start, end)] = speaker
    return labelled


def score(conversation: Conversation, found: list[SpeakerTurn]) -> dict[str, float | int]:
    """DER with no collar (and its parts, in seconds) and with a 0.25 s collar, overlapped speech counted."""
    # imported here: the speed-only run (--clips) needs no scorer
    from pyannote.metrics.diarization import DiarizationErrorRate

    reference = annotation([(t.speaker, t.start, t.end) for t in conversation.turns])
    hypothesis = annotation([(t.speaker, t.start, t.end) for t in found])
    parts = DiarizationErrorRate(collar=0.0)(reference, hypothesis, detailed=True)
    return {
        "seconds": round(conversation.seconds, 2),
        "speakers": len(conversation.speakers),
        "speakers_found": len({t.speaker for t in found}),
        "der": round(float(parts["diarization error rate"]), 4),
        "der_collar_025": round(float(DiarizationErrorRate(collar=0.25)(reference, hypothesis)), 4),
        "speech_seconds": round(float(parts["total"]), 2),
        "missed_seconds": round(float(parts["missed detection"]), 2),
        "false_alarm_seconds": round(float(parts["false alarm"]), 2),
        "confusion_seconds": round(float(parts["confusion"]), 2),
    }


def weighted(scores: dict[str, dict[str, float | int]], key: str) -> float:
    """A DER over the whole set: each conversation's weighted by its duration."""
    return round(sum(s["seconds"] * s[key] for s in scores.values()) / sum(s["seconds"] for s in scores.values()), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cache", type=Path, help="where the recordings are kept (default: scripts/accuracy.py's)")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes; the fastest is kept")
    parser.add_argument("--clips", type=Path, help="time the diarizer over these audio files instead (no DER)")
    parser.add_argument("--output", type=Path)
    arguments = parser.parse_args()
    diarizer = Diarizer(arguments.device)
    if arguments.clips:
        waveforms = [whisper.load_audio(str(path)) for path in sorted(arguments.clips.glob("*.ogg"))]
        results: dict[str, object] = {"clips": len(waveforms), **timed(diarizer, waveforms, arguments)}
        write(results, arguments)
        return
    # imported here: the accuracy tooling is not on a bare GPU machine, which runs --clips alone
    from scripts.accuracy import DEFAULT_CACHE

    talks = conversations(arguments.cache or DEFAULT_CACHE)
    found, speed = diarize_timed(diarizer, [talk.waveform for talk in talks], arguments)
    scores = {talk.name: score(talk, turns) for talk, turns in zip(talks, found, strict=True)}
    given = diarizer.turns([(talk.waveform, DiarizationOptions(speakers=len(talk.speakers))) for talk in talks])
    for talk, turns in zip(talks, given, strict=True):
        scores[talk.name]["der_speakers_given"] = score(talk, turns)["der"]
    errors = {
        "der_weighted_by_duration": weighted(scores, "der"),
        "der_collar_025_weighted_by_duration": weighted(scores, "der_collar_025"),
        "der_speakers_given_weighted_by_duration": weighted(scores, "der_speakers_given"),
        **{
            f"{part}_seconds_total": round(sum(float(s[f"{part}_seconds"]) for s in scores.values()), 2)
            for part in ("speech", "missed", "false_alarm", "confusion")
        },
    }
    write({**speed, **errors, "conversations": scores}, arguments)


def diarize_timed(
    diarizer: Diarizer, waveforms: list[np.ndarray], arguments: argparse.Namespace
) -> tuple[list[list[SpeakerTurn]], dict[str, object]]:
    """The turns of every waveform (diarized in one batched pass), and the fastest of `--repeat` passes."""
    requests = [(waveform, DiarizationOptions()) for waveform in waveforms]
    diarizer.turns(requests[:1])  # warm-up
    passes = []
    for _ in range(arguments.repeat):
        started = time.perf_counter()
        found = diarizer.turns(requests)
        if arguments.device == "cuda":
            torch.cuda.synchronize()
        passes.append(time.perf_counter() - started)
    minutes = sum(len(w) for w in waveforms) / SAMPLE_RATE / 60
    return found, {
        "command": " ".join([Path(sys.executable).name, "-m", "scripts.bench_diarization", *sys.argv[1:]]),
        "device": torch.cuda.get_device_name() if arguments.device == "cuda" else arguments.device,
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": os.getloadavg()[0],
        "audio_minutes": round(minutes, 3),
        "seconds_per_audio_minute": round(min(passes) / minutes, 4),
    }


def timed(diarizer: Diarizer, waveforms: list[np.ndarray], arguments: argparse.Namespace) -> dict[str, object]:
    return diarize_timed(diarizer, waveforms, arguments)[1]


def write(results: dict[str, object], arguments: argparse.Namespace) -> None:
    print(json.dumps(results, indent=2))
    if arguments.output:
        arguments.output.parent.mkdir(parents=True, exist_ok=True)
        arguments.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
