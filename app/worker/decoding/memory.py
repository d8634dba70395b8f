"""GPU memory sizing: how many windows (slots) this worker's share of the GPU holds."""

from __future__ import annotations

import logging

import torch
from whisper.model import Whisper

log = logging.getLogger(__name__)

# share of the GPU memory free after loading the model that one worker's windows may take
MEMORY_FRACTION = 0.9
# windows the engine encodes at once: the encoder runs as fast per window at 16 as at 256 (benchmarks/README.md
# "Figures behind the engine's constants"), and its activations, unlike the decoder's caches, need not
# grow with the pass
ENCODER_WINDOWS = 32
# encoder activations of one window, in units of one (n_audio_ctx, n_audio_state) float16 tensor:
# the 4x MLP hidden layer, float32 LayerNorm copies, residuals
ENCODER_ACTIVATION_COPIES = 24
# encoder features a pass holds per window: the engine's, their concatenation, the decoder's input
FEATURE_COPIES = 3
# the captured graphs' private memory pool, in the same units: the prefill's temporaries stay in it
# (7 units a window as measured: benchmarks/README.md "Figures behind the engine's constants")
GRAPH_POOL_COPIES = 8


def bytes_per_window(model: Whisper) -> int:
    """GPU memory one window of capacity needs: static caches, encoder features, graph pool."""
    dims = model.dims
    half = 2
    cross_cache = 2 * dims.n_text_layer * dims.n_audio_ctx * dims.n_text_state * half
    self_cache = 2 * dims.n_text_layer * dims.n_text_ctx * dims.n_text_state * half
    features = (FEATURE_COPIES + GRAPH_POOL_COPIES) * dims.n_audio_ctx * dims.n_audio_state * half
    return cross_cache + self_cache + features


def encoder_workspace(model: Whisper) -> int:
    """GPU memory of the encoder's activations for ENCODER_WINDOWS windows, whatever the pass's size."""
    dims = model.dims
    return ENCODER_ACTIVATION_COPIES * ENCODER_WINDOWS * dims.n_audio_ctx * dims.n_audio_state * 2


def windows_that_fit(model: Whisper, requested: int, gpu_share: float = 1.0, unit: str = "windows per pass") -> int:
    """`requested`, or fewer windows per pass where this worker's part of the GPU's memory holds fewer.

    `gpu_share` is the part of the GPU this worker may take: with two workers on one GPU each sizes
    itself to half of the card, not to the memory it found free (both start at once and see it all).
    """
    free, total = torch.cuda.mem_get_info(model.device)
    available = min(free, int(total * gpu_share))
    usable = int(available * MEMORY_FRACTION) - encoder_workspace(model)
    fit = max(1, usable // bytes_per_window(model))
    if fit < requested:
        log.warning("%d %s fit in free GPU memory; %d were asked for", fit, unit, requested)
    return min(requested, fit)


def slots_that_fit(model: Whisper, requested: int, gpu_share: float = 1.0) -> int:
    """`requested`, or fewer slots where this worker's part of the GPU's memory holds fewer (a slot
    holds what a window of a static pass holds)."""
    return windows_that_fit(model, requested, gpu_share, unit="decoding slots")
