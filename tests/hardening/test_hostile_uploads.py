"""Hostile uploads against the real server: each gets a 4xx with a message, and the server shrugs it off.

The corpus is generated here: broken and lying headers, non-audio content under audio names, archives,
playlists that point at server files, hostile filenames and malformed or bloated forms.
"""

from __future__ import annotations

import gzip
import io
import struct
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests

from harness.service import ServiceProcess
from tests.hardening.conftest import MULTIPART, Part, lavfi, multipart, post, upload_dir_files

pytestmark = pytest.mark.integration

# a filename that would land outside the upload dir if it were ever used as a path
ESCAPE = Path("/tmp/whisper-hardening-escaped.wav")


@dataclass(frozen=True)
class Hostile:
    label: str
    body: bytes
    path: str = "/transcribe"


def u32(value: int) -> bytes:
    """A header field as WAV stores it, saturated where the lie would not fit."""
    return struct.pack("<I", min(value, 0xFFFFFFFF))


def wav(
    rate: int = 16000, channels: int = 1, bits: int = 16, data_size: int | None = None, payload: bytes = b""
) -> bytes:
    """A PCM WAV whose header says whatever it is told, followed by `payload`."""
    size = len(payload) if data_size is None else data_size
    block = channels * bits // 8
    fmt = struct.pack("<HH", 1, channels) + u32(rate) + u32(rate * block) + struct.pack("<HH", block & 0xFFFF, bits)
    return b"RIFF" + u32(36 + size) + b"WAVEfmt " + u32(16) + fmt + b"data" + u32(size) + payload


def zipped(name: str, content: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, content)
    return buffer.getvalue()


