"""One JSON log line per request, and the request id that ties it to the client's response header.

An ASGI middleware opens a `RequestRecord` for each request; the upload lifecycle fills in what it learns
(audio seconds, decode, queue and inference times, batch size) and the middleware writes it at the end.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from dataclasses import asdict, dataclass

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.contract import WorkerTiming

REQUEST_ID_HEADER = "X-Request-ID"
# a client's own id is kept when it is this tame; anything else is replaced, so logs stay parseable
CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# polled every few seconds by orchestrators and Prometheus: a line each would drown the requests
QUIET_PATHS = frozenset({"/health", "/metrics"})
STATE_KEY = "request_record"

log = logging.getLogger("app.requests")


@dataclass
class RequestRecord:
    """The fields of one log line; None where a request never got that far."""

    id: str
    method: str
    route: str
    status: int = 500  # what the client gets when the app raised before answering
    reason: str | None = None
    upload_bytes: int | None = None
    audio_seconds: float | None = None
    decode_ms: float | None = None
    queue_ms: float | None = None
    inference_ms: float | None = None
    batch_size: int | None = None
    total_ms: float | None = None

    def add_timing(self, timing: WorkerTiming, submitted_at: float) -> None:
        self.queue_ms = round((timing.started_at - submitted_at) * 1000, 1)
        self.inference_ms = round(timing.inference_seconds * 1000, 1)
        self.batch_size = timing.batch_size


def record_of(request: Request) -> RequestRecord:
    """The record RequestLogMiddleware opened for `request`."""
    return getattr(request.state, STATE_KEY)


def configure(level: str) -> None:
    """Request lines go to stdout as bare JSON, whatever format the other logs use."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers = [handler]
    log.setLevel(level.upper())
    log.propagate = False


class RequestLogMiddleware:
    """Gives every request an id (the client's X-Request-ID when tame), returns it, and logs the request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        offered = Request(scope).headers.get(REQUEST_ID_HEADER, "")
        record = RequestRecord(
            id=offered if CLIENT_ID.fullmatch(offered) else uuid.uuid4().hex,
            method=scope["method"],
            route=scope["path"],
        )
        scope.setdefault("state", {})[STATE_KEY] = record

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, record.id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            record.total_ms = round((time.monotonic() - started) * 1000, 1)
            if record.route not in QUIET_PATHS:
                log.info(json.dumps(asdict(record)))
