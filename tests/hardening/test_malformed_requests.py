"""Malformed requests, built byte by byte: every answer is a counted 2xx or 4xx in our error shape, never a 5xx.

A property-based fuzzer (hypothesis) varies the multipart body and the request headers themselves: boundaries
of every length and byte, part counts, part headers, nested multiparts, cut bodies, and header sizes and counts.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.service import ServiceProcess
from tests.hardening.conftest import RawAnswer, request_head, send_raw

pytestmark = pytest.mark.integration

ROUTES = ["/transcribe", "/v1/audio/transcriptions", "/v1/audio/translations", "/detect-language"]
ERRORS = "whisper_errors_total"
REQUESTS = "whisper_requests_total"
# RFC 2046's boundary characters, and what no header value may hold (it would end the header line)
BOUNDARY_CHARACTERS = string.ascii_letters + string.digits + "'()+_,-./:=? "
LINE_BREAKS = "\r\n"
FIELD_NAMES = [b"file", b"content", b"prompt", b"language", b"response_format", b"timestamp_granularities[]", b"model"]


def is_our_error_shape(answer: RawAnswer) -> bool:
    body = answer.json()
    if "error" in body:
        return isinstance(body["error"]["message"], str) and isinstance(body["error"]["code"], str)
    return isinstance(body["detail"], str) and isinstance(body["reason"], str)


def part(name: bytes, content: bytes, headers: list[bytes], filename: bytes | None) -> bytes:
    disposition = b'Content-Disposition: form-data; name="' + name + b'"'
    if filename is not None:
        disposition += b'; filename="' + filename + b'"'
    return b"\r\n".join([disposition, *headers]) + b"\r\n\r\n" + content


def body_of(boundary: bytes, parts: list[bytes]) -> bytes:
    return b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts) + b"--" + boundary + b"--\r\n"


header_values = st.text(st.characters(codec="latin-1", exclude_characters=LINE_BREAKS), max_size=300)
boundaries = st.one_of(
    st.text(BOUNDARY_CHARACTERS, min_size=1, max_size=70),
    st.text(BOUNDARY_CHARACTERS, min_size=71, max_size=1000),
    header_values,
)
part_headers = st.lists(
    st.one_of(
        st.binary(max_size=200).filter(lambda line: b"\r\n" not in line),
        st.sampled_from([b"Content-Type: audio/wav", b"Content-Type: multipart/mixed", b"Content-Length: 99999"]),
    ),
    max_size=6,
)


@st.composite
def parts(draw: st.DrawFn, depth: int = 0) -> bytes:
    name = draw(st.one_of(st.sampled_from(FIELD_NAMES), st.binary(max_size=40)))
    filename = draw(st.one_of(st.none(), st.binary(max_size=60)))
    headers = draw(part_headers)
    if depth < 2 and draw(st.booleans()):
        inner = draw(st.text(BOUNDARY_CHARACTERS, min_size=1, max_size=70)).encode()
        headers.append(b"Content-Type: multipart/mixed; boundary=" + inner)
        content = body_of(inner, draw(st.lists(parts(depth + 1), max_size=3)))
    else:
        content = draw(st.binary(max_size=400))
    return part(name, content, headers, filename)


@st.composite
def requests_(draw: st.DrawFn) -> tuple[str, dict[str, str], bytes]:
    route = draw(st.sampled_from(ROUTES))
    boundary = draw(boundaries)
    body_boundary = draw(st.one_of(st.just(boundary), boundaries)).encode("latin-1")
    body = body_of(body_boundary, draw(st.lists(parts(), max_size=80)))
    if draw(st.booleans()):
        body = body[: draw(st.integers(0, len(body)))]
    content_type = draw(
        st.sampled_from(["multipart/form-data; boundary={}", 'multipart/form-data; boundary="{}"', "{}"])
    )
    headers = {"Content-Type": content_type.format(boundary)}
    names = st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=40)
    extra = draw(st.dictionaries(names, header_values, max_size=150))
    headers.update({f"X-F-{name}": value for name, value in extra.items()})
    if draw(st.integers(0, 9)) == 0:
        headers["X-F-Large"] = "h" * draw(st.integers(1000, 40_000))
    return route, headers, body


@pytest.mark.parametrize("route", ROUTES[:2])
@pytest.mark.parametrize("length", [257, 1000, 70_000])
def test_a_boundary_past_256_bytes_is_a_counted_400(hardened: ServiceProcess, route: str, length: int) -> None:
    boundary = "b" * length
    body = f'--{boundary}\r\nContent-Disposition: form-data; name="file"\r\n\r\nx\r\n--{boundary}--\r\n'.encode()
    counted = hardened.metric_total(REQUESTS) + hardened.metric_total(ERRORS)
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    answer = send_raw(hardened, request_head(hardened, route, headers, len(body)) + body)
    assert answer.status in (400, 431), answer
    assert is_our_error_shape(answer)
    assert hardened.metric_total(REQUESTS) + hardened.metric_total(ERRORS) > counted


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
@given(request=requests_())
def test_fuzzed_multipart_bodies_and_headers_get_counted_4xx_in_our_shape(
    hardened: ServiceProcess, request: tuple[str, dict[str, str], bytes]
) -> None:
    route, headers, body = request
    errors = hardened.metric_total(ERRORS)
    answer = send_raw(hardened, request_head(hardened, route, headers, len(body)) + body, timeout=60)
    assert answer.status is not None, "the server closed without an answer"
    assert 200 <= answer.status < 500, (answer.status, answer.body[:300])
    if answer.status >= 400:
        assert is_our_error_shape(answer), answer.body[:300]
        assert hardened.metric_total(ERRORS) == errors + 1, "the refusal was counted"
