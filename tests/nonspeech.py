"""Audio with no speech in it, generated: silence, noise, tones, DTMF, chords, clicks (nothing committed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from whisper.audio import SAMPLE_RATE

from harness.speech_corpus import write_wav

RNG_SEED = 14
# DTMF: each key is the sum of one low and one high tone
DTMF_TONES = {"1": (697, 1209), "5": (770, 1336), "9": (852, 1477), "0": (941, 1336), "#": (941, 1477)}


def times(seconds: float) -> np.ndarray:
    return np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE


def digital_silence() -> np.ndarray:
    return np.zeros(30 * SAMPLE_RATE)


def low_noise() -> np.ndarray:
    """White noise at -60 dBFS: a quiet room's hiss."""
    return 0.001 * np.random.default_rng(RNG_SEED).standard_normal(20 * SAMPLE_RATE)


def pink_noise() -> np.ndarray:
    """1/f noise (white noise shaped in the frequency domain) at about -25 dBFS."""
    white = np.fft.rfft(np.random.default_rng(RNG_SEED).standard_normal(20 * SAMPLE_RATE))
    frequencies = np.fft.rfftfreq(20 * SAMPLE_RATE, 1 / SAMPLE_RATE)
    pink = np.fft.irfft(white / np.sqrt(np.maximum(frequencies, 1.0)))
    return 0.05 * pink / np.abs(pink).max()


def tones() -> np.ndarray:
    """Test tones: 440 Hz, 1 kHz and a slow sweep, 5 s each."""
    t = times(5)
    sweep = np.sin(2 * np.pi * (200 * t + 180 * t**2))
    return 0.3 * np.concatenate([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 1000 * t), sweep])


def dtmf() -> np.ndarray:
    """Keys pressed on a phone: 150 ms tones with 150 ms gaps, 12 s."""
    t = times(0.15)
    presses = []
    for key in "1590#" * 8:
        low, high = DTMF_TONES[key]
        presses += [0.2 * (np.sin(2 * np.pi * low * t) + np.sin(2 * np.pi * high * t)), np.zeros_like(t)]
    return np.concatenate(presses)


def chords() -> np.ndarray:
    """Music-like: major triads with harmonics and a decaying envelope, a new chord every second, 20 s."""
    t = times(1.0)
    envelope = np.exp(-3 * t)
    roots = (261.63, 349.23, 392.0, 220.0)
    bars = []
    for bar in range(20):
        root = roots[bar % len(roots)]
        chord = sum(
            np.sin(2 * np.pi * root * ratio * harmonic * t) / harmonic
            for ratio in (1.0, 1.26, 1.5)
            for harmonic in (1, 2, 3)
        )
        bars.append(0.1 * chord * envelope)
    return np.concatenate(bars)


def click_train() -> np.ndarray:
    """A click every 0.4 s and a cough-like noise burst every 3 s, 15 s."""
    rng = np.random.default_rng(RNG_SEED)
    audio = np.zeros(15 * SAMPLE_RATE)
    audio[:: int(0.4 * SAMPLE_RATE)] = 0.8
    burst = int(0.25 * SAMPLE_RATE)
    for start in range(SAMPLE_RATE, len(audio) - burst, 3 * SAMPLE_RATE):
        audio[start : start + burst] += 0.3 * rng.standard_normal(burst) * np.hanning(burst)
    return audio


NON_SPEECH: dict[str, Callable[[], np.ndarray]] = {
    "digital_silence": digital_silence,
    "low_noise": low_noise,
    "pink_noise": pink_noise,
    "tones": tones,
    "dtmf": dtmf,
    "chords": chords,
    "click_train": click_train,
}


def write_non_speech(folder: Path) -> dict[str, Path]:
    """Every kind of non-speech as a 16 kHz WAV file in `folder`."""
    return {name: write_wav(folder / f"{name}.wav", make().astype(np.float32)) for name, make in NON_SPEECH.items()}
