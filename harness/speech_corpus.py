"""Real recorded English speech with reference transcripts, fetched from Debian and PyPI packages and cached.

Nothing here is committed: `build_corpus(cache)` downloads pocketsphinx-testdata (apt-get download) and the
moonshine-voice wheel (pip download), and writes 16 kHz mono WAV clips with their transcripts into `cache`.
"""

from __future__ import annotations

import subprocess
import sys
import wave
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import whisper
from whisper.audio import SAMPLE_RATE
from whisper.normalizers import EnglishTextNormalizer

POCKETSPHINX_PACKAGE = "pocketsphinx-testdata"
POCKETSPHINX_DATA = Path("usr/share/pocketsphinx/test/data")
MOONSHINE_PACKAGE = "moonshine-voice==0.1.5"
MOONSHINE_ASSETS = "moonshine_voice/assets/"
# silence between the pieces of a joined clip, and between the clips of the medley
JOIN_GAP_SECONDS = 0.5
MEDLEY_GAP_SECONDS = 1.0

# the opening paragraph of A Tale of Two Cities (Dickens, 1859), as the LibriVox reader reads it
TWO_CITIES = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, "
    "it was the season of Darkness, it was the spring of hope, it was the winter of despair, we had everything "
    "before us, we had nothing before us, we were all going direct to Heaven, we were all going direct the "
    "other way; in short, the period was so far like the present period, that some of its noisiest "
    "authorities insisted on its being received, for good or for evil, in the superlative degree of "
    "comparison only."
)
BECKETT = "Ever tried. Ever failed. No matter. Try again. Fail again. Fail better."
GO_FORWARD = "go forward ten meters"
normalize = EnglishTextNormalizer()


@dataclass(frozen=True)
class Clip:
    """One recording, 16 kHz mono, with what was said."""

    name: str
    path: Path
    reference: str

    @property
    def seconds(self) -> float:
        with wave.open(str(self.path)) as audio:
            return audio.getnframes() / audio.getframerate()


def write_wav(path: Path, waveform: np.ndarray) -> Path:
    """16-bit PCM at 16 kHz: what every player and ffmpeg reads."""
    pcm = (np.clip(waveform, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(SAMPLE_RATE)
        audio.writeframes(pcm.tobytes())
    return path


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)


def joined(waveforms: list[np.ndarray], gap_seconds: float) -> np.ndarray:
    pieces = []
    for waveform in waveforms:
        pieces += [waveform, silence(gap_seconds)]
    return np.concatenate(pieces[:-1])


def fetch_pocketsphinx(cache: Path) -> Path:
    """The unpacked pocketsphinx-testdata data folder (LibriVox and CMU recordings with transcripts)."""
    root = cache / "pocketsphinx"
    data = root / POCKETSPHINX_DATA
    if not data.is_dir():
        downloads = cache / "debs"
        downloads.mkdir(parents=True, exist_ok=True)
        download = ["apt-get", "download", POCKETSPHINX_PACKAGE]
        if subprocess.run(download, cwd=downloads, capture_output=True).returncode != 0:
            # a fresh machine has no package lists yet
            subprocess.run(["apt-get", "update", "-qq"], check=True)
            subprocess.run(download, cwd=downloads, check=True, capture_output=True)
        [deb] = downloads.glob(f"{POCKETSPHINX_PACKAGE}_*.deb")
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return data


def fetch_moonshine_assets(cache: Path) -> Path:
    """The audio assets of the moonshine-voice wheel (LibriVox two_cities.wav, beckett.wav)."""
    assets = cache / "moonshine"
    if not (assets / "two_cities.wav").is_file():
        wheels = cache / "wheels"
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", MOONSHINE_PACKAGE, "-d", str(wheels)],
            check=True,
        )
        [wheel] = wheels.glob("moonshine_voice-*.whl")
        assets.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            for name in ("two_cities.wav", "beckett.wav"):
                (assets / name).write_bytes(archive.read(MOONSHINE_ASSETS + name))
    return assets


def pocketsphinx_transcripts(listing: Path) -> dict[str, str]:
    """`<s> words </s> (id)` lines -> {id: words}."""
    transcripts = {}
    for line in listing.read_text().splitlines():
        words, _, utterance = line.rpartition("(")
        transcripts[utterance.rstrip(")").strip()] = words.replace("<s>", "").replace("</s>", "").strip()
    return transcripts


def utterances(texts: Iterable[str]) -> str:
    """The reference of recordings joined into one clip: each normalised on its own, as it was said.

    whisper's EnglishTextNormalizer joins spelled numbers across sentence ends: "five five. eight of
    spades" would become "558", a number nobody said; normalised one utterance at a time it is "5 5 8".
    """
    return " ".join(normalize(text) for text in texts)


def load(path: Path) -> np.ndarray:
    return whisper.load_audio(str(path))


def load_raw(path: Path) -> np.ndarray:
    """pocketsphinx's .raw files: headerless 16 kHz 16-bit little-endian mono."""
    return np.frombuffer(path.read_bytes(), dtype="<i2").astype(np.float32) / 32768.0


def build_corpus(cache: Path) -> list[Clip]:
    """The clips, written once into `cache/clips`; the last one (medley) joins all the others (> 90 s)."""
    cache.mkdir(parents=True, exist_ok=True)
    data = fetch_pocketsphinx(cache)
    assets = fetch_moonshine_assets(cache)
    librivox = pocketsphinx_transcripts(data / "librivox/transcription")
    cards = pocketsphinx_transcripts(data / "cards/cards.transcription")
    sources: list[tuple[str, np.ndarray, str]] = [
        ("two_cities", load(assets / "two_cities.wav"), TWO_CITIES),
        ("beckett", load(assets / "beckett.wav"), BECKETT),
        (
            "sense_and_sensibility",
            joined([load(data / f"librivox/{name}.wav") for name in librivox], JOIN_GAP_SECONDS),
            utterances(librivox.values()),
        ),
        (
            "cards",
            joined([load(data / f"cards/{name}.wav") for name in cards], JOIN_GAP_SECONDS),
            utterances(cards.values()),
        ),
        ("go_forward", load_raw(data / "goforward.raw"), GO_FORWARD),
    ]
    sources.append(
        (
            "medley",
            joined([waveform for _, waveform, _ in sources], MEDLEY_GAP_SECONDS),
            " ".join(r for *_, r in sources),
        )
    )
    folder = cache / "clips"
    folder.mkdir(exist_ok=True)
    clips = []
    for name, waveform, reference in sources:
        path = folder / f"{name}.wav"
        if not path.is_file():
            write_wav(path, waveform)
        clips.append(Clip(name, path, reference))
    return clips


def half_silence(clips: list[Clip], destination: Path) -> Clip:
    """Each clip followed by as much digital silence as it lasts: half the file is silence."""
    pieces, references = [], []
    for clip in clips:
        waveform = load(clip.path)
        pieces += [waveform, silence(len(waveform) / SAMPLE_RATE)]
        references.append(clip.reference)
    if not destination.is_file():
        write_wav(destination, np.concatenate(pieces))
    return Clip("half_silence", destination, utterances(references))
