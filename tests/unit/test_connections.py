"""Connection and header limits, and the upload pace, without a server: the arithmetic and the refusals."""

from __future__ import annotations

import asyncio
import json
import resource
from collections.abc import AsyncIterator

import pytest

from app.contract import Reason
from app.web.connections import (
    DESCRIPTORS_PER_CONNECTION,
    FIXED_DESCRIPTORS,
    HeaderLimits,
    connections_that_fit,
    raw_refusal,
)
from app.web.errors import RequestError
from app.web.uploads import UploadPace, paced


def test_connections_are_lowered_to_the_open_file_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _: (256, 4096))
    fit = (256 - FIXED_DESCRIPTORS - 3 * 2) // DESCRIPTORS_PER_CONNECTION
    assert connections_that_fit(1000, decode_concurrency=2) == fit
    assert connections_that_fit(10, decode_concurrency=2) == 10


def test_a_refusal_below_asgi_is_whole_http_in_our_shape() -> None:
    head, _, body = raw_refusal(431, Reason.HEADERS_TOO_LARGE, "too big").partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n") and b"connection: close" in head
    assert f"content-length: {len(body)}".encode() in head
    assert json.loads(body) == {"detail": "too big", "reason": "headers_too_large"}


def test_header_limits_count_and_measure() -> None:
    limits = HeaderLimits(app=None, max_headers=3, max_header_bytes=20, render_error=None)  # type: ignore[arg-type]
    assert limits.problem([(b"a", b"1")] * 3) is None
    assert "more than 3 headers" in (limits.problem([(b"a", b"1")] * 4) or "")
    assert "0.02 KB" in (limits.problem([(b"a", b"x" * 20)]) or "")


async def trickle(pieces: int, every: float) -> AsyncIterator[bytes]:
    for _ in range(pieces):
        await asyncio.sleep(every)
        yield b"x"


def test_a_body_slower_than_the_pace_is_refused_once_the_grace_is_over() -> None:
    async def receive() -> list[bytes]:
        return [chunk async for chunk in paced(trickle(100, 0.1), UploadPace(1000, grace=0.5), lambda: None)]

    with pytest.raises(RequestError) as refused:
        asyncio.run(receive())
    assert refused.value.error.reason is Reason.UPLOAD_TOO_SLOW and "needs at least 1 KB/s" in str(refused.value)


def test_a_body_is_asked_whether_it_is_still_wanted_while_nothing_arrives() -> None:
    def stopping() -> None:
        raise RequestError(Reason.UNAVAILABLE, "stopping")

    async def receive() -> list[bytes]:
        return [chunk async for chunk in paced(trickle(1, 60), UploadPace(0, grace=60), stopping)]

    with pytest.raises(RequestError) as refused:
        asyncio.run(asyncio.wait_for(receive(), 5))
    assert refused.value.error.reason is Reason.UNAVAILABLE
