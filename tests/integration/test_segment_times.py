"""Real recorded speech: segment times run forward and never overlap, in every response format.

A 99 s real-speech file once gave two segments overlapping by 3.65 s: a segment left open at its window's
end ran to that end, past where the next window's first segment began.
"""

from __future__ import annotations

import io
import itertools
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import srt
import webvtt

from harness.accuracy import DEFAULT_CACHE
from harness.service import ServiceProcess
from harness.speech_corpus import Clip, build_corpus

pytestmark = pytest.mark.integration

# every clip of the real-speech corpus back to back (100 s): windows cut by VAD, seek-back follow-ups
CLIP = "medley"
# what each format's times are read back with: (start, end) in seconds, in the order the answer gives them
READERS = {
    "verbose_json": lambda text: [(s["start"], s["end"]) for s in json.loads(text)["segments"]],
    "srt": lambda text: [(c.start.total_seconds(), c.end.total_seconds()) for c in srt.parse(text)],
    "vtt": lambda text: [(c.start_in_seconds, c.end_in_seconds) for c in webvtt.from_buffer(io.StringIO(text))],
    "tsv": lambda text: [
        (int(row.split("\t")[0]) / 1000, int(row.split("\t")[1]) / 1000) for row in text.splitlines()[1:]
    ],
}


def spans_in(service: ServiceProcess, clip: Clip, response_format: str) -> list[tuple[float, float]]:
    with clip.path.open("rb") as audio:
        answer = requests.post(
            f"{service.url}/v1/audio/transcriptions",
            files={"file": (clip.path.name, audio)},
            data={"model": "whisper-1", "language": "en", "response_format": response_format},
            timeout=900,
        )
    assert answer.status_code == 200, answer.text
    return READERS[response_format](answer.text)


def test_real_speech_segments_run_forward_and_never_overlap_in_any_format(service: ServiceProcess) -> None:
    [clip] = [clip for clip in build_corpus(DEFAULT_CACHE) if clip.name == CLIP]
    # sent at once, so the formats share the service's passes
    with ThreadPoolExecutor(len(READERS)) as pool:
        answers = dict(zip(READERS, pool.map(lambda fmt: spans_in(service, clip, fmt), READERS), strict=True))
    for response_format, spans in answers.items():
        assert spans, response_format
        overlaps = [(a, b) for a, b in itertools.pairwise(spans) if b[0] < a[1]]
        backwards = [(start, end) for start, end in spans if end < start]
        print(f"{CLIP} {response_format}: {len(spans)} segments, overlaps {overlaps}")
        assert not overlaps and not backwards, (response_format, overlaps, backwards)
