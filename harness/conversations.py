"""Conversations built from real recordings of different speakers, with the turns known: diarization's test set.

Each speaker is one reader of scripts/speech_corpus.py (LibriVox and CMU recordings). Their audio is cut at its
pauses into utterances, and utterances are dealt out as turns (long and short, now and then overlapping the
turn before) into one mixed waveform; the reference says who speaks when (where each utterance is loud, found on
its own clean recording before mixing: pauses inside turns are not speech).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.contract import SAMPLE_RATE
from harness.speech_corpus import build_corpus, fetch_pocketsphinx, load, load_raw

# the corpus clips that are one voice each, by the name a conversation gives the speaker. Not beckett.wav: its
# voice embeds as close to two_cities.wav's (cosine distance 0.29) as one reader's clips do to each other, so it
# is likely the same reader, and a conversation of the two would score a right answer as an error
SPEAKER_CLIPS = {
    "dickens_reader": "two_cities",
    "austen_reader": "sense_and_sensibility",
    "cards_speaker": "cards",
}
# pocketsphinx-testdata's three spoken commands, one CMU speaker (apart from the cards speaker: 0.37-0.48)
COMMANDS = ("numbers.raw", "something.raw", "goforward.raw")
FRAME_SECONDS = 0.02
# a pause this long between words is where a speaker's audio may be cut into utterances
PAUSE_SECONDS = 0.25
# a frame this far below the clip's loud frames (in dB) is silence
SILENCE_DB = 25.0


@dataclass(frozen=True)
class Turn:
    """Who spoke from when to when, in seconds from the conversation's start."""

    speaker: str
    start: float
    end: float


@dataclass(frozen=True)
class Conversation:
    name: str
    waveform: np.ndarray
    turns: tuple[Turn, ...]

    @property
    def speakers(self) -> list[str]:
        return sorted({turn.speaker for turn in self.turns})

    @property
    def seconds(self) -> float:
        return len(self.waveform) / SAMPLE_RATE


def speech_frames(waveform: np.ndarray) -> np.ndarray:
    """Which 20 ms frames hold speech, by energy relative to the clip's loudest frames."""
    size = int(FRAME_SECONDS * SAMPLE_RATE)
    frames = waveform[: len(waveform) // size * size].reshape(-1, size)
    level = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-10)
    return level > np.percentile(level, 95) - SILENCE_DB


def utterances(waveform: np.ndarray) -> list[np.ndarray]:
    """The clip cut in the middle of each pause of at least PAUSE_SECONDS, each piece trimmed to its speech."""
    speech = speech_frames(waveform)
    size = int(FRAME_SECONDS * SAMPLE_RATE)
    pause_frames = int(PAUSE_SECONDS / FRAME_SECONDS)
    pieces: list[tuple[int, int]] = []
    start: int | None = None
    quiet = 0
    for index, loud in enumerate(speech):
        if loud:
            if start is None:
                start = index
            quiet = 0
            continue
        quiet += 1
        if start is not None and quiet == pause_frames:
            pieces.append((start, index - quiet + 1))
            start = None
    if start is not None:
        pieces.append((start, len(speech)))
    return [waveform[first * size : last * size] for first, last in pieces if last - first >= 10]


def spoken(piece: np.ndarray) -> list[tuple[int, int]]:
    """Where in an utterance its speaker is heard (by energy, pauses under 0.2 s bridged), in samples."""
    size = int(FRAME_SECONDS * SAMPLE_RATE)
    loud = np.flatnonzero(speech_frames(piece))
    if not len(loud):
        return []
    breaks = np.flatnonzero(np.diff(loud) > int(0.2 / FRAME_SECONDS))
    firsts = [loud[0], *loud[breaks + 1]]
    lasts = [*loud[breaks], loud[-1]]
    return [(int(first) * size, (int(last) + 1) * size) for first, last in zip(firsts, lasts, strict=True)]


