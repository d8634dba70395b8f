"""A live session's audio as it arrives: base64 frames in OpenAI's input formats, as float samples at 16 kHz.

PCM16 at 24 kHz and G.711 (u-law, A-law) at 8 kHz are decoded here and resampled by a streaming polyphase
filter that gives every output sample exactly the value resampling the whole stream at once would give.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from fractions import Fraction

import numpy as np

from app.contract import WAVEFORM_DTYPE
from app.web.realtime.protocol import ALAW, PCM16, ULAW, ProtocolError

# whisper.audio.SAMPLE_RATE and N_SAMPLES, the model's rate and its 30 s window (the longest utterance)
SAMPLE_RATE = 16_000
N_SAMPLES = 30 * SAMPLE_RATE
# the anti-aliasing filter (scipy's resample_poly design): a Kaiser-windowed sinc reaching this many samples
# of the faster rate on either side, times max(up, down)
FILTER_REACH = 10
KAISER_BETA = 5.0


def _pcm16(raw: bytes) -> np.ndarray:
    if len(raw) % 2:
        raise ProtocolError(
            "invalid_audio",
            f"audio/pcm is 16-bit samples, but the frame holds {len(raw)} bytes (an odd count)",
            "audio",
        )
    return np.frombuffer(raw, dtype="<i2").astype(WAVEFORM_DTYPE) / 32768


def _ulaw_table() -> np.ndarray:
    # ITU-T G.711 u-law expansion (the reference ulaw2linear)
    code = ~np.arange(256, dtype=np.uint8)
    magnitude = ((((code & 0x0F).astype(np.int32) << 3) + 0x84) << ((code >> 4) & 7).astype(np.int32)) - 0x84
    return (np.where(code & 0x80, -magnitude, magnitude) / 32768).astype(WAVEFORM_DTYPE)


def _alaw_table() -> np.ndarray:
    # ITU-T G.711 A-law expansion (the reference alaw2linear)
    code = np.arange(256, dtype=np.int32) ^ 0x55
    mantissa, segment = (code & 0x0F) << 4, (code >> 4) & 7
    magnitude = np.where(segment == 0, mantissa + 8, (mantissa + 0x108) << np.maximum(segment - 1, 0))
    return (np.where(code & 0x80, magnitude, -magnitude) / 32768).astype(WAVEFORM_DTYPE)


ULAW_TABLE = _ulaw_table()
ALAW_TABLE = _alaw_table()
DECODERS: dict[str, Callable[[bytes], np.ndarray]] = {
    PCM16: _pcm16,
    ULAW: lambda raw: ULAW_TABLE[np.frombuffer(raw, dtype=np.uint8)],
    ALAW: lambda raw: ALAW_TABLE[np.frombuffer(raw, dtype=np.uint8)],
}


def decode_frame(encoded: object, input_format: str) -> np.ndarray:
    """The samples of one `input_audio_buffer.append` frame; raises ProtocolError naming what is wrong."""
    if not isinstance(encoded, str):
        raise ProtocolError("invalid_audio", "audio must be a base64 string", "audio")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("invalid_audio", "audio is not valid base64", "audio") from None
    return DECODERS[input_format](raw)


def lowpass(up: int, down: int) -> np.ndarray:
    """The filter for resampling by up/down: cut at the lower Nyquist rate, unit gain at the output rate."""
    widest = max(up, down)
    reach = FILTER_REACH * widest
    taps = np.arange(-reach, reach + 1)
    kernel = np.sinc(taps / widest) * np.kaiser(2 * reach + 1, KAISER_BETA)
    return kernel / kernel.sum() * up


def resample(samples: np.ndarray, up: int, down: int, kernel: np.ndarray) -> np.ndarray:
    """`samples` resampled by up/down (zero outside them), as scipy.signal.resample_poly does."""
    stuffed = np.zeros(len(samples) * up, dtype=np.float64)
    stuffed[::up] = samples
    reach = len(kernel) // 2
    return np.convolve(stuffed, kernel)[reach : reach + len(stuffed) : down]


class Resampler:
    """Streaming resampling of one session's input to 16 kHz: each output sample once its filter has heard the
    input after it, so frames of any size give the same samples as the whole stream would (held back: ~1 ms)."""

    def __init__(self, input_rate: int) -> None:
        ratio = Fraction(SAMPLE_RATE, input_rate)
        self.up, self.down = ratio.numerator, ratio.denominator
        self.kernel = lowpass(self.up, self.down)
        reach = -(-FILTER_REACH * max(self.up, self.down) // self.up) + 1
        # input samples of history and of look-ahead around each converted block: whole blocks of `down`
        self.margin = -(-reach // self.down) * self.down
        self.history = np.zeros(self.margin, dtype=WAVEFORM_DTYPE)
        self.pending = np.zeros(0, dtype=WAVEFORM_DTYPE)

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Take input samples; return the 16 kHz samples now complete."""
        if self.up == self.down:
            return samples
        self.pending = np.concatenate([self.pending, samples])
        ready = (len(self.pending) - self.margin) // self.down * self.down
        if ready <= 0:
            return np.zeros(0, dtype=WAVEFORM_DTYPE)
        span = np.concatenate([self.history, self.pending[: ready + self.margin]])
        converted = resample(span, self.up, self.down, self.kernel)
        first = self.margin * self.up // self.down
        self.history = span[ready : ready + self.margin]
        self.pending = self.pending[ready:]
        return converted[first : first + ready * self.up // self.down].astype(WAVEFORM_DTYPE)
