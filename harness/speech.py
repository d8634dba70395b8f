"""Real speech for tests, synthesised with espeak-ng and converted with ffmpeg (nothing committed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

# slower than espeak's default so tiny.en recognises most words
WORDS_PER_MINUTE = 130

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "Six spoons of fresh snow peas and five thick slabs of blue cheese.",
    "We also need a small plastic snake and a big toy frog for the kids.",
    "She can scoop these things into three red bags, and we will go meet her on Wednesday at the train station.",
    "The weather today is sunny with a light breeze from the west.",
    "Our meeting starts at nine in the morning and ends before lunch.",
    "Remember to water the plants and feed the cat before you leave.",
)


def speak(text: str, destination: Path, gap_seconds: float = 0.0) -> Path:
    """Write `text` as speech to a WAV file; `gap_seconds` of silence are appended."""
    raw = destination.with_suffix(".espeak.wav")
    subprocess.run(["espeak-ng", "-s", str(WORDS_PER_MINUTE), "-w", str(raw), text], check=True)
    filters = ["-af", f"apad=pad_dur={gap_seconds}"] if gap_seconds else []
    convert(raw, destination, *filters)
    raw.unlink()
    return destination


def convert(source: Path, destination: Path, *ffmpeg_args: str) -> Path:
    """Re-encode with ffmpeg; the destination's suffix picks the format (wav, mp3, ogg...)."""
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(source), *ffmpeg_args, str(destination)],
        check=True,
    )
    return destination


def duration_seconds(path: Path) -> float:
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(probe.stdout)


def long_speech(destination: Path, minimum_seconds: float) -> Path:
    """Distinct sentences with short pauses, repeated in varied order until the clip is long enough."""
    parts = []
    total = 0.0
    index = 0
    while total < minimum_seconds:
        part = speak(SENTENCES[index % len(SENTENCES)], destination.parent / f"part{index}.wav", gap_seconds=0.4)
        total += duration_seconds(part)
        parts.append(part)
        index += 1
    listing = destination.parent / "parts.txt"
    listing.write_text("".join(f"file '{p}'\n" for p in parts))
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "concat",
            "-safe",
            "0",
            "-i",
            str(listing),
            "-c",
            "copy",
            str(destination),
        ],
        check=True,
    )
    for part in parts:
        part.unlink()
    listing.unlink()
    return destination


def looped(clip: Path, times: int, destination: Path) -> Path:
    """`clip` played `times` over, as Opus: small to upload, long to transcribe."""
    loop = ["-stream_loop", str(times - 1), "-i", str(clip), "-c:a", "libopus", "-b:a", "24k"]
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *loop, str(destination)], check=True)
    return destination