def conversation(
    name: str, voices: dict[str, list[np.ndarray]], seed: int, overlap_chance: float = 0.2
) -> Conversation:
    """Turns dealt in random order (never the same speaker twice running) while two speakers have audio left.

    A turn is one to four utterances of its speaker; a quarter are single short ones. Between turns there is a
    pause of 0.1-0.8 s, or with `overlap_chance` the next turn starts up to 0.5 s before this one ends.
    """
    chooser = random.Random(seed)
    left = {speaker: list(pieces) for speaker, pieces in voices.items()}
    placed: list[tuple[str, int, np.ndarray]] = []
    cursor = 0
    previous = ""
    while len([s for s in left if left[s]]) >= 2:
        speaker = chooser.choice([s for s in left if left[s] and s != previous])
        count = 1 if chooser.random() < 0.25 else chooser.randint(1, 4)
        pieces = [left[speaker].pop(0) for _ in range(min(count, len(left[speaker])))]
        gap = chooser.uniform(0.1, 0.8)
        for index, piece in enumerate(pieces):
            placed.append((speaker, cursor, piece))
            cursor += len(piece) + int((gap if index == len(pieces) - 1 else 0.3) * SAMPLE_RATE)
        if chooser.random() < overlap_chance:
            cursor -= int((gap + chooser.uniform(0.2, 0.5)) * SAMPLE_RATE)
        previous = speaker
    return mixed(name, placed)


def mixed(name: str, placed: Sequence[tuple[str, int, np.ndarray]]) -> Conversation:
    """Utterances added into one waveform at their places; the reference is where each is loud."""
    waveform = np.zeros(max(start + len(piece) for _, start, piece in placed), dtype=np.float32)
    for _, start, piece in placed:
        waveform[start : start + len(piece)] += piece
    turns = tuple(
        Turn(speaker, (start + first) / SAMPLE_RATE, (start + last) / SAMPLE_RATE)
        for speaker, start, piece in placed
        for first, last in spoken(piece)
    )
    return Conversation(name, np.clip(waveform, -1.0, 1.0), turns)


def dialogue(name: str, lines: Sequence[tuple[str, Sequence[np.ndarray]]], gap_seconds: float) -> Conversation:
    """Turns in the order given (each a speaker's utterances, 0.3 s apart), `gap_seconds` between turns."""
    placed: list[tuple[str, int, np.ndarray]] = []
    cursor = 0
    for speaker, pieces in lines:
        for index, piece in enumerate(pieces):
            placed.append((speaker, cursor, piece))
            cursor += len(piece) + int((gap_seconds if index == len(pieces) - 1 else 0.3) * SAMPLE_RATE)
    return mixed(name, placed)


def speaker_voices(cache: Path) -> dict[str, list[np.ndarray]]:
    clips = {clip.name: clip for clip in build_corpus(cache)}
    voices = {speaker: utterances(load(clips[clip].path)) for speaker, clip in SPEAKER_CLIPS.items()}
    data = fetch_pocketsphinx(cache)
    voices["commands_speaker"] = [piece for name in COMMANDS for piece in utterances(load_raw(data / name))]
    return voices


def conversations(cache: Path) -> list[Conversation]:
    """The benchmark's set: four with 2 speakers, two with 3, one with 4."""
    voices = speaker_voices(cache)
    casts = [
        ("two-dickens-austen", ["dickens_reader", "austen_reader"]),
        ("two-cards-commands", ["cards_speaker", "commands_speaker"]),
        ("two-dickens-cards", ["dickens_reader", "cards_speaker"]),
        ("two-austen-commands", ["austen_reader", "commands_speaker"]),
        ("three-dickens-austen-cards", ["dickens_reader", "austen_reader", "cards_speaker"]),
        ("three-austen-cards-commands", ["austen_reader", "cards_speaker", "commands_speaker"]),
        ("four-all", [*SPEAKER_CLIPS, "commands_speaker"]),
    ]
    return [
        conversation(name, {speaker: voices[speaker] for speaker in cast}, seed=index)
        for index, (name, cast) in enumerate(casts)
    ]


# a segment's middle this close to a turn change may fall either side of it
TOLERANCE_SECONDS = 0.5


def speaker_at(talk: Conversation, moment: float) -> str | None:
    """Who the reference says speaks at `moment`; None near a turn change or in a pause."""
    for turn in talk.turns:
        if turn.start + TOLERANCE_SECONDS <= moment <= turn.end - TOLERANCE_SECONDS:
            return turn.speaker
    return None


def label_map(talk: Conversation, segments: list[tuple[str, float, float]]) -> dict[str, str]:
    """Each label the service gave -> the one reference speaker it stands for; fails on any disagreement."""
    mapping: dict[str, set[str]] = {}
    for label, start, end in segments:
        truth = speaker_at(talk, (start + end) / 2)
        if truth is not None:
            mapping.setdefault(label, set()).add(truth)
    assert all(len(truths) == 1 for truths in mapping.values()), mapping
    found = {label: truths.pop() for label, truths in mapping.items()}
    assert sorted(found.values()) == talk.speakers, found
    return found
