"""GET /v1/realtime?intent=transcription: the WebSocket of a live session, its limits, and its requests.

The API key is checked before this runs (app/web/security.py, as for every route). Sessions are capped
across HTTP processes (WHISPER_REALTIME_MAX_SESSIONS), close after WHISPER_REALTIME_IDLE_TIMEOUT seconds
without a client event, and take nothing with them: a session's requests are cancelled and their waveform
files deleted as it ends, however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect

from app import metrics
from app.config import Settings
from app.contract import LIVE_PRIORITY, ItemError, QueuedRequest, Reason, Reported, Transcript, TranscriptionOptions
from app.web.admission import Admission, Phase
from app.web.errors import RequestError
from app.web.realtime import protocol
from app.web.realtime.protocol import Event, ProtocolError
from app.web.realtime.session import LiveSession
from app.web.realtime.vad import StreamingVad
from app.web.uploads import RequestFiles

log = logging.getLogger(__name__)

REALTIME_PATH = "/v1/realtime"
# what browsers offer beside the key subprotocol; chosen back when offered, as OpenAI does
REALTIME_SUBPROTOCOL = "realtime"
# events waiting for a client that does not read them; past this the session is closed
MAX_OUTBOX = 1000
# seconds the last events (an error, say) get to leave before the socket closes
FLUSH_SECONDS = 5.0
# WebSocket close codes (RFC 6455): normal, policy violation, try again later
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_TRY_LATER = 1013

RunRequest = Callable[[QueuedRequest, float, Callable[[], None]], Awaitable[Reported | ItemError]]


class SessionSlots:
    """How many live sessions are open across the HTTP processes (shared memory, made before they fork)."""

    def __init__(self, max_sessions: int) -> None:
        self.max_sessions = max_sessions
        self._open = multiprocessing.Value("i", 0)

    def __getstate__(self) -> dict[str, object]:
        # spawned model workers receive a detached copy; they open no sessions
        return {"max_sessions": self.max_sessions, "_open": None}

    @contextmanager
    def hold(self) -> Iterator[bool]:
        """Yields whether a place was free; a taken place is given back when the block ends."""
        with self._open.get_lock():
            taken = self._open.value < self.max_sessions
            if taken:
                self._open.value += 1
        try:
            yield taken
        finally:
            if taken:
                with self._open.get_lock():
                    self._open.value -= 1


class UtteranceRequests:
    """Transcribes an utterance: its samples written to the tmpfs, queued ahead of uploads, the file always deleted."""

    def __init__(self, tmp_dir: Path, run: RunRequest, admission: Admission) -> None:
        self.tmp_dir = tmp_dir
        self.run = run
        self.admission = admission

    async def __call__(self, samples: np.ndarray, options: TranscriptionOptions) -> Transcript | ItemError:
        files = RequestFiles.create(self.tmp_dir)
        try:
            samples.tofile(files.waveform)
            queued = QueuedRequest(str(files.waveform), options, time.monotonic(), LIVE_PRIORITY)
            answer = await self.run(
                queued, queued.submitted_at, lambda: self.admission.refuse_unless_serving(waiting=True)
            )
        except RequestError as error:
            return error.error
        except OSError as error:
            log.error("live audio could not be stored: %s", error)
            return ItemError(Reason.STORAGE_FULL, "the server could not store the utterance")
        finally:
            files.remove()
        outcome = answer.outcome if isinstance(answer, Reported) else answer
        if isinstance(outcome, Transcript | ItemError):
            return outcome
        return ItemError(Reason.INFERENCE_FAILED, "the worker answered an utterance with something else")


class RealtimeRoute:
    """The WebSocket endpoint; one per HTTP process, each with its own batched VAD."""

    def __init__(
        self,
        settings: Settings,
        admission: Admission,
        slots: SessionSlots,
        served_models: tuple[str, ...],
        run: RunRequest,
    ) -> None:
        self.settings = settings
        self.admission = admission
        self.slots = slots
        self.served_models = served_models
        self.requests = UtteranceRequests(settings.tmp_dir, run, admission)
        self.vad = StreamingVad()

    def endpoint(self) -> Callable[[WebSocket], Awaitable[None]]:
        """The function FastAPI routes a WebSocket to (it reads the parameter's annotation, so not `self`)."""

        async def live_session(websocket: WebSocket) -> None:
            await self.run_session(websocket)

        return live_session

    async def run_session(self, websocket: WebSocket) -> None:
        offered = websocket.scope.get("subprotocols", [])
        subprotocol = REALTIME_SUBPROTOCOL if REALTIME_SUBPROTOCOL in offered else None
        intent = websocket.query_params.get("intent")
        if intent != "transcription":
            problem = ProtocolError(
                "unsupported_intent", "this server has transcription sessions only: connect with ?intent=transcription"
            )
            await refuse(websocket, subprotocol, problem, CLOSE_POLICY, "refused")
            return
        if self.admission.phase is not Phase.SERVING:
            problem = ProtocolError("server_unavailable", "the server is shutting down; reconnect to another instance")
            await refuse(websocket, subprotocol, problem, CLOSE_TRY_LATER, "refused")
            return
        with self.slots.hold() as taken:
            if not taken:
                problem = ProtocolError(
                    "session_limit_reached",
                    f"this server already holds {self.slots.max_sessions} live sessions; retry shortly",
                )
                await refuse(websocket, subprotocol, problem, CLOSE_TRY_LATER, "refused")
                return
            await websocket.accept(subprotocol=subprotocol)
            metrics.REALTIME_SESSIONS.inc()
            try:
                outcome = await self.serve(websocket)
            finally:
                metrics.REALTIME_SESSIONS.dec()
        metrics.REALTIME_SESSIONS_TOTAL.labels(outcome).inc()

    async def serve(self, websocket: WebSocket) -> str:
        """Run the session until the client leaves or idles; returns how it ended."""
        outbox: asyncio.Queue[Event | None] = asyncio.Queue()
        sender = asyncio.ensure_future(send_all(websocket, outbox))
        overflowed = False

        def send(event: Event) -> None:
            nonlocal overflowed
            overflowed = overflowed or outbox.qsize() >= MAX_OUTBOX
            if not overflowed:
                outbox.put_nowait(event)

        session = LiveSession(
            protocol.new_id("sess"),
            self.served_models,
            self.requests,
            send,
            self.vad,
            self.settings.realtime_interim_seconds,
        )
        send(session.created_event())
        outcome, close_code = "closed", CLOSE_NORMAL
        try:
            while not overflowed:
                try:
                    received = await asyncio.wait_for(websocket.receive(), self.settings.realtime_idle_timeout)
                except asyncio.TimeoutError:
                    if session.tasks:
                        continue  # still transcribing what the client sent: not idle
                    idle = f"no event for {self.settings.realtime_idle_timeout:g} s: the session is closed"
                    send(protocol.error_event(ProtocolError("idle_timeout", idle)))
                    outcome = "idle"
                    break
                if received["type"] == "websocket.disconnect":
                    break
                message = parse(received.get("text"))
                if isinstance(message, ProtocolError):
                    send(protocol.error_event(message))
                    continue
                await session.handle(message)
            if overflowed:
                # the client reads nothing: holding its events would grow without bound
                outcome, close_code = "error", CLOSE_POLICY
        except WebSocketDisconnect:
            outcome = "closed"
        finally:
            await session.close()
            outbox.put_nowait(None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sender, FLUSH_SECONDS)
            sender.cancel()
            with contextlib.suppress(Exception):
                await websocket.close(close_code)
        log.info("live session %s ended: %s", session.session_id, outcome)
        return outcome


def parse(text: str | None) -> dict[str, Any] | ProtocolError:
    if text is None:
        return ProtocolError("invalid_event", "events are JSON text frames, not binary ones")
    try:
        message = json.loads(text)
    except json.JSONDecodeError:
        return ProtocolError("invalid_json", "the event is not valid JSON")
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return ProtocolError("invalid_event", "an event is a JSON object with a string 'type'")
    return message


async def send_all(websocket: WebSocket, outbox: asyncio.Queue[Event | None]) -> None:
    """Send the session's events in order until the None that ends them (or the client is gone)."""
    while (event := await outbox.get()) is not None:
        await websocket.send_text(json.dumps(event))


async def refuse(
    websocket: WebSocket, subprotocol: str | None, problem: ProtocolError, code: int, outcome: str
) -> None:
    """Accept, say why in an `error` event (a browser sees no HTTP status), and close."""
    await websocket.accept(subprotocol=subprotocol)
    await websocket.send_text(json.dumps(protocol.error_event(problem)))
    await websocket.close(code, problem.message[:120])
    metrics.REALTIME_SESSIONS_TOTAL.labels(outcome).inc()
