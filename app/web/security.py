"""WHISPER_API_KEY: every route but the open ones needs the key, as a bearer token or in X-API-Key.

Checked by an ASGI middleware before any route runs (so before a byte of an upload is read), compared
in constant time; the key is never logged, and a refusal never echoes what the client sent.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Collection

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.contract import ItemError, Reason

BEARER_PREFIX = "bearer "
REFUSAL = ItemError(
    Reason.UNAUTHORIZED,
    "this server needs an API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
)


def presented_keys(headers: Headers) -> list[str]:
    """The keys a request offers: a bearer token and an X-API-Key header, either or both."""
    keys = []
    authorization = headers.get("authorization", "")
    if authorization.lower().startswith(BEARER_PREFIX):
        keys.append(authorization[len(BEARER_PREFIX) :].strip())
    if "x-api-key" in headers:
        keys.append(headers["x-api-key"].strip())
    return keys


def key_matches(headers: Headers, key: bytes) -> bool:
    # compare_digest takes time independent of where the strings differ; both offers are always compared
    results = [hmac.compare_digest(offer.encode(), key) for offer in presented_keys(headers)]
    return any(results)


class ApiKeyMiddleware:
    """Refuses requests without the API key with 401, rendered in the shape of the route they were for."""

    def __init__(
        self,
        app: ASGIApp,
        key: str,
        open_paths: Collection[str],
        render_error: Callable[[str, ItemError], Response],
    ) -> None:
        self.app = app
        self.key = key.encode()
        self.open_paths = frozenset(open_paths)
        self.render_error = render_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths or key_matches(Headers(scope=scope), self.key):
            await self.app(scope, receive, send)
            return
        response = self.render_error(scope["path"], REFUSAL)
        response.headers["WWW-Authenticate"] = "Bearer"
        await response(scope, receive, send)
