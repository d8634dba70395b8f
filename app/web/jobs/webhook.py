"""Webhook calls when a job ends: the URL parsed and its addresses checked once per call, the checked address
connected to, the body signed, each attempt bounded in time, failed deliveries retried.

The receiver verifies `X-Whisper-Signature: sha256=<hex>`, the HMAC-SHA256 of "<X-Whisper-Timestamp>.<body>"
keyed with WHISPER_WEBHOOK_SECRET; the timestamp inside the signature lets it refuse replays.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import ssl
import string
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

from app import metrics
from app.contract import Reason
from app.web.errors import RequestError
from app.web.jobs.threads import Threads

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Whisper-Signature"
TIMESTAMP_HEADER = "X-Whisper-Timestamp"
DEFAULT_PORTS = {"http": 80, "https": 443}
# a URL is refused unless every character is one of these: no spaces, controls, backslashes or non-ASCII, which
# parsers (and the HTTP clients built on them) split differently
URL_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-._~:/?#[]@!$&'()*+,;=%")
# the most of a receiver's answer read while looking for its status line
MAX_ANSWER_BYTES = 64 * 1024

# address ranges that carry an IPv4 address inside an IPv6 one (mapped, translated, compatible, NAT64, 6to4,
# Teredo): a route to any of them may end at the host or the operator's network, so none is a webhook target
EMBEDDING_IPV4 = tuple(
    ipaddress.IPv6Network(network)
    for network in (
        *("::ffff:0:0/96", "::ffff:0:0:0/96", "::/96"),
        *("64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "2001::/32"),
    )
)

# name resolution for delivery attempts: its own threads, so a slow resolver never delays the checks made at
# submission (app/web/jobs/threads.py: WEBHOOK_THREADS), nor those checks a delivery
RESOLVER_THREADS = Threads("webhook-resolve", 4)


def bad_webhook(message: str) -> RequestError:
    return RequestError(Reason.BAD_OPTION, message, param="webhook_url")


@dataclass(frozen=True)
class WebhookTarget:
    """A webhook URL, parsed once: what is resolved, connected to, and written on the request line."""

    scheme: str
    # a name, or an IP literal without its brackets
    host: str
    port: int
    # path and query, as sent on the request line
    target: str

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def parse_webhook_url(url: str) -> WebhookTarget:
    """The one parse of a webhook URL; refuses what parsers disagree on (userinfo, backslashes, odd characters)."""
    refusal = bad_webhook("webhook_url must be an http:// or https:// URL with a host")
    if not url or not set(url) <= URL_CHARACTERS:
        raise bad_webhook("webhook_url may hold only printable ASCII, without spaces or backslashes")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise refusal from None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise refusal
    if "@" in parts.netloc:
        raise bad_webhook("webhook_url may not carry a user name or password; the signature authenticates calls")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return WebhookTarget(parts.scheme, parts.hostname, port or DEFAULT_PORTS[parts.scheme], target)


def forbidden_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Addresses of the operator's own network and of the host itself, where a webhook must not reach:
    loopback, private, link-local, unspecified, multicast, reserved, and every IPv6 form that embeds IPv4."""
    if isinstance(address, ipaddress.IPv6Address) and any(address in network for network in EMBEDDING_IPV4):
        return True
    return not address.is_global or address.is_multicast or address.is_reserved or address.is_unspecified


def resolve(target: WebhookTarget, allow_private: bool) -> list[str]:
    """The addresses to connect to, in the resolver's order, once every one of them passed the check.

    Every address counts: a name resolving to one public and one private address could reach either.
    """
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as error:
        raise bad_webhook(f"webhook_url's host does not resolve: {error}") from None
    addresses = [str(info[4][0]) for info in infos]
    if not allow_private:
        for text in addresses:
            address = ipaddress.ip_address(text.split("%")[0])
            if forbidden_address(address):
                raise bad_webhook(
                    f"webhook_url resolves to {address}, a private, loopback or otherwise non-public address; "
                    "the operator can allow those with WHISPER_WEBHOOK_ALLOW_PRIVATE"
                )
    return list(dict.fromkeys(addresses))


def check_webhook_url(url: str, allow_private: bool) -> None:
    """Raise 400 unless `url` parses as an http(s) URL whose host resolves, only to public addresses unless
    private ones are allowed (a blocking call: run it in WEBHOOK_THREADS)."""
    resolve(parse_webhook_url(url), allow_private)


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


