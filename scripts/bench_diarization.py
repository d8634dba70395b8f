"""Diarization error rate and speed on conversations of real voices (scripts/conversations.py).

    python -m scripts.bench_diarization --output benchmarks/results/cpu-diarization.json

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

import torch
from pyannote.core import Annotation, Segment
from pyannote.metrics.diarization import DiarizationErrorRate

from app.contract import DiarizationOptions
from app.worker.diarization import Diarizer, SpeakerTurn
from scripts.accuracy import DEFAULT_CACHE
from scripts.conversations import Conversation, conversations


def annotation(turns: list[tuple[str, float, float]]) -> Annotation:
    labelled = Annotation()
    for speaker, start, end in turns:
        labelled[Segment(start, end)] = speaker
    return labelled


def score(conversation: Conversation, found: list[SpeakerTurn]) -> dict[str, float | int]:
    reference = annotation([(t.speaker, t.start, t.end) for t in conversation.turns])
    hypothesis = annotation([(t.speaker, t.start, t.end) for t in found])
    return {
        "seconds": round(conversation.seconds, 2),
        "speakers": len(conversation.speakers),
        "speakers_found": len({t.speaker for t in found}),
        "der": round(float(DiarizationErrorRate(collar=0.0)(reference, hypothesis)), 4),
        "der_collar_025": round(float(DiarizationErrorRate(collar=0.25)(reference, hypothesis)), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--repeat", type=int, default=3, help="timed passes; the fastest is kept")
    parser.add_argument("--output", type=Path)
    arguments = parser.parse_args()
    diarizer = Diarizer(arguments.device)
    talks = conversations(arguments.cache)
    options = DiarizationOptions()
    requests = [(talk.waveform, options) for talk in talks]
    diarizer.turns(requests[:1])  # warm-up
    passes = []
    for _ in range(arguments.repeat):
        started = time.perf_counter()
        found = diarizer.turns(requests)
        if arguments.device == "cuda":
            torch.cuda.synchronize()
        passes.append(time.perf_counter() - started)
    minutes = sum(talk.seconds for talk in talks) / 60
    scores = {talk.name: score(talk, turns) for talk, turns in zip(talks, found, strict=True)}
    given = diarizer.turns([(talk.waveform, DiarizationOptions(speakers=len(talk.speakers))) for talk in talks])
    for talk, turns in zip(talks, given, strict=True):
        scores[talk.name]["der_speakers_given"] = score(talk, turns)["der"]
    total = sum(s["seconds"] * s["der"] for s in scores.values()) / sum(s["seconds"] for s in scores.values())
    results = {
        "command": " ".join([Path(sys.executable).name, "-m", "scripts.bench_diarization", *sys.argv[1:]]),
        "device": arguments.device,
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": os.getloadavg()[0],
        "audio_minutes": round(minutes, 3),
        "seconds_per_audio_minute": round(min(passes) / minutes, 3),
        "der_weighted_by_duration": round(total, 4),
        "conversations": scores,
    }
    print(json.dumps(results, indent=2))
    if arguments.output:
        arguments.output.parent.mkdir(parents=True, exist_ok=True)
        arguments.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
