"""Speech clips for the benchmark: espeak-ng sentences joined to chosen lengths, encoded as Opus.

Usage: python scripts/bench_clips.py DIR [--short 60] [--long 4] [--seed 0]
Writes DIR/clips.json (file name, length, spoken text and its token count for each clip) beside the
clips; scripts/bench.py reads it, so clips made once (where espeak-ng is installed) can be reused on a
machine without it. The token counts give the synthetic model its realistic decode lengths.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import tempfile
import wave
from dataclasses import asdict, dataclass
from pathlib import Path

MANIFEST = "clips.json"
SHORT_SECONDS = (5.0, 30.0)
LONG_SECONDS = (120.0, 300.0)
LONE_SECONDS = 10.0
SAMPLE_RATE = 16000
OPUS_BITRATE = "24k"
# espeak-ng speaks about 2.5 words a second at this rate; text is drawn with room to spare, then cut
WORDS_PER_MINUTE = 150
WORDS_PER_SECOND_DRAWN = 3.5
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "Six spoons of fresh snow peas and five thick slabs of blue cheese.",
    "We also need a small plastic snake and a big toy frog for the kids.",
    "She can scoop these things into three red bags, and we will go meet her on Wednesday.",
    "The weather today is sunny with a light breeze from the west.",
    "Our meeting starts at nine in the morning and ends before lunch.",
    "Remember to water the plants and feed the cat before you leave.",
    "The quarterly report shows that sales grew in every region except the north.",
    "Could you send me the slides from yesterday's presentation by the end of the day?",
    "The train to the airport leaves every twenty minutes from platform four.",
    "After the break we will review the budget and agree on next steps.",
)


@dataclass(frozen=True)
class Clip:
    """One encoded clip, its length in seconds, and what a model transcribing it would decode."""

    file: str
    seconds: float
    # the words spoken within the clip's seconds, and whisper's tokens for them (timestamps included)
    text: str = ""
    tokens: int = 0


def whisper_tokens(text: str) -> int:
    """Tokens whisper decodes for `text`: its words, a timestamp pair per sentence, end-of-text."""
    from whisper.tokenizer import get_tokenizer

    sentences = max(1, sum(text.count(mark) for mark in ".?!"))
    return len(get_tokenizer(multilingual=False).encode(" " + text)) + 2 * sentences + 1


def spoken_part(text: str, raw: Path, seconds: float) -> str:
    """The words of `text` spoken within `seconds` of its synthesis, by each word's share of the characters."""
    with wave.open(str(raw)) as audio:
        spoken_seconds = audio.getnframes() / audio.getframerate()
    budget = len(text) * min(1.0, seconds / spoken_seconds)
    words, used = [], 0
    for word in text.split():
        used += len(word) + 1
        if used > budget:
            break
        words.append(word)
    return " ".join(words)


def speak(text: str, destination: Path, seconds: float) -> str:
    """Synthesise `text`, keep exactly its first `seconds` as 16 kHz mono Opus; return the words kept."""
    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / "speech.wav"
        subprocess.run(["espeak-ng", "-s", str(WORDS_PER_MINUTE), "-w", str(raw), text], check=True)
        spoken = spoken_part(text, raw, seconds)
        subprocess.run(
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(raw), "-af", f"apad=whole_dur={seconds}",
             "-t", f"{seconds:.3f}", "-ar", str(SAMPLE_RATE), "-ac", "1", "-c:a", "libopus", "-b:a", OPUS_BITRATE,
             str(destination)],
            check=True,
        )  # fmt: skip
    return spoken


def speech_text(seconds: float, rng: random.Random) -> str:
    words: list[str] = []
    while len(words) < seconds * WORDS_PER_SECOND_DRAWN:
        words.extend(rng.choice(SENTENCES).split())
    return " ".join(words)


def make_clips(directory: Path, short: int, long: int, seed: int) -> tuple[list[Clip], Clip]:
    """`short` clips of 5-30 s and `long` of 2-5 min for the load, and one 10 s clip for latency."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lengths = [round(rng.uniform(*SHORT_SECONDS), 2) for _ in range(short)]
    lengths += [round(rng.uniform(*LONG_SECONDS), 2) for _ in range(long)]
    clips = []
    for index, seconds in enumerate(lengths):
        file = f"clip{index:03d}.ogg"
        spoken = speak(speech_text(seconds, rng), directory / file, seconds)
        clips.append(Clip(file, seconds, spoken, whisper_tokens(spoken)))
    spoken = speak(speech_text(LONE_SECONDS, rng), directory / "lone10s.ogg", LONE_SECONDS)
    lone = Clip("lone10s.ogg", LONE_SECONDS, spoken, whisper_tokens(spoken))
    manifest = {
        "clips": [asdict(c) for c in clips],
        "lone": asdict(lone),
        "tokens_per_second": tokens_per_second(clips),
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return clips, lone


def tokens_per_second(clips: list[Clip]) -> float:
    """Whisper tokens per second of speech over the clips: the synthetic model's realistic decode rate."""
    return round(sum(c.tokens for c in clips) / sum(c.seconds for c in clips), 3)


def load_clips(directory: Path) -> tuple[list[Clip], Clip]:
    manifest = json.loads((directory / MANIFEST).read_text())
    return [Clip(**c) for c in manifest["clips"]], Clip(**manifest["lone"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--short", type=int, default=60, help="clips of 5-30 s")
    parser.add_argument("--long", type=int, default=4, help="clips of 2-5 minutes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    clips, _ = make_clips(args.directory, args.short, args.long, args.seed)
    print(
        f"{len(clips)} clips, {sum(c.seconds for c in clips):.0f} s of speech, "
        f"{tokens_per_second(clips)} tokens a second, in {args.directory}"
    )


if __name__ == "__main__":
    main()
