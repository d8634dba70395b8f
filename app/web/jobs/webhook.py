"""Webhook calls when a job ends: the URL checked against SSRF, the body signed, failed deliveries retried.

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
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests

from app import metrics
from app.contract import Reason
from app.web.errors import RequestError
from app.web.jobs.threads import WEBHOOK_THREADS

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Whisper-Signature"
TIMESTAMP_HEADER = "X-Whisper-Timestamp"
SCHEMES = ("http", "https")
DELIVERY_TIMEOUT_SECONDS = 10.0


def bad_webhook(message: str) -> RequestError:
    return RequestError(Reason.BAD_OPTION, message, param="webhook_url")


def forbidden_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Addresses of the operator's own network and of the host itself, where a webhook must not reach."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


def check_webhook_url(url: str, allow_private: bool) -> None:
    """Raise 400 unless `url` is http(s) and every address its host resolves to is public (or private is allowed).

    Every address counts: a name resolving to one public and one private address could reach either.
    """
    refusal = bad_webhook("webhook_url must be an http:// or https:// URL with a host")
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError:
        raise refusal from None
    if parts.scheme not in SCHEMES or not hostname:
        raise refusal
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(hostname, port, proto=socket.IPPROTO_TCP)
    except (OSError, ValueError) as error:
        raise bad_webhook(f"webhook_url's host does not resolve: {error}") from None
    if allow_private:
        return
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if forbidden_address(address):
            raise bad_webhook(
                f"webhook_url resolves to {address}, a private or loopback address; "
                "the operator can allow those with WHISPER_WEBHOOK_ALLOW_PRIVATE"
            )


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class WebhookSender:
    """Delivers job notifications: POST JSON, signed; 2xx is delivered, anything else is retried with backoff."""

    secret: bytes
    allow_private: bool
    attempts: int
    backoff_seconds: float

    @property
    def longest_delivery_seconds(self) -> float:
        """How long all attempts at one call may take: every wait and every attempt's timeout."""
        waits = sum(self.backoff_seconds * 2**attempt for attempt in range(self.attempts - 1))
        return waits + self.attempts * DELIVERY_TIMEOUT_SECONDS

    def signed_request(self, payload: dict[str, object]) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(payload, separators=(",", ":")).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: signature(self.secret, timestamp, body),
        }
        return body, headers

    def post_once(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        # checked again at each attempt: the name may resolve elsewhere than when the job was submitted
        check_webhook_url(url, self.allow_private)
        # a redirect could lead anywhere, private addresses included: it counts as a failed attempt
        response = requests.post(
            url, data=body, headers=headers, timeout=DELIVERY_TIMEOUT_SECONDS, allow_redirects=False
        )
        return response.status_code

    async def deliver(self, url: str, payload: dict[str, object]) -> str:
        """Try up to `attempts` times; returns the outcome counted in whisper_webhook_deliveries_total."""
        body, headers = self.signed_request(payload)
        wait = self.backoff_seconds
        for attempt in range(1, self.attempts + 1):
            try:
                status = await WEBHOOK_THREADS.run(self.post_once, url, body, headers)
            except RequestError as error:
                log.warning("webhook for job %s refused: %s", payload.get("id"), error.error.message)
                metrics.WEBHOOK_DELIVERIES.labels("refused").inc()
                return "refused"
            except requests.RequestException as error:
                status = None
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