async def connect(target: WebhookTarget, addresses: list[str]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the first of `addresses` (the checked ones; the name is never resolved again) that
    accepts, naming `target.host` in SNI and the certificate check for https."""
    tls = ssl.create_default_context() if target.scheme == "https" else None
    hostname = target.host if tls else None
    for address in addresses[:-1]:
        try:
            return await asyncio.open_connection(address, target.port, ssl=tls, server_hostname=hostname)
        except OSError as error:
            log.info("webhook to %s: %s refused (%s); trying its next address", target.host, address, error)
    return await asyncio.open_connection(addresses[-1], target.port, ssl=tls, server_hostname=hostname)


async def post(target: WebhookTarget, addresses: list[str], body: bytes, headers: dict[str, str]) -> int:
    """POST `body` to the target at one of its checked addresses; returns the answer's status."""
    reader, writer = await connect(target, addresses)
    try:
        http = h11.Connection(h11.CLIENT)
        fields = [("Host", target.host_header), *headers.items(), ("Content-Length", str(len(body)))]
        request = h11.Request(method="POST", target=target.target, headers=[*fields, ("Connection", "close")])
        writer.write(http.send(request) + http.send(h11.Data(data=body)) + http.send(h11.EndOfMessage()))
        await writer.drain()
        received = 0
        while True:
            event = http.next_event()
            if isinstance(event, h11.Response):
                return int(event.status_code)
            if event is h11.NEED_DATA:
                chunk = await reader.read(8192)
                received += len(chunk)
                if received > MAX_ANSWER_BYTES:
                    raise h11.RemoteProtocolError("no status line in the answer's first 64 KiB")
                http.receive_data(chunk)
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("the receiver closed the connection without answering")
    finally:
        writer.close()


@dataclass(frozen=True)
class WebhookSender:
    """Delivers job notifications: POST JSON, signed; 2xx is delivered, anything else is retried with backoff."""

    secret: bytes
    allow_private: bool
    attempts: int
    backoff_seconds: float
    # the most one attempt may take, from resolving the name to the answer's status line
    attempt_seconds: float

    @property
    def longest_delivery_seconds(self) -> float:
        """How long all attempts at one call may take: every wait and every attempt's deadline."""
        waits = sum(self.backoff_seconds * 2**attempt for attempt in range(self.attempts - 1))
        return waits + self.attempts * self.attempt_seconds

    def signed_request(self, payload: dict[str, object]) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(payload, separators=(",", ":")).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: signature(self.secret, timestamp, body),
        }
        return body, headers

    async def post_once(self, target: WebhookTarget, body: bytes, headers: dict[str, str]) -> int:
        # resolved and checked again at each attempt (the name may point elsewhere than at submission), and the
        # address checked is the one connected to: a second lookup could be answered differently
        async with asyncio.timeout(self.attempt_seconds):
            addresses = await RESOLVER_THREADS.run(resolve, target, self.allow_private)
            # a redirect could lead anywhere, private addresses included: it counts as a failed attempt
            return await post(target, addresses, body, headers)

    async def deliver(self, url: str, payload: dict[str, object]) -> str:
        """Try up to `attempts` times; returns the outcome counted in whisper_webhook_deliveries_total."""
        body, headers = self.signed_request(payload)
        wait = self.backoff_seconds
        for attempt in range(1, self.attempts + 1):
            status: int | None = None
            try:
                status = await self.post_once(parse_webhook_url(url), body, headers)
            except RequestError as error:
                log.warning("webhook for job %s refused: %s", payload.get("id"), error.error.message)
                metrics.WEBHOOK_DELIVERIES.labels("refused").inc()
                return "refused"
            except TimeoutError:
                job_id, seconds = payload.get("id"), self.attempt_seconds
                log.warning("webhook for job %s, attempt %d: no answer within %g s", job_id, attempt, seconds)
            except (OSError, h11.ProtocolError) as error:
                log.warning("webhook for job %s, attempt %d: %s", payload.get("id"), attempt, error)
            if status is not None and 200 <= status < 300:
                metrics.WEBHOOK_DELIVERIES.labels("delivered").inc()
                return "delivered"
            if attempt < self.attempts:
                log.warning("webhook for job %s got %s; retrying in %g s", payload.get("id"), status, wait)
                metrics.WEBHOOK_DELIVERIES.labels("retried").inc()
                await asyncio.sleep(wait)
                wait *= 2
        metrics.WEBHOOK_DELIVERIES.labels("failed").inc()
        return "failed"
