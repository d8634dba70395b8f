"""Voice activity detection with Silero VAD, batched: speech spans of many waveforms at once, packed into windows.

Silero's network (weights from the `silero-vad` package) runs over every 32 ms chunk of every waveform in one
pass on the worker's device, its recurrent part as one nn.LSTM; silence never reaches whisper.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional
from whisper.audio import N_SAMPLES, SAMPLE_RATE

from app.contract import TranscriptionOptions, VadParameters
from app.worker.engine import AudioItem
from app.worker.packing import pack_spans
from app.worker.windows import Window, split_waveform

# Silero's 16 kHz network hears 512 new samples per step, with the 64 before them as context
CHUNK_SAMPLES = 512
CONTEXT_SAMPLES = 64
# waveforms are cut into rows this long, decoded side by side; each row first hears WARM_UP_CHUNKS of the
# audio before it, so its recurrent state is settled where its own probabilities begin
ROW_CHUNKS = 1024
WARM_UP_CHUNKS = 64
# rows run through the network at once: a row's activations are some MB, so memory stays bounded
ROWS_PER_PASS = 16


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
        self.rnn = nn.LSTM(128, 128, batch_first=True)
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
        """Speech probability of each 512-sample chunk: (rows, samples) -> (rows, samples // 512)."""
        rows = audio.shape[0]
        with_context = functional.pad(audio, (CONTEXT_SAMPLES, 0))
        chunks = with_context.unfold(1, CHUNK_SAMPLES + CONTEXT_SAMPLES, CHUNK_SAMPLES)
        steps = chunks.shape[1]
        x = functional.pad(chunks.reshape(rows * steps, 1, -1), (0, CONTEXT_SAMPLES), mode="reflect")
        x = functional.conv1d(x, self.stft_basis, stride=CHUNK_SAMPLES // 4)
        half = x.shape[1] // 2
        x = torch.sqrt(x[:, :half] ** 2 + x[:, half:] ** 2)
        for conv in self.encoder:
            x = torch.relu(conv(x))
        hidden, _ = self.rnn(x.reshape(rows, steps, -1))
        return torch.sigmoid(self.head(torch.relu(hidden).transpose(1, 2)))[:, 0, :]


def row_starts(samples: int) -> list[int]:
    return list(range(0, max(samples, 1), ROW_CHUNKS * CHUNK_SAMPLES))


class SpeechDetector:
    """Speech probabilities for many waveforms in one batched pass on `device`."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.network = SileroNetwork(silero_weights()).to(self.device).eval()

    @torch.inference_mode()
    def probabilities(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One probability per 512-sample chunk of each waveform (the last chunk zero-padded)."""
        warm = WARM_UP_CHUNKS * CHUNK_SAMPLES
        row = ROW_CHUNKS * CHUNK_SAMPLES
        places = [(index, start) for index, w in enumerate(waveforms) for start in row_starts(len(w))]
        if not places:
            return []
        # short waveforms need no full row: the LSTM's steps are the pass's cost
        longest = max(len(w) for w in waveforms)
        width = warm + row if longest > row else -(-longest // CHUNK_SAMPLES) * CHUNK_SAMPLES
        batch = torch.zeros(len(places), max(width, CHUNK_SAMPLES), device=self.device)
        for position, (index, start) in enumerate(places):
            # a row hears the warm-up audio before its own; the first row of a waveform starts from silence
            # state, as Silero does at a file's start, so its own audio comes first
            piece = waveforms[index][max(start - warm, 0) : start + row][: batch.shape[1]]
            batch[position, : len(piece)] = torch.from_numpy(np.ascontiguousarray(piece))
        # rows in groups, so memory stays bounded however long the audio (3 h is 330 rows)
        speech = np.concatenate(
            [
                self.network(batch[first : first + ROWS_PER_PASS]).float().cpu().numpy()
                for first in range(0, len(batch), ROWS_PER_PASS)
            ]
        )
        probabilities: list[list[np.ndarray]] = [[] for _ in waveforms]
        for position, (index, start) in enumerate(places):
            skip = WARM_UP_CHUNKS if start else 0
            probabilities[index].append(speech[position, skip : skip + ROW_CHUNKS])
        return [
            np.concatenate(rows)[: -(-len(w) // CHUNK_SAMPLES)]
            for rows, w in zip(probabilities, waveforms, strict=True)
        ]


def speech_spans(probabilities: np.ndarray, samples: int, parameters: VadParameters) -> list[tuple[int, int]]:
    """Silero's own hysteresis (get_speech_timestamps_from_probs): spans of speech, padded, each under 30 s."""
    threads = torch.get_num_threads()
    # imported here: importing the silero_vad package sets torch's thread count to 1, which we undo
    from silero_vad import get_speech_timestamps_from_probs

    torch.set_num_threads(threads)
    pad = parameters.speech_pad_ms / 1000
    found = get_speech_timestamps_from_probs(
        probabilities.tolist(),
        sampling_rate=SAMPLE_RATE,
        threshold=parameters.threshold,
        min_speech_duration_ms=parameters.min_speech_ms,
        # Silero cuts longer speech at its longest pause; padded, a span then fits one whisper window
        max_speech_duration_s=N_SAMPLES / SAMPLE_RATE - 2 * pad,
        min_silence_duration_ms=parameters.min_silence_ms,
        speech_pad_ms=parameters.speech_pad_ms,
        audio_length_samples=samples,
    )
    return [(span["start"], min(span["end"], samples)) for span in found if span["end"] > span["start"]]


class VadSplitter:
    """The engine's window splitter: speech windows for requests with VAD on, plain 30 s windows for the rest.

    >>> Transcriber(model, splitter=VadSplitter(model.device, enabled=True))
    """

    def __init__(self, device: torch.device | str = "cpu", enabled: bool = True) -> None:
        self.detector = SpeechDetector(device)
        # the service's default (WHISPER_VAD); a request's own `vad` option overrides it
        self.enabled = enabled

    def listens(self, options: object) -> bool:
        if not isinstance(options, TranscriptionOptions):
            return False
        return self.enabled if options.vad is None else options.vad

    def __call__(self, jobs: Sequence[AudioItem]) -> list[Window]:
        listening = [index for index, job in enumerate(jobs) if self.listens(job.options)]
        heard = self.detector.probabilities([jobs[index].waveform for index in listening])
        probabilities = dict(zip(listening, heard, strict=True))
        windows: list[Window] = []
        for index, job in enumerate(jobs):
            if index not in probabilities:
                windows += split_waveform(job.waveform, index)
                continue
            options = job.options
            parameters = options.vad_parameters if isinstance(options, TranscriptionOptions) else None
            spans = speech_spans(probabilities[index], len(job.waveform), parameters or VadParameters())
            windows += pack_spans(spans, index)
        return windows
