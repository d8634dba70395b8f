"""Server VAD for live sessions: Silero's network over every session's stream, and OpenAI's server_vad turn rules.

One `StreamingVad` per HTTP process hears the chunks of all its sessions together: chunks that arrive in the
same turn of the event loop go through the network in one batched call, each session with its own recurrent
state. A `TurnDetector` per session turns probabilities into speech starts and stops.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch

from app.contract import WAVEFORM_DTYPE
from app.silero import CHUNK_SAMPLES, CONTEXT_SAMPLES, STATE_WIDTH, SileroNetwork, silero_weights
from app.web.realtime.audio import SAMPLE_RATE
from app.web.realtime.protocol import ServerVad

# Silero's hysteresis: once speaking, a chunk counts as silence only below threshold - NEGATIVE_MARGIN
NEGATIVE_MARGIN = 0.15
LOWEST_NEGATIVE = 0.01


@dataclass
class SpeechStream:
    """One session's place in the network: the samples not yet a whole chunk, the last context, the LSTM state."""

    # the stream position (16 kHz samples) of the next whole chunk
    position: int = 0
    leftover: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=WAVEFORM_DTYPE))
    context: np.ndarray = field(default_factory=lambda: np.zeros(CONTEXT_SAMPLES, dtype=WAVEFORM_DTYPE))
    hidden: torch.Tensor = field(default_factory=lambda: torch.zeros(1, 1, STATE_WIDTH))
    cell: torch.Tensor = field(default_factory=lambda: torch.zeros(1, 1, STATE_WIDTH))

    def take_chunks(self, samples: np.ndarray) -> np.ndarray:
        """The whole chunks now available, each with the 64 samples before it: (chunks, 64 + 512)."""
        audio = np.concatenate([self.leftover, samples])
        count = len(audio) // CHUNK_SAMPLES
        self.leftover = audio[count * CHUNK_SAMPLES :]
        whole = np.concatenate([self.context, audio[: count * CHUNK_SAMPLES]])
        if count:
            self.context = whole[-CONTEXT_SAMPLES:]
        self.position += count * CHUNK_SAMPLES
        starts = np.arange(count) * CHUNK_SAMPLES
        return whole[starts[:, None] + np.arange(CONTEXT_SAMPLES + CHUNK_SAMPLES)]


_Pending = tuple[SpeechStream, np.ndarray, "asyncio.Future[np.ndarray]"]


class StreamingVad:
    """Speech probabilities for the streams of many sessions, one batched network call per loop turn."""

    def __init__(self) -> None:
        self.network: SileroNetwork | None = None
        self.pending: list[_Pending] = []

    async def hear(self, stream: SpeechStream, samples: np.ndarray) -> tuple[int, np.ndarray]:
        """The speech probability of each 32 ms chunk that `samples` completes (none for a short frame), and
        the stream position where the first of them starts."""
        first = stream.position
        chunks = stream.take_chunks(samples)
        if not len(chunks):
            return first, np.zeros(0, dtype=WAVEFORM_DTYPE)
        loop = asyncio.get_running_loop()
        heard: asyncio.Future[np.ndarray] = loop.create_future()
        if not self.pending:
            loop.call_soon(self._run)
        self.pending.append((stream, chunks, heard))
        return first, await heard

    def _run(self) -> None:
        pending, self.pending = self.pending, []
        if self.network is None:
            # an HTTP process runs nothing else on torch; with more threads than one, a few rows cost 100x more
            # on a busy host (2.4 ms against 95-380 ms for a 3-chunk row, measured on the 2-core CI machine)
            torch.set_num_threads(1)
            self.network = SileroNetwork(silero_weights()).eval()
        # streams with as many chunks go through the LSTM together (frames usually share one size)
        groups: dict[int, list[_Pending]] = defaultdict(list)
        for item in pending:
            groups[len(item[1])].append(item)
        for group in groups.values():
            try:
                probabilities = self._stream(group)
            except Exception as error:  # a failure answers the sessions that asked, not the whole loop
                for _, _, heard in group:
                    if not heard.done():
                        heard.set_exception(error)
                continue
            for (_, _, heard), row in zip(group, probabilities, strict=True):
                if not heard.done():  # its session may have gone while it waited
                    heard.set_result(row)

    @torch.inference_mode()
    def _stream(self, group: list[_Pending]) -> np.ndarray:
        assert self.network is not None
        chunks = torch.from_numpy(np.stack([item[1] for item in group]))
        state = (torch.cat([item[0].hidden for item in group], 1), torch.cat([item[0].cell for item in group], 1))
        probabilities, (hidden, cell) = self.network.stream(chunks, state)
        for row, (stream, _, _) in enumerate(group):
            stream.hidden, stream.cell = hidden[:, row : row + 1].clone(), cell[:, row : row + 1].clone()
        return probabilities.numpy()


@dataclass(frozen=True)
class Turn:
    """Speech began (`started`) or ended at `position`, a sample of the session's 16 kHz stream."""

    started: bool
    position: int


class TurnDetector:
    """OpenAI's server_vad on Silero's probabilities: speech from the first chunk over the threshold, until
    `silence_duration_ms` of chunks under it (with Silero's hysteresis)."""

    def __init__(self, settings: ServerVad) -> None:
        self.settings = settings
        self.threshold = settings.threshold
        self.negative = max(settings.threshold - NEGATIVE_MARGIN, LOWEST_NEGATIVE)
        self.silence_samples = settings.silence_duration_ms * SAMPLE_RATE // 1000
        self.speaking = False
        self.silent_since: int | None = None

    def feed(self, probabilities: np.ndarray, first_position: int) -> list[Turn]:
        """Turns within the chunks heard, the first of which starts at `first_position`."""
        turns = []
        for index, probability in enumerate(probabilities.tolist()):
            start = first_position + index * CHUNK_SAMPLES
            if probability >= self.threshold:
                self.silent_since = None
                if not self.speaking:
                    self.speaking = True
                    turns.append(Turn(True, start))
            elif self.speaking and probability < self.negative:
                self.silent_since = start if self.silent_since is None else self.silent_since
                if start + CHUNK_SAMPLES - self.silent_since >= self.silence_samples:
                    self.speaking = False
                    self.silent_since = None
                    turns.append(Turn(False, start + CHUNK_SAMPLES))
        return turns
