"""WHISPER_API_KEY: every route but the open ones needs the key, as a bearer token or in X-API-Key.

A WebSocket handshake may instead offer it as the subprotocol `openai-insecure-api-key.<key>`, as browsers do.

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
# how a browser's WebSocket, which cannot set headers, offers the key (OpenAI's realtime convention)
KEY_SUBPROTOCOL_PREFIX = "openai-insecure-api-key."
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


def subprotocol_keys(scope: Scope) -> list[str]:
    """The keys a WebSocket handshake offers as subprotocols: `openai-insecure-api-key.<key>`."""
    offered = scope.get("subprotocols", []) if scope["type"] == "websocket" else []
    return [name[len(KEY_SUBPROTOCOL_PREFIX) :] for name in offered if name.startswith(KEY_SUBPROTOCOL_PREFIX)]


def key_matches(scope: Scope, key: bytes) -> bool:
    # compare_digest takes time independent of where the strings differ; every offer is always compared
    offers = presented_keys(Headers(scope=scope)) + subprotocol_keys(scope)
    results = [hmac.compare_digest(offer.encode(), key) for offer in offers]
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
        guarded = scope["type"] in ("http", "websocket") and scope["path"] not in self.open_paths
        if not guarded or key_matches(scope, self.key):
            await self.app(scope, receive, send)
            return
        response = self.render_error(scope["path"], REFUSAL)
        response.headers["WWW-Authenticate"] = "Bearer"
        if scope["type"] == "websocket" and "websocket.http.response" not in scope.get("extensions", {}):
            # a server without denial responses can only refuse the handshake (clients see a 403)
            await send({"type": "websocket.close", "code": 1008})
            return
        # a WebSocket handshake is answered with this 401 instead of the upgrade (ASGI's denial response)
        await response(scope, receive, send)
