"""Diarization's pure parts: speakers onto words and segments, labels, cluster counts, and the subtitle writers."""

from __future__ import annotations

import io

import numpy as np
import pytest
import srt
import webvtt

from app.contract import DiarizationOptions, ItemError, Reason, Segment, Transcript, Word
from app.web.errors import RequestError
from app.web.formats import diarized_json, to_srt, to_vtt
from app.web.speaker_references import check_known_speakers
from app.worker.diarization import SpeakerTurn, cluster, diarize_outcomes, letter, with_speakers


def segment(words: list[tuple[str, float, float]]) -> Segment:
    timed = tuple(Word(text, start, end, 0.9) for text, start, end in words)
    return Segment(timed[0].start, timed[-1].end, "".join(w.word for w in timed), (), 0.0, -0.1, 1.0, 0.01, words=timed)


TURNS = [SpeakerTurn("A", 0.0, 2.0), SpeakerTurn("B", 2.1, 4.0)]


def test_a_segment_spanning_a_speaker_change_is_split_at_the_word_where_it_changes() -> None:
    spoken = segment([(" Hello", 0.2, 0.6), (" there.", 0.6, 1.9), (" Hi", 2.2, 2.5), (" back.", 2.5, 3.0)])
    labelled = with_speakers([spoken], TURNS)
    assert [(s.speaker, s.text, s.start, s.end) for s in labelled] == [
        ("A", " Hello there.", 0.2, 1.9),
        ("B", " Hi back.", 2.2, 3.0),
    ]


def test_a_segment_without_words_takes_the_speaker_it_overlaps_most() -> None:
    plain = Segment(1.5, 3.5, " words", (), 0.0, -0.1, 1.0, 0.01)
    assert with_speakers([plain], TURNS)[0].speaker == "B"


def test_letters_follow_openai() -> None:
    assert [letter(i) for i in (0, 1, 25, 26, 27)] == ["A", "B", "Z", "AA", "AB"]


def test_cluster_counts_follow_the_options() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(3, 8)
    voices = np.concatenate([centre + 0.05 * rng.standard_normal((10, 8)) for centre in centres])
    voices /= np.linalg.norm(voices, axis=1, keepdims=True)
    assert len(set(cluster(voices, DiarizationOptions()))) == 3
    assert len(set(cluster(voices, DiarizationOptions(speakers=2)))) == 2
    assert len(set(cluster(voices, DiarizationOptions(max_speakers=2)))) == 2
    assert len(set(cluster(voices, DiarizationOptions(min_speakers=4)))) == 4


@pytest.mark.parametrize(
    ("names", "references", "words"),
    [
        (("a", "b"), ("data:audio/wav;base64,AAAA",), "2 names but known_speaker_references has 1"),
        (("a",), ("https://example.com/a.wav",), "[0]: must be a data URL"),
        (("a",), ("data:audio/wav;base64,%%%",), "[0]: the data URL's payload is not valid base64"),
        (("a", "a"), ("data:audio/wav;base64,AAAA",) * 2, "distinct"),
        (tuple("abcde"), ("data:audio/wav;base64,AAAA",) * 5, "at most 4"),
    ],
)
def test_bad_references_say_which(names: tuple[str, ...], references: tuple[str, ...], words: str) -> None:
    with pytest.raises(RequestError) as refused:
        check_known_speakers(names, references)
    assert words in refused.value.error.message


def two_speakers() -> Transcript:
    first = Segment(0.0, 1.5, " Good morning.", (), 0.0, -0.1, 1.0, 0.01, speaker="A")
    second = Segment(1.6, 3.0, " Morning, Ann.", (), 0.0, -0.1, 1.0, 0.01, speaker="Ann & <Bo>")
    return Transcript("Good morning. Morning, Ann.", "en", 3.0, [first, second])


def test_srt_and_vtt_name_the_speakers_for_real_parsers() -> None:
    cues = list(srt.parse(to_srt(two_speakers())))
    assert [cue.content for cue in cues] == ["A: Good morning.", "Ann & <Bo>: Morning, Ann."]
    captions = webvtt.from_buffer(io.StringIO(to_vtt(two_speakers())))
    assert [(c.voice, c.text) for c in captions] == [("A", "Good morning."), ("Ann &amp; <Bo&gt;", "Morning, Ann.")]


def test_diarized_json_has_openais_shape() -> None:
    body = diarized_json(two_speakers())
    assert body["task"] == "transcribe" and body["duration"] == 3.0
    assert body["segments"][1] == {
        "type": "transcript.text.segment",
        "id": "seg_1",
        "start": 1.6,
        "end": 3.0,
        "text": "Morning, Ann.",
        "speaker": "Ann & <Bo>",
    }


class FailingOnSilence:
    """A diarizer that fails on an all-zero waveform and finds one speaker in anything else."""

    def turns(self, requests):
        if any(not waveform.any() for waveform, _ in requests):
            raise RuntimeError("no voice")
        return [[SpeakerTurn("A", 0.0, len(waveform) / 16000)] for waveform, _ in requests]


def test_one_requests_diarization_failure_leaves_its_neighbours_labelled() -> None:
    spoken = Transcript(" Hello there.", "en", 2.0, [segment([(" Hello", 0.2, 0.6), (" there.", 0.6, 1.9)])])
    voice, silence = np.ones(32000, dtype=np.float32), np.zeros(32000, dtype=np.float32)
    outcomes = diarize_outcomes(
        FailingOnSilence(),  # type: ignore[arg-type]
        [
            (voice, DiarizationOptions(), spoken),
            (silence, DiarizationOptions(), spoken),
            (voice, DiarizationOptions(), spoken),
        ],
    )
    assert isinstance(outcomes[1], ItemError) and outcomes[1].reason is Reason.INFERENCE_FAILED
    assert all(isinstance(o, Transcript) and o.segments[0].speaker == "A" for o in (outcomes[0], outcomes[2]))
