"""Webhook URLs without a server: the one parse, the addresses refused, where the call connects and what it names."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import stat
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from app.config import Settings
from app.web.errors import RequestError
from app.web.jobs.webhook import WebhookSender, WebhookTarget, forbidden_address, parse_webhook_url, resolve
from app.web.jobs.wiring import OWNER_SECRET_FILE, owner_secret

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
        "224.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fc00::1", "ff02::1", "::7f00:1",
        "::ffff:7f00:1", "::ffff:0:7f00:1", "64:ff9b::a00:1", "2002:7f00:1::", "2001:0:4136:e378::1",
    ],
)  # fmt: skip
def test_private_loopback_and_embedded_addresses_are_forbidden(address: str) -> None:
    assert forbidden_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["1.1.1.1", "93.184.215.14", "2606:4700:4700::1111"])
def test_public_addresses_are_not(address: str) -> None:
    assert not forbidden_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url",
    ["http://a\\@b/", "http://user:pw@example.com/", "http://exa mple.com/", "http://exämple.com/", "gopher://x/"],
)
def test_urls_parsers_read_differently_are_refused(url: str) -> None:
    with pytest.raises(RequestError):
        parse_webhook_url(url)


def test_the_parse_gives_what_is_connected_to_and_written_on_the_request() -> None:
    target = parse_webhook_url("https://[2606:4700:4700::1111]:8443/hooks?x=1#fragment")
    assert target == WebhookTarget("https", "2606:4700:4700::1111", 8443, "/hooks?x=1")
    assert target.host_header == "[2606:4700:4700::1111]:8443"
    assert parse_webhook_url("http://example.com").host_header == "example.com"


def test_the_checked_address_is_the_one_connected_to() -> None:
    assert resolve(parse_webhook_url("http://127.0.0.1:9/"), allow_private=True) == ["127.0.0.1"]
    with pytest.raises(RequestError):
        resolve(parse_webhook_url("http://127.0.0.1:9/"), allow_private=False)


def test_a_generated_owner_secret_is_kept_private_and_the_same_for_every_process(tmp_path: Path) -> None:
    settings = Settings(jobs_dir=tmp_path)
    with ThreadPoolExecutor(8) as pool:
        secrets = set(pool.map(lambda _: owner_secret(settings), range(8)))
    assert len(secrets) == 1 and len(secrets.pop()) == 64
    assert stat.S_IMODE((tmp_path / OWNER_SECRET_FILE).stat().st_mode) == 0o600
    assert [path.name for path in tmp_path.iterdir()] == [OWNER_SECRET_FILE]


@dataclass
class TlsCall:
    server_name: str | None = None
    host: str | None = None
    path: str | None = None


@pytest.fixture
def tls_receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, TlsCall]]:
    """An https receiver on 127.0.0.1 with a certificate for "localhost", trusted through SSL_CERT_FILE."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    self_signed = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"]
    names = ["-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)]
    subprocess.run([*self_signed, *names], check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    call = TlsCall()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            call.host, call.path = self.headers["Host"], self.path
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda _socket, name, _context: setattr(call, "server_name", name)
    server = HTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], call
    server.shutdown()


def test_an_https_call_names_the_host_in_sni_host_and_the_certificate_check(
    tls_receiver: tuple[int, TlsCall],
) -> None:
    port, call = tls_receiver
    sender = WebhookSender(b"secret", allow_private=True, attempts=1, backoff_seconds=1.0, attempt_seconds=30.0)
    body, headers = sender.signed_request({"id": "j1"})
    target = parse_webhook_url(f"https://localhost:{port}/hooks?x=1")
    assert asyncio.run(sender.post_once(target, body, headers)) == 204
    assert (call.server_name, call.host, call.path) == ("localhost", f"localhost:{port}", "/hooks?x=1")
