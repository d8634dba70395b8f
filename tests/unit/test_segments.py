"""Stitched segments, whatever order and times their windows give: forward, inside the audio, never overlapping."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.contract import Segment, Word
from app.worker.segments import in_order

DURATION = 100.0
times = st.floats(min_value=-5.0, max_value=DURATION + 5.0, allow_nan=False)


@st.composite
def segments(draw: st.DrawFn) -> Segment:
    start, end = draw(times), draw(times)
    words = tuple(Word("w", a, b, 1.0) for a, b in draw(st.lists(st.tuples(times, times), max_size=4)))
    return Segment(start, end, " w", (), 0.0, -0.1, 1.0, 0.0, words=words)


# a shared 2-core machine can be slow to draw examples; the property, not the pace, is under test
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(segments(), max_size=8))
def test_stitched_segments_run_forward_inside_the_audio_and_never_overlap(found: list[Segment]) -> None:
    tidy = in_order(found, DURATION)
    assert len(tidy) == len(found)
    assert all(0.0 <= s.start <= s.end <= DURATION for s in tidy)
    assert all(earlier.end <= later.start for earlier, later in itertools.pairwise(tidy))
    words = [w for s in tidy for w in s.words]
    assert all(0.0 <= w.start <= w.end <= DURATION for w in words)
    assert all(earlier.end <= later.start for earlier, later in itertools.pairwise(words))
    assert all(w.end <= s.end for s in tidy for w in s.words)