def tarred(name: str, content: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo(name)
        info.size = len(content)
        archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def file_upload(label: str, content: bytes, filename: bytes = b"upload.wav") -> Hostile:
    return Hostile(label, multipart(Part(b"file", content, filename)))


@pytest.fixture(scope="module")
def corpus(fox_wav: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Hostile]:
    folder = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(7)
    speech = fox_wav.read_bytes()
    noise = rng.bytes(4096)
    files = [
        ("empty", b""),
        ("one byte", b"R"),
        ("RIFF magic only", b"RIFF"),
        ("truncated WAV header", b"RIFF\x24\x08\x00\x00WAVEfmt "),
        ("WAV header without data chunk", wav()[:36]),
        ("random bytes, 4 KB", noise),
        ("random bytes, 300 KB", rng.bytes(300_000)),
        ("zeros, 64 KB", bytes(65536)),
        ("WAV claiming hours of audio", wav(data_size=0xFFFFFFF0, payload=bytes(1000))),
        ("WAV with zero channels", wav(channels=0, payload=bytes(1000))),
        ("WAV with 65535 channels", wav(channels=65535, payload=bytes(4000))),
        ("WAV at zero Hz", wav(rate=0, payload=bytes(1000))),
        ("WAV at 2^31 Hz", wav(rate=2**31 - 1, payload=bytes(1000))),
        ("WAV with 0 bits per sample", wav(bits=0, payload=bytes(1000))),
        ("video without audio", lavfi("testsrc=duration=1:size=64x64:rate=5", folder / "silent.mp4").read_bytes()),
        ("PNG image", lavfi("testsrc=size=32x32", folder / "frame.png", "-frames:v", "1").read_bytes()),
        ("text file", b"this is not audio at all\n" * 40),
        ("JSON document", b'{"audio": "' + b"A" * 2000 + b'"}'),
        ("HTML page", b"<!doctype html><html><body>" + b"<p>hi</p>" * 200 + b"</body></html>"),
        ("SVG image", b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="10" height="10"/></svg>'),
        ("zip holding a zip holding speech", zipped("inner.zip", zipped("speech.wav", speech))),
        ("gzip of speech", gzip.compress(speech)),
        ("tar of speech", tarred("speech.wav", speech)),
        ("PDF header", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n" + noise),
        ("ELF executable", Path(sys.executable).resolve().read_bytes()[:65536]),
        ("HLS playlist naming a server file", b"#EXTM3U\n#EXTINF:10.0,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n"),
        ("ffconcat script naming a server file", b"ffconcat version 1.0\nfile /etc/passwd\n"),
        ("ID3 tag and nothing else", b"ID3\x03\x00\x00\x00\x00\x00\x0a" + bytes(10)),
        ("Ogg magic then noise", b"OggS" + noise),
        ("FLAC magic then noise", b"fLaC" + noise),
        ("speech cut to its first 60 bytes", speech[:60]),
    ]
    corpus = [file_upload(label, content) for label, content in files]
    corpus += [
        file_upload("path traversal filename", noise, ESCAPE.as_posix().replace("/tmp", "../../../../tmp").encode()),
        file_upload("absolute filename of a server file", b"root:x:0:0\n", b"/etc/passwd"),
        file_upload("non-UTF-8 filename", noise, b"\xff\xfe\x80\xc3(.wav"),
        file_upload("filename with a NUL byte", noise, b"speech\x00.wav"),
        Hostile("two audio files", multipart(Part(b"file", speech, b"a.wav"), Part(b"file", speech, b"b.wav"))),
        Hostile(
            "duplicated language field",
            multipart(Part(b"file", speech, b"a.wav"), Part(b"language", b"en"), Part(b"language", b"de")),
        ),
        Hostile("audio under an unknown field", multipart(Part(b"audio", speech, b"a.wav"))),
        Hostile("70 form fields", multipart(*(Part(f"f{i}".encode(), b"x") for i in range(70)))),
        Hostile("a 100 KB form field", multipart(Part(b"file", speech, b"a.wav"), Part(b"prompt", b"p" * 100_000))),
        Hostile("a form without its closing boundary", multipart(Part(b"file", speech, b"a.wav"))[:-40]),
        Hostile("a part header of 20 KB", multipart(Part(b"file", speech, b"a" * 20_000 + b".wav"))),
        Hostile(
            "repeated list field, 100 times",
            multipart(Part(b"file", speech, b"a.wav"), *[Part(b"timestamp_granularities[]", b"word")] * 100),
            path="/v1/audio/transcriptions",
        ),
    ]
    return corpus


def message_of(response: requests.Response) -> str:
    body = response.json()
    return body["error"]["message"] if "error" in body else body["detail"]


def test_every_hostile_upload_gets_a_4xx_with_a_message(hardened: ServiceProcess, corpus: list[Hostile]) -> None:
    ESCAPE.unlink(missing_ok=True)
    assert len(corpus) >= 30
    answers = {case.label: post(hardened, case.body, case.path) for case in corpus}
    for label, response in answers.items():
        print(f"{response.status_code} {label}: {message_of(response)[:90]}")
    wrong = {label: (r.status_code, r.text[:200]) for label, r in answers.items() if not 400 <= r.status_code < 500}
    assert not wrong, f"not a 4xx: {wrong}"
    assert {r.status_code for r in answers.values()}.isdisjoint({401, 404, 405}), "refused for the wrong reason"
    assert all(message_of(r).strip() for r in answers.values())
    assert str(hardened.upload_dir) not in "".join(r.text for r in answers.values()), "server paths leaked"
    assert not ESCAPE.exists(), "a filename reached a path"
    assert upload_dir_files(hardened) == []
    assert requests.get(f"{hardened.url}/health", timeout=5).status_code == 200


def test_the_server_still_transcribes_after_the_corpus(hardened: ServiceProcess, fox_wav: Path) -> None:
    response = hardened.transcribe(fox_wav)
    assert response.status_code == 200, response.text
    assert "fox" in response.json()["transcription"].lower()


@pytest.mark.parametrize("filename", [b"../../../../tmp/whisper-hardening-escaped.wav", b"\xff\xfe\x80.wav"])
def test_real_audio_under_a_hostile_filename_is_transcribed_and_the_name_ignored(
    hardened: ServiceProcess, fox_wav: Path, filename: bytes
) -> None:
    ESCAPE.unlink(missing_ok=True)
    response = post(hardened, multipart(Part(b"file", fox_wav.read_bytes(), filename)))
    assert response.status_code == 200, response.text
    assert not ESCAPE.exists()
    assert upload_dir_files(hardened) == []


def test_the_content_decides_the_format_not_the_name(hardened: ServiceProcess, fox_mp3: Path) -> None:
    """MP3 bytes named .wav transcribe; WAV-named text is refused as what it is."""
    response = post(hardened, multipart(Part(b"file", fox_mp3.read_bytes(), b"speech.wav")))
    assert response.status_code == 200, response.text
    png = post(hardened, multipart(Part(b"file", b"\x89PNG\r\n\x1a\n" + bytes(200), b"speech.mp3")))
    assert png.status_code == 415


def test_a_body_that_is_not_multipart_is_a_400(hardened: ServiceProcess, fox_wav: Path) -> None:
    raw = requests.post(
        f"{hardened.url}/transcribe",
        data=fox_wav.read_bytes(),
        headers={"Content-Type": "audio/wav", **hardened.auth_headers},
        timeout=30,
    )
    no_boundary = requests.post(
        f"{hardened.url}/transcribe",
        data=b"--x\r\n",
        headers={"Content-Type": MULTIPART.split(";")[0], **hardened.auth_headers},
        timeout=30,
    )
    assert raw.status_code == no_boundary.status_code == 400
