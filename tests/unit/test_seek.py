"""Seek-back on crafted token sequences: where transcribe() would continue, and the follow-up window it gives."""

from __future__ import annotations

import pytest
from whisper.audio import SAMPLE_RATE
from whisper.tokenizer import get_tokenizer

from app.contract import Segment, Word
from app.worker.pipeline import FOLLOW_UP_LEAD_SECONDS, rest_of_window
from app.worker.seek import SeekBack, seek_back
from app.worker.segments import in_order, window_segments
from app.worker.windows import Window
from tests.unit.test_engine import result

TOKENIZER = get_tokenizer(multilingual=False)
BEGIN = TOKENIZER.timestamp_begin
HELLO, WORLD, MORE = TOKENIZER.encode(" hello"), TOKENIZER.encode(" world"), TOKENIZER.encode(" and more")


def at(seconds: float) -> int:
    """The timestamp token for `seconds` into the window."""
    return BEGIN + round(seconds / 0.02)


def test_a_window_ending_with_a_closing_timestamp_is_finished() -> None:
    # <0> hello <1><1> world <2.5>: "no speech after 2.5 s"
    assert seek_back([at(0), *HELLO, at(1), at(1), *WORLD, at(2.5)], BEGIN) is None


def test_one_segment_without_a_pair_covers_the_whole_window() -> None:
    assert seek_back([at(0), *HELLO, *WORLD], BEGIN) is None
    assert seek_back([at(0), *HELLO, at(3)], BEGIN) is None
    assert seek_back([], BEGIN) is None


def test_a_window_that_opens_a_segment_and_stops_seeks_to_that_timestamp() -> None:
    # the failure seen on real speech: <|17.72|><|17.72|> and end of text, well before the window's end
    tokens = [at(0), *HELLO, at(5), at(5), *WORLD, at(17.72), at(17.72)]
    back = seek_back(tokens, BEGIN)
    assert back == SeekBack(keep=len(tokens) - 1, resume_at=886)
    kept = window_segments(result(tokens[: back.keep]), Window(0, 0, 28 * SAMPLE_RATE), TOKENIZER)
    assert [(s.start, s.end, s.text) for s in kept] == [(0.0, 5.0, " hello"), (5.0, 17.72, " world")]


def test_an_unfinished_last_segment_is_dropped_and_decoded_again_from_its_start() -> None:
    tokens = [at(0), *HELLO, at(4), at(6), *WORLD, *MORE]
    back = seek_back(tokens, BEGIN)
    assert back == SeekBack(keep=3 + len(HELLO) - 1, resume_at=200)
    assert tokens[: back.keep] == [at(0), *HELLO, at(4)]


def test_the_follow_up_window_keeps_file_times() -> None:
    window = Window(2, start=60 * SAMPLE_RATE, end=88 * SAMPLE_RATE)
    follow_up = rest_of_window(window, SeekBack(keep=5, resume_at=886))
    # it starts a little before the timestamp (FOLLOW_UP_LEAD_SECONDS), where the word may begin
    assert follow_up == Window(2, start=round((77.72 - FOLLOW_UP_LEAD_SECONDS) * SAMPLE_RATE), end=88 * SAMPLE_RATE)
    # its own tokens start at 0 again; segments land where the audio is in the file
    [segment] = window_segments(result([at(0), *MORE, at(3)]), follow_up, TOKENIZER)
    assert (segment.start, segment.end) == (77.52, 80.52)


@pytest.mark.parametrize(
    ("resume_at", "why"),
    [
        (0, "no progress: decoding again from the same place would loop"),
        (5, "0.1 s: less than the lead"),
        (1400, "under 0.5 s left"),
    ],
)
def test_no_follow_up_without_progress_or_audio(resume_at: int, why: str) -> None:
    window = Window(0, start=0, end=28 * SAMPLE_RATE)
    assert rest_of_window(window, SeekBack(keep=3, resume_at=resume_at)) is None, why
    assert rest_of_window(window, None) is None


def test_a_timestamp_past_the_windows_audio_ends_it() -> None:
    # the last window of a file is often short; the model may still name a time past its audio
    window = Window(0, start=0, end=10 * SAMPLE_RATE)
    assert rest_of_window(window, SeekBack(keep=3, resume_at=600)) is None


def test_follow_ups_of_joined_speech_spans_continue_in_the_right_span() -> None:
    # VAD windows join speech spans; 12 s into the window's audio is 2 s into the second span
    window = Window(0, 0, 70 * SAMPLE_RATE, spans=((0, 10 * SAMPLE_RATE), (50 * SAMPLE_RATE, 70 * SAMPLE_RATE)))
    follow_up = rest_of_window(window, SeekBack(keep=3, resume_at=610))
    assert follow_up == Window(0, 52 * SAMPLE_RATE, 70 * SAMPLE_RATE)
    segments = window_segments(result([at(9), *HELLO, at(11), at(11), *WORLD, at(12)]), window, TOKENIZER)
    assert [(s.start, s.end) for s in segments] == [(9.0, 51.0), (51.0, 52.0)]


def test_transcripts_keep_times_in_order_inside_the_audio() -> None:
    def segment(start: float, end: float, *words: tuple[float, float]) -> Segment:
        timed = tuple(Word("w", a, b, 1.0) for a, b in words)
        return Segment(start, end, " w", (), 0.0, -0.1, 1.0, 0.0, words=timed)

    # a follow-up's segment (27.2-29) arrives after the window's next one, and its first word overlaps;
    # each segment ends where the next begins, its words cut there too
    tidy = in_order(
        [segment(28.0, 31.0, (28.0, 31.0)), segment(20.0, 27.5, (27.0, 27.5)), segment(27.2, 29.0, (27.25, 28.0))], 30.0
    )
    assert [(s.start, s.end) for s in tidy] == [(20.0, 27.2), (27.2, 28.0), (28.0, 30.0)]
    words = [(w.start, w.end) for s in tidy for w in s.words]
    assert words == [(27.0, 27.2), (27.5, 28.0), (28.0, 30.0)]
