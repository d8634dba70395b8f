"""Silero VAD's 16 kHz network, shared by the worker (whole waveforms, batched) and live sessions (streamed).

The weights are the `silero-vad` package's own; the network is rebuilt as plain torch modules so that many
waveforms, or many live sessions each with its own recurrent state, run through it in one batched call.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional

# the 16 kHz network hears 512 new samples per step, with the 64 before them as context
CHUNK_SAMPLES = 512
CONTEXT_SAMPLES = 64
# the LSTM's width: a stream's recurrent state is two vectors of it (hidden and cell)
STATE_WIDTH = 128


def silero_weights() -> dict[str, Tensor]:
    """The 16 kHz network's weights from the TorchScript file the silero-vad package ships.

    The file is read without importing the package, whose import sets torch's thread count to 1.
    """
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or spec.origin is None:
        raise RuntimeError("the silero-vad package is not installed (pip install silero-vad)")
    path = Path(spec.origin).parent / "data" / "silero_vad.jit"
    scripted = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    prefix = "_model."
    return {k[len(prefix) :]: v for k, v in scripted.state_dict().items() if k.startswith(prefix)}


class SileroNetwork(nn.Module):
    """Silero VAD v5/v6 (16 kHz): STFT, four convolutions, an LSTM and a sigmoid head, over chunk sequences."""

    stft_basis: Tensor

    def __init__(self, weights: dict[str, Tensor]) -> None:
        super().__init__()
        self.register_buffer("stft_basis", weights["stft.forward_basis_buffer"])
        self.encoder = nn.ModuleList(
            nn.Conv1d(inputs, outputs, kernel_size=3, stride=stride, padding=1)
            for inputs, outputs, stride in ((129, 128, 1), (128, 64, 2), (64, 64, 2), (64, 128, 1))
        )
        self.rnn = nn.LSTM(128, STATE_WIDTH, batch_first=True)
        self.head = nn.Conv1d(128, 1, kernel_size=1)
        # Silero's names -> ours: the same tensors, one LSTM layer where Silero steps an LSTMCell
        renamed = {"stft_basis": weights["stft.forward_basis_buffer"]}
        for index in range(len(self.encoder)):
            for kind in ("weight", "bias"):
                renamed[f"encoder.{index}.{kind}"] = weights[f"encoder.{index}.reparam_conv.{kind}"]
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            renamed[f"rnn.{name}_l0"] = weights[f"decoder.rnn.{name}"]
        renamed["head.weight"] = weights["decoder.decoder.2.weight"]
        renamed["head.bias"] = weights["decoder.decoder.2.bias"]
        self.load_state_dict(renamed, strict=True)

    def forward(self, audio: Tensor) -> Tensor:
        """Speech probability of each 512-sample chunk: (rows, samples) -> (rows, samples // 512).

        Each row starts from silence: zero context, zero recurrent state, as Silero does at a file's start."""
        with_context = functional.pad(audio, (CONTEXT_SAMPLES, 0))
        chunks = with_context.unfold(1, CHUNK_SAMPLES + CONTEXT_SAMPLES, CHUNK_SAMPLES)
        hidden, _ = self.rnn(self.chunk_features(chunks))
        return self.speech(hidden)

    def stream(self, chunks: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Probabilities of the next chunks of many streams, each carrying on from its own recurrent state.

        `chunks` is (rows, steps, 64 + 512): each chunk with the 64 samples before it; `state` is the LSTM's
        (hidden, cell), each (1, rows, 128), zeros for a new stream. Returns (rows, steps) and the new state.
        """
        hidden, state = self.rnn(self.chunk_features(chunks), state)
        return self.speech(hidden), state

    def chunk_features(self, chunks: Tensor) -> Tensor:
        """(rows, steps, 64 + 512) chunks with context -> (rows, steps, 128) LSTM inputs; no state involved."""
        rows, steps = chunks.shape[:2]
        x = functional.pad(chunks.reshape(rows * steps, 1, -1), (0, CONTEXT_SAMPLES), mode="reflect")
        x = functional.conv1d(x, self.stft_basis, stride=CHUNK_SAMPLES // 4)
        half = x.shape[1] // 2
        x = torch.sqrt(x[:, :half] ** 2 + x[:, half:] ** 2)
        for conv in self.encoder:
            x = torch.relu(conv(x))
        return x.reshape(rows, steps, -1)

    def speech(self, hidden: Tensor) -> Tensor:
        return torch.sigmoid(self.head(torch.relu(hidden).transpose(1, 2)))[:, 0, :]
