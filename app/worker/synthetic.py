"""Whisper models of a real shape with random weights, for throughput work and capacity planning.

`WHISPER_MODEL=synthetic:medium` (or tiny, base, small, large-v3, turbo) serves a model with exactly
the layers, widths and vocabulary of that checkpoint, so every request costs what it would cost with
the real weights, but no download is needed. Each 30-second window decodes exactly
`WHISPER_SYNTHETIC_TOKENS` tokens (default 100): end-of-text is suppressed and the decode stops at that
length. With `WHISPER_SYNTHETIC_TOKENS_PER_SECOND` set, each window instead decodes as many tokens as
speech of that length carries at that rate (scripts/bench_clips.py measures the rate from its clips'
own text), so short windows end early as real ones do. Its transcripts are word salad: never use it
where recognition quality matters.
"""

from __future__ import annotations

import torch
from whisper.audio import SAMPLE_RATE
from whisper.model import ModelDimensions, Whisper
from whisper.tokenizer import get_tokenizer

from app.config import DEFAULT_TOKENS_PER_WINDOW, MAX_TOKENS_PER_WINDOW

SPEC_PREFIX = "synthetic:"
SEED = 0
# The decoder's positional embedding is drawn this wide so that greedy decoding of random weights
# walks through different tokens instead of repeating one: repeated tokens would fail the engine's
# compression-ratio check and re-decode every window at higher temperatures, six times the work.
POSITION_SPREAD = 16.0


def _dims(n_mels: int, n_vocab: int, audio: tuple[int, int, int], text: tuple[int, int, int]) -> ModelDimensions:
    """ModelDimensions from (width, heads, layers) of the encoder and of the decoder."""
    return ModelDimensions(
        n_mels=n_mels,
        n_audio_ctx=1500,
        n_audio_state=audio[0],
        n_audio_head=audio[1],
        n_audio_layer=audio[2],
        n_vocab=n_vocab,
        n_text_ctx=448,
        n_text_state=text[0],
        n_text_head=text[1],
        n_text_layer=text[2],
    )


# the dimensions stored in openai-whisper's published checkpoints
SHAPES: dict[str, ModelDimensions] = {
    "tiny": _dims(80, 51865, (384, 6, 4), (384, 6, 4)),
    "base": _dims(80, 51865, (512, 8, 6), (512, 8, 6)),
    "small": _dims(80, 51865, (768, 12, 12), (768, 12, 12)),
    "medium": _dims(80, 51865, (1024, 16, 24), (1024, 16, 24)),
    "large-v3": _dims(128, 51866, (1280, 20, 32), (1280, 20, 32)),
    "turbo": _dims(128, 51866, (1280, 20, 32), (1280, 20, 4)),
}


class SyntheticWhisper(Whisper):
    """A Whisper of a published shape with seeded random weights and a fixed decode length.

    >>> model = build_model("tiny", "cpu", tokens_per_window=20)
    >>> model.decoding_overrides()["sample_len"]
    20
    """

    def __init__(self, shape: str, tokens_per_window: int) -> None:
        super().__init__(SHAPES[shape])
        self.shape = shape
        self.tokens_per_window = tokens_per_window
        # 0: every window decodes tokens_per_window; above 0: tokens per second of the window's audio
        self.tokens_per_second = 0.0

    def decoding_overrides(self) -> dict[str, object]:
        """DecodingOptions fields that make every window decode exactly `tokens_per_window` tokens
        (or, by tokens_per_second, at most the longest window's: each window then ends at its own)."""
        eot = get_tokenizer(self.is_multilingual, num_languages=self.num_languages).eot
        length = MAX_TOKENS_PER_WINDOW if self.tokens_per_second else self.tokens_per_window
        # "-1" keeps whisper's usual suppression of non-speech symbols
        return {"sample_len": length, "suppress_tokens": f"-1,{eot}"}

    def window_tokens(self, samples: int) -> int | None:
        """Tokens a window of `samples` decodes at tokens_per_second; None in the fixed-count mode."""
        if not self.tokens_per_second:
            return None
        return max(1, min(MAX_TOKENS_PER_WINDOW, round(self.tokens_per_second * samples / SAMPLE_RATE)))


def is_synthetic_spec(spec: str) -> bool:
    return spec.startswith(SPEC_PREFIX)


def shape_of(spec: str) -> str:
    """The shape named by a `synthetic:<shape>` spec; ValueError names the known ones."""
    shape = spec.removeprefix(SPEC_PREFIX)
    if shape not in SHAPES:
        raise ValueError(f"unknown synthetic shape {shape!r}: expected one of {', '.join(SHAPES)}")
    return shape


def build_model(
    shape: str, device: str, tokens_per_window: int = DEFAULT_TOKENS_PER_WINDOW, seed: int = SEED
) -> SyntheticWhisper:
    """A synthetic model built directly on `device`; the same seed gives the same weights there."""
    target = torch.device(device)
    cuda_devices = []
    if target.type == "cuda":
        cuda_devices = [target.index if target.index is not None else torch.cuda.current_device()]
    # a private generator state: loading a model must not change the caller's random stream
    with torch.random.fork_rng(devices=cuda_devices), torch.no_grad():
        torch.manual_seed(seed)
        # initialising on the device avoids filling gigabytes of weights on the CPU first
        with target:
            model = SyntheticWhisper(shape, tokens_per_window)
        # whisper leaves this parameter uninitialised: checkpoints always provide it
        model.decoder.positional_embedding.normal_(0.0, POSITION_SPREAD)
    return model.eval()


def window_tokens(model: Whisper, samples: int) -> int | None:
    """The decode length of a window of `samples` for a synthetic model at a speech rate; else None."""
    return model.window_tokens(samples) if isinstance(model, SyntheticWhisper) else None


def decoding_overrides(model: Whisper) -> dict[str, object]:
    """What the engine adds to each DecodingOptions for `model`: nothing for real models."""
    return model.decoding_overrides() if isinstance(model, SyntheticWhisper) else {}


def token_budget(model: Whisper) -> SyntheticWhisper | None:
    """What the engine is given as its TokenBudget for `model`: the synthetic model itself, else None."""
    return model if isinstance(model, SyntheticWhisper) else None
