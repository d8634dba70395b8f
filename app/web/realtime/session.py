"""One live session: its configuration, its audio since the last commit, its turns, and its utterances' requests.

Each utterance (speech between server VAD's start and stop, a client commit, or 30 s of either) is queued for
the model worker as a request of its own, ahead of uploads and job windows; its `completed` event is sent as
its transcript comes back, in the order the utterances were committed. While a long utterance is spoken, it
is also transcribed so far at an interval, and the words two such passes agree on are sent as deltas.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from app import metrics
from app.contract import WAVEFORM_DTYPE, ItemError, Transcript, TranscriptionOptions
from app.web.realtime import protocol
from app.web.realtime.audio import N_SAMPLES, SAMPLE_RATE, Resampler, decode_frame
from app.web.realtime.protocol import Event, ProtocolError, SessionConfig
from app.web.realtime.vad import SpeechStream, StreamingVad, Turn, TurnDetector

# what transcribes one utterance's 16 kHz samples: a request to the model worker
Transcribe = Callable[[np.ndarray, TranscriptionOptions], Awaitable[Transcript | ItemError]]
# OpenAI's smallest commit
MIN_COMMIT_SAMPLES = SAMPLE_RATE // 10


def milliseconds(position: int) -> int:
    return position * 1000 // SAMPLE_RATE


class AudioBuffer:
    """The session's 16 kHz audio from `start` to `end`, positions counted from the session's first sample."""

    def __init__(self) -> None:
        self.start = 0
        self.end = 0
        self.pieces: list[np.ndarray] = []

    def extend(self, samples: np.ndarray) -> None:
        if len(samples):
            self.pieces.append(samples)
            self.end += len(samples)

    def take(self, start: int, end: int) -> np.ndarray:
        everything = np.concatenate(self.pieces) if self.pieces else np.zeros(0, dtype=WAVEFORM_DTYPE)
        self.pieces = [everything] if len(everything) else []
        return everything[max(start - self.start, 0) : max(end - self.start, 0)]

    def forget_before(self, position: int) -> None:
        """Drop the audio before `position`: committed, cleared, or too old to pad the next utterance."""
        drop = min(position, self.end) - self.start
        while drop > 0 and self.pieces:
            first = self.pieces[0]
            if len(first) <= drop:
                self.pieces.pop(0)
            else:
                self.pieces[0] = first[drop:]
            removed = min(len(first), drop)
            self.start += removed
            drop -= removed


@dataclass
class Utterance:
    """Speech being spoken (server VAD) from `start`, its prefix padding included."""

    item_id: str
    start: int
    # where the next interim transcription is due (a stream position)
    next_interim: int
    interim: asyncio.Task[None] | None = None
    # the words of the latest interim transcript, and the text sent as deltas so far
    hypothesis: list[str] = field(default_factory=list)
    sent: str = ""


class LiveSession:
    """The protocol's state machine for one WebSocket; events go out through `send` (never blocking)."""

    def __init__(
        self,
        session_id: str,
        served_models: tuple[str, ...],
        transcribe: Transcribe,
        send: Callable[[Event], None],
        vad: StreamingVad,
        interim_seconds: float,
    ) -> None:
        self.session_id = session_id
        self.served_models = served_models
        self.transcribe = transcribe
        self.send = send
        self.vad = vad
        self.interim_samples = int(interim_seconds * SAMPLE_RATE)
        self.config = SessionConfig(model=served_models[0])
        self.audio = AudioBuffer()
        self.resampler = Resampler(self.config.input_rate)
        self._listen()
        self.utterance: Utterance | None = None
        self.previous_item_id: str | None = None
        # every request in flight, and the last final one: each utterance's events wait for the one before
        self.tasks: set[asyncio.Task[None]] = set()
        self.last_final: asyncio.Task[None] | None = None

    def _listen(self) -> None:
        vad = self.config.turn_detection
        self.detector = TurnDetector(vad) if vad else None
        self.stream = SpeechStream(position=self.audio.end)

    def created_event(self) -> Event:
        return protocol.event("session.created", session=protocol.ga_session(self.session_id, self.config))

    async def handle(self, message: Mapping[str, Any]) -> None:
        """One client event; a ProtocolError is answered with an `error` event and the session lives on."""
        kind = message.get("type")
        try:
            if kind == "input_audio_buffer.append":
                await self.append(message.get("audio"))
            elif kind == "input_audio_buffer.commit":
                self.commit()
            elif kind == "input_audio_buffer.clear":
                self.clear()
            elif kind == "session.update":
                self.configure(protocol.apply_ga_update(self.config, message.get("session"), self.served_models))
                self.send(protocol.event("session.updated", session=protocol.ga_session(self.session_id, self.config)))
            elif kind == "transcription_session.update":
                self.configure(protocol.apply_beta_update(self.config, message.get("session"), self.served_models))
                session = protocol.beta_session(self.session_id, self.config)
                self.send(protocol.event("transcription_session.updated", session=session))
            else:
                raise ProtocolError("unknown_event", f"this server does not handle {kind!r} events", "type")
        except ProtocolError as error:
            self.send(protocol.error_event(error, message.get("event_id")))

    def configure(self, config: SessionConfig) -> None:
        if config.input_format != self.config.input_format:
            self.resampler = Resampler(config.input_rate)
        if config.turn_detection != self.config.turn_detection:
            # speech under way stays in the buffer, for the next commit
            self._drop_utterance()
            self.config = config
            self._listen()
        self.config = config

    async def append(self, encoded: object) -> None:
        samples = self.resampler.push(decode_frame(encoded, self.config.input_format))
        self.audio.extend(samples)
        if self.detector is None:
            if self.audio.end - self.audio.start >= N_SAMPLES:
                # nobody committed 30 s: the model's window is full, so those 30 s are an utterance of their own
                self._finish(protocol.new_id("item"), self.audio.start, self.audio.start + N_SAMPLES, vad=None)
            return
        first, probabilities = await self.vad.hear(self.stream, samples)
        for turn in self.detector.feed(probabilities, first):
            self._turn(turn)
        utterance = self.utterance
        if utterance is None:
            # kept only as the next utterance's prefix padding
            self.audio.forget_before(self.audio.end - self._prefix_samples())
            return
        if self.audio.end - utterance.start >= N_SAMPLES:
            # speech past one window: cut it there, and carry on with the rest as a new utterance
            cut = utterance.start + N_SAMPLES
            self._stop(cut)
            self._start(cut, cut)
        elif self._interim_due(utterance):
            utterance.next_interim = self.audio.end + self.interim_samples
            so_far = self.audio.take(utterance.start, self.audio.end)
            utterance.interim = self._run(self._interim(utterance, so_far))

    def _interim_due(self, utterance: Utterance) -> bool:
        """One interim pass at a time, each after `interim_samples` more of the utterance was heard."""
        due = bool(self.interim_samples) and self.audio.end >= utterance.next_interim
        return due and (utterance.interim is None or utterance.interim.done())

    def _prefix_samples(self) -> int:
        vad = self.config.turn_detection
        return vad.prefix_padding_ms * SAMPLE_RATE // 1000 if vad else 0

    def _turn(self, turn: Turn) -> None:
        if turn.started and self.utterance is None:
            self._start(max(turn.position - self._prefix_samples(), self.audio.start), turn.position)
        elif not turn.started and self.utterance is not None:
            self._stop(turn.position)

    def _start(self, start: int, detected: int) -> None:
        self.utterance = Utterance(protocol.new_id("item"), start, detected + self.interim_samples)
        self.send(
            protocol.event(
                "input_audio_buffer.speech_started",
                item_id=self.utterance.item_id,
                audio_start_ms=milliseconds(start),
            )
        )

    def _stop(self, end: int) -> None:
        utterance = self._drop_utterance()
        if utterance is None:
            return
        self.send(
            protocol.event(
                "input_audio_buffer.speech_stopped", item_id=utterance.item_id, audio_end_ms=milliseconds(end)
            )
        )
        # server VAD found this speech: the worker need not look for it again
        self._finish(utterance.item_id, utterance.start, end, vad=False, sent=utterance.sent)

    def _drop_utterance(self) -> Utterance | None:
        utterance, self.utterance = self.utterance, None
        if utterance is not None and utterance.interim is not None:
            utterance.interim.cancel()
        return utterance

    def commit(self) -> None:
        utterance = self._drop_utterance()
        if self.detector is not None:
            self.detector = TurnDetector(self.detector.settings)
        start, end = self.audio.start, self.audio.end
        if end - start < MIN_COMMIT_SAMPLES:
            raise ProtocolError(
                "input_audio_buffer_commit_empty",
                "buffer too small: expected at least 100 ms of audio, "
                f"but the buffer holds {milliseconds(end - start)} ms",
            )
        item_id = utterance.item_id if utterance else protocol.new_id("item")
        self._finish(item_id, start, end, vad=None, sent=utterance.sent if utterance else "")

    def clear(self) -> None:
        self._drop_utterance()
        self.audio.forget_before(self.audio.end)
        if self.detector is not None:
            self.detector = TurnDetector(self.detector.settings)
        self.send(protocol.event("input_audio_buffer.cleared"))

    def _finish(self, item_id: str, start: int, end: int, vad: bool | None, sent: str = "") -> None:
        """Commit the audio from `start` to `end` as an utterance and queue its transcription."""
        samples = self.audio.take(start, end)
        self.audio.forget_before(end)
        self.send(
            protocol.event("input_audio_buffer.committed", item_id=item_id, previous_item_id=self.previous_item_id)
        )
        self.previous_item_id = item_id
        options = replace(self._options(), vad=vad)
        self.last_final = self._run(self._final(item_id, samples, options, sent, self.last_final))

    def _options(self) -> TranscriptionOptions:
        return TranscriptionOptions(language=self.config.language, prompt=self.config.prompt)

    def _run(self, work: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _final(
        self,
        item_id: str,
        samples: np.ndarray,
        options: TranscriptionOptions,
        sent: str,
        before: asyncio.Task[None] | None,
    ) -> None:
        stopped_at = time.monotonic()
        try:
            outcome = await self.transcribe(samples, options)
            if before is not None:
                await asyncio.wait([before])
        except asyncio.CancelledError:
            metrics.REALTIME_UTTERANCES.labels("abandoned").inc()
            raise
        if isinstance(outcome, ItemError):
            metrics.REALTIME_UTTERANCES.labels("failed").inc()
            self.send(protocol.failed_event(item_id, outcome.reason.value, outcome.message))
            return
        text = outcome.text.strip()
        if text.startswith(sent) and len(text) > len(sent):
            self.send(protocol.delta_event(item_id, text[len(sent) :]))
        self.send(protocol.completed_event(item_id, text, len(samples) / SAMPLE_RATE))
        metrics.REALTIME_UTTERANCES.labels("completed").inc()
        metrics.REALTIME_LATENCY.observe(time.monotonic() - stopped_at)

    async def _interim(self, utterance: Utterance, so_far: np.ndarray) -> None:
        """Transcribe the utterance so far; send as a delta the words this pass and the last agree on."""
        outcome = await self.transcribe(so_far, replace(self._options(), vad=False))
        if utterance is not self.utterance or not isinstance(outcome, Transcript):
            return
        words = outcome.text.split()
        agreed = []
        for previous, word in zip(utterance.hypothesis, words, strict=False):
            if previous != word:
                break
            agreed.append(word)
        utterance.hypothesis = words
        stable = " ".join(agreed)
        if len(stable) > len(utterance.sent) and stable.startswith(utterance.sent):
            self.send(protocol.delta_event(utterance.item_id, stable[len(utterance.sent) :]))
            utterance.sent = stable

    async def close(self) -> None:
        """The client is gone: every request in flight is cancelled (its waveform file deleted with it)."""
        self._drop_utterance()
        for task in list(self.tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self.tasks, return_exceptions=True)
