"""Seek-back: where transcribe() would continue decoding when a window's tokens end before its audio does.

Pure token logic. When a decode ends with an open segment, openai-whisper's transcribe() drops that
segment and decodes again from its last timestamp; the engine does the same with a follow-up window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SeekBack:
    """Keep `tokens[:keep]` (whole segments only) and decode again from timestamp position `resume_at`."""

    keep: int
    # in timestamp steps (0.02 s) from the start of the window
    resume_at: int


def seek_back(tokens: Sequence[int], timestamp_begin: int) -> SeekBack | None:
    """transcribe()'s rule for one window's tokens (without the end-of-text token).

    A window whose tokens hold a pair of consecutive timestamps and do not end with a single
    timestamp stopped inside or at the start of a segment: transcribe() keeps the segments up to the
    last pair and seeks to that pair's timestamp. Without a pair (one segment for the whole window) or
    with a single closing timestamp ("no speech after this"), the window is finished: None.
    """
    is_timestamp = [token >= timestamp_begin for token in tokens]
    if is_timestamp[-2:] == [False, True]:
        return None
    pair_ends = [i + 1 for i in range(len(tokens) - 1) if is_timestamp[i] and is_timestamp[i + 1]]
    if not pair_ends:
        return None
    keep = pair_ends[-1]
    return SeekBack(keep=keep, resume_at=tokens[keep - 1] - timestamp_begin)
