"""Voice activity detection with Silero VAD, batched: speech spans of many waveforms at once, packed into windows.

Silero's network (app/silero.py) runs over every 32 ms chunk of every waveform in one pass on the worker's
device, its recurrent part as one nn.LSTM; silence never reaches whisper.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from whisper.audio import N_SAMPLES, SAMPLE_RATE

from app.contract import TranscriptionOptions, VadParameters
from app.silero import CHUNK_SAMPLES, SileroNetwork, silero_weights
from app.worker.engine import AudioItem
from app.worker.packing import pack_spans
from app.worker.windows import Window, split_waveform

# waveforms are cut into rows this long, decoded side by side; each row first hears WARM_UP_CHUNKS of the
# audio before it, so its recurrent state is settled where its own probabilities begin
ROW_CHUNKS = 1024
WARM_UP_CHUNKS = 64
# rows run through the network at once: a row's activations are some MB, so memory stays bounded
ROWS_PER_PASS = 16


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
