"""What a connection may cost an HTTP process before any route runs: how many, how long, how much header.

uvicorn's h11 protocol (httptools has no header size limit) with a per-process connection cap, a deadline
for each request's headers, and refusals in our error shape that /metrics counts.
"""

from __future__ import annotations

import asyncio
import json
import resource
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

import h11
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from app import metrics
from app.contract import ItemError, Reason

# descriptors an HTTP process needs besides its connections: listening socket, queues, metric files, logs,
# and each ffmpeg's three pipes
FIXED_DESCRIPTORS = 64
DESCRIPTORS_PER_DECODE = 3
# a connection receiving an upload holds its socket and the upload's file
DESCRIPTORS_PER_CONNECTION = 2
# status codes of what is refused here (431: RFC 6585's Request Header Fields Too Large)
HEADERS_TOO_LARGE = 431
MALFORMED = 400
BUSY = 503


@dataclass(frozen=True)
class ConnectionLimits:
    """The per-process bounds a GuardedH11Protocol enforces."""

    max_connections: int
    header_timeout: float  # seconds from connecting, or from the previous answer, to complete request headers
    max_header_bytes: int


def connections_that_fit(wanted: int, decode_concurrency: int) -> int:
    """`wanted`, lowered so that every connection and decode of one process fits its open-file limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    spare = soft - FIXED_DESCRIPTORS - DESCRIPTORS_PER_DECODE * decode_concurrency
    return max(1, min(wanted, spare // DESCRIPTORS_PER_CONNECTION))


def raw_refusal(status: int, reason: Reason, message: str) -> bytes:
    """A whole HTTP/1.1 answer in the native error shape, for refusals made below ASGI; it closes the connection."""
    body = json.dumps({"detail": message, "reason": reason.value}).encode()
    head = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
    return head.encode() + f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body


def guarded_protocol(limits: ConnectionLimits) -> type[H11Protocol]:
    """The protocol class to give uvicorn (`http=`), bound to `limits`."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits})


class GuardedH11Protocol(H11Protocol):
    """One connection. Past the cap, the oldest connection still waiting for its request headers makes room.

    Header bytes are capped by h11's incomplete-event limit (set from `limits` in the uvicorn config), so a
    header bomb is refused after that many bytes, not after it was all read.
    """

    limits: ConnectionLimits

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.waiting_since = self.loop.time()
        self._arm_header_deadline()
        if len(self.connections) <= self.limits.max_connections:
            return
        idle = [c for c in self.connections if isinstance(c, GuardedH11Protocol) and c is not self and c.waiting]
        if idle:
            min(idle, key=lambda connection: connection.waiting_since).drop("evicted_waiting_for_headers")
            return
        self.refuse(BUSY, Reason.OVERLOADED, "this server holds as many connections as it may; retry shortly")
        metrics.CONNECTIONS_REFUSED.labels("over_connection_limit").inc()

    @property
    def waiting(self) -> bool:
        """No request is under way: the connection is new, or idle after an answer (never once it is a WebSocket)."""
        if getattr(self, "upgraded", False):
            return False
        return not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete)

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        # the transport now belongs to a WebSocket (/v1/realtime): no header deadline may close it
        self.upgraded = True
        super().handle_websocket_upgrade(event)

    def _arm_header_deadline(self) -> None:
        self.loop.call_later(self.limits.header_timeout, self._headers_due, self.cycle)

    def _headers_due(self, cycle_when_armed: object) -> None:
        # the same cycle, done, means no request's headers were completed since the deadline was armed (a pipelined
        # request may have begun as the deadline was armed: it is under way, not waiting)
        if self.cycle is cycle_when_armed and self.waiting:
            self.drop("header_timeout")

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.waiting_since = self.loop.time()
        self._arm_header_deadline()

    def drop(self, reason: str) -> None:
        metrics.CONNECTIONS_REFUSED.labels(reason).inc()
        # out of the count now: connection_lost, which also removes it, runs only on the next loop turn
        self.connections.discard(self)
        self.transport.close()

    def refuse(self, status: int, reason: Reason, message: str) -> None:
        metrics.ERRORS.labels(reason.value).inc()
        self.connections.discard(self)
        self.transport.write(raw_refusal(status, reason, message))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        # h11 refused the bytes: a request line and headers past the limit, or not HTTP at all
        buffered, _ = self.conn.trailing_data
        if len(buffered) > self.limits.max_header_bytes:
            metrics.CONNECTIONS_REFUSED.labels("headers_too_large").inc()
            limit = f"{self.limits.max_header_bytes / 1000:g} KB"
            self.refuse(HEADERS_TOO_LARGE, Reason.HEADERS_TOO_LARGE, f"the request headers pass the {limit} limit")
            return
        metrics.CONNECTIONS_REFUSED.labels("malformed_request").inc()
        self.refuse(MALFORMED, Reason.BAD_REQUEST, "the request is not valid HTTP/1.1")


class HeaderLimits:
    """ASGI middleware, outermost but for the log: too many or too large headers get 431 before anything reads them.

    h11 refuses a header block past the size limit while it is still arriving; one that arrives whole in a single
    read (up to 256 KB) is complete before h11 measures it, so its size is checked here.
    """

    def __init__(
        self, app: ASGIApp, max_headers: int, max_header_bytes: int, render_error: Callable[[str, ItemError], Response]
    ) -> None:
        self.app = app
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes
        self.render_error = render_error

    def problem(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        if len(headers) > self.max_headers:
            return f"the request has more than {self.max_headers} headers"
        if sum(len(name) + len(value) for name, value in headers) > self.max_header_bytes:
            return f"the request headers pass the {self.max_header_bytes / 1000:g} KB limit"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        problem = self.problem(scope["headers"]) if scope["type"] == "http" else None
        if problem is None:
            await self.app(scope, receive, send)
            return
        metrics.CONNECTIONS_REFUSED.labels("headers_too_large").inc()
        metrics.ERRORS.labels(Reason.HEADERS_TOO_LARGE.value).inc()
        response = self.render_error(scope["path"], ItemError(Reason.HEADERS_TOO_LARGE, problem))
        response.headers["Connection"] = "close"
        await response(scope, receive, send)
