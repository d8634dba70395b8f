"""The continuous scheduler against the static engine, in process, on real recorded speech with tiny.en.

Greedy transcripts must be the static engine's: the same windows (the engine's splitter, VAD on or off),
the same seek-back follow-ups (which re-enter the slots as new windows), the same stitching. Few slots,
so windows of different requests and their follow-ups take turns in them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest
import whisper
from whisper.model import Whisper

from app.contract import Transcript, TranscriptionOptions
from app.worker.engine import AudioItem, Transcriber, fixed_windows
from app.worker.scheduler import ContinuousScheduler
from app.worker.vad import VadSplitter
from harness.accuracy import DEFAULT_CACHE
from harness.speech_corpus import build_corpus

pytestmark = pytest.mark.integration

# a 27 s window the model ends early (seek-back), a 100 s medley of every clip, and two short ones
CLIPS = ("sense_and_sensibility", "medley", "beckett", "go_forward")


def same_up_to_rounding(ours: object, theirs: object) -> bool:
    """Equal transcripts: text, tokens and times to the letter; a window's log-probability and no-speech
    probability within float noise (on the CPU they move in the 7th digit with the batch a window
    is computed in, in the static engine too)."""
    assert isinstance(ours, Transcript) and isinstance(theirs, Transcript), (ours, theirs)
    if len(ours.segments) != len(theirs.segments):
        return False
    for mine, reference in zip(ours.segments, theirs.segments, strict=True):
        if abs(mine.avg_logprob - reference.avg_logprob) > 1e-4:
            return False
        if abs(mine.no_speech_prob - reference.no_speech_prob) > 1e-4:
            return False
    rounded = [replace(s, avg_logprob=0.0, no_speech_prob=0.0) for s in ours.segments]
    return replace(ours, segments=rounded) == replace(
        theirs, segments=[replace(s, avg_logprob=0.0, no_speech_prob=0.0) for s in theirs.segments]
    )


@pytest.fixture(scope="module")
def speech() -> list[AudioItem]:
    clips = {clip.name: clip for clip in build_corpus(DEFAULT_CACHE)}
    options = TranscriptionOptions(language="en")
    return [AudioItem(whisper.load_audio(str(clips[name].path)), options) for name in CLIPS]


def continuous(transcriber: Transcriber, jobs: Sequence[AudioItem], slots: int) -> list[Transcript]:
    scheduler = ContinuousScheduler(transcriber, slots)
    for key, job in enumerate(jobs):
        scheduler.submit(key, job)
    answers = {}
    # a generous ceiling on steps, not a wait: 100 s of speech is a few thousand steps at 3 slots
    for _ in range(100_000):
        if not scheduler.busy:
            break
        answers.update({finished.key: finished.outcome for finished in scheduler.step()})
    assert not scheduler.busy
    return [answers[key] for key in range(len(jobs))]


@pytest.mark.parametrize("vad", [True, False], ids=["vad", "no-vad"])
def test_continuous_transcripts_are_the_static_engines(
    tiny_en_model: Whisper, speech: list[AudioItem], vad: bool
) -> None:
    splitter = VadSplitter(tiny_en_model.device, enabled=vad)
    transcriber = Transcriber(tiny_en_model, max_windows_per_pass=8, splitter=splitter)
    static = transcriber.run_batch(speech)
    # the clips exercise seek-back: the engine decoded more windows than the splitter cut
    assert static.statistics.windows > len(splitter(speech))
    got = continuous(transcriber, speech, slots=3)
    for name, ours, theirs in zip(CLIPS, got, static.outcomes, strict=True):
        assert same_up_to_rounding(ours, theirs), (name, ours, theirs)


def test_word_timestamps_stitch_in_the_engines_order(tiny_en_model: Whisper, speech: list[AudioItem]) -> None:
    """Word alignment carries the last word's end from window to window: the scheduler stitches in the
    engine's order, whatever order its windows ended in."""
    transcriber = Transcriber(tiny_en_model, max_windows_per_pass=8, splitter=fixed_windows)
    jobs = [AudioItem(job.waveform, TranscriptionOptions(language="en", word_timestamps=True)) for job in speech[:2]]
    [ours_long, ours_short] = continuous(transcriber, jobs, slots=2)
    [static_long, static_short] = transcriber.run_batch(jobs).outcomes
    assert same_up_to_rounding(ours_long, static_long) and same_up_to_rounding(ours_short, static_short)
    assert isinstance(ours_long, Transcript) and ours_long.segments[0].words
