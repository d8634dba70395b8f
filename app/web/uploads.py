"""Receiving a multipart upload straight onto the tmpfs, and the per-request files that hold it.

The body is parsed as it streams in: the audio part goes to a unique file (never a name the client
chose), small text fields are kept in memory, and nothing else is held. A body must keep a minimum pace.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from app.contract import Reason
from app.web.errors import RequestError

log = logging.getLogger(__name__)

FILE_FIELDS = ("file", "content")
MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 64
# a known speaker's reference clip arrives as a data URL in a text field: up to 10 s of WAV in base64
MAX_REFERENCE_FIELD_BYTES = 1024 * 1024
ARRAY_SUFFIX = "[]"
# the names RequestFiles gives; a start-up sweep deletes only these, whatever else shares the directory
REQUEST_FILE_NAME = re.compile(r"[0-9a-f]{32}\.(upload|f32)")
# python-multipart's own ceiling (RFC 2046 allows 70)
MAX_BOUNDARY_BYTES = 256
# how often an upload that sends nothing looks at its pace and whether the service still wants it
PACE_POLL_SECONDS = 0.5


@dataclass
class RequestFiles:
    """The two files one request may own on the tmpfs; `remove` deletes both, whatever exists."""

    upload: Path
    waveform: Path

    @classmethod
    def create(cls, directory: Path) -> RequestFiles:
        stem = uuid.uuid4().hex
        return cls(directory / f"{stem}.upload", directory / f"{stem}.f32")

    def remove(self) -> None:
        self.upload.unlink(missing_ok=True)
        self.waveform.unlink(missing_ok=True)


def claim_upload_dir(directory: Path) -> None:
    """Create `directory`, lock it for this service instance and delete the request files a dead one left.

    The lock is an flock on the directory whose descriptor stays open for the life of the process and its
    forked HTTP processes: the kernel drops it when the last of them exits, however it died, so the sweep
    never deletes the files of a live instance.
    """
    directory.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        log.warning("another running instance uses %s; its request files are left alone", directory)
        return
    leftovers = [path for path in directory.iterdir() if REQUEST_FILE_NAME.fullmatch(path.name)]
    for path in leftovers:
        path.unlink(missing_ok=True)
    if leftovers:
        log.warning("deleted %d request files left in %s by a previous run", len(leftovers), directory)


@dataclass
class Upload:
    """The form as received: the audio part's size on disk, and the text fields."""

    file_size: int = 0
    file_field: str | None = None
    # the name the client gave the audio part, for its own reference (never used as a path)
    file_name: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    # fields sent as "name[]", possibly repeated (OpenAI's timestamp_granularities[]), under "name"
    lists: dict[str, list[str]] = field(default_factory=dict)


class _FormReceiver:
    """python-multipart callbacks that route each part to the audio file or a text field."""

    def __init__(self, audio: BinaryIO) -> None:
        self.audio = audio
        self.upload = Upload()
        self._header_field = b""
        self._header_value = b""
        self._disposition: dict[bytes, bytes] = {}
        self._writing_audio = False
        self._field_name = ""
        self._field_bytes = bytearray()
        self._text_parts = 0
        self.complete = False

    def on_part_begin(self) -> None:
        self._disposition = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_field.lower() == b"content-disposition":
            self._disposition = parse_options_header(self._header_value)[1]
        self._header_field = self._header_value = b""

    def on_headers_finished(self) -> None:
        name = self._disposition.get(b"name", b"").decode("utf-8", errors="replace")
        if name in FILE_FIELDS:
            if self.upload.file_field is not None:
                raise RequestError(
                    Reason.BAD_FORM,
                    "the form carries more than one audio file; send one per request",
                )
            self.upload.file_field = name
            self.upload.file_name = self._disposition.get(b"filename", b"").decode("utf-8", errors="replace")[:255]
            self._writing_audio = True
        else:
            # repeated name[] parts count too: each is held in memory
            self._text_parts += 1
            if self._text_parts > MAX_FIELDS:
                raise RequestError(Reason.BAD_FORM, f"the form has more than {MAX_FIELDS} fields")
        self._field_name = name
        self._field_bytes = bytearray()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._writing_audio:
            self.audio.write(data[start:end])
            self.upload.file_size += end - start
            return
        self._field_bytes += data[start:end]
        limit = MAX_REFERENCE_FIELD_BYTES if self._field_name == "known_speaker_references[]" else MAX_FIELD_BYTES
        if len(self._field_bytes) > limit:
            raise RequestError(
                Reason.BAD_FORM,
                f"form field {self._field_name!r} is longer than {limit} bytes",
            )

    def on_end(self) -> None:
        self.complete = True

    def on_part_end(self) -> None:
        if self._writing_audio:
            self._writing_audio = False
            return
        value = self._field_bytes.decode("utf-8", errors="replace")
        if self._field_name.endswith(ARRAY_SUFFIX):
            self.upload.lists.setdefault(self._field_name.removesuffix(ARRAY_SUFFIX), []).append(value)
            return
        if self._field_name in self.upload.fields:
            raise RequestError(Reason.BAD_FORM, f"form field {self._field_name!r} is given more than once")
        self.upload.fields[self._field_name] = value


@dataclass(frozen=True)
class UploadPace:
    """The slowest a body may arrive: `min_bytes_per_second` on average, judged once `grace` seconds have passed."""

    min_bytes_per_second: float
    grace: float

    def check(self, received: int, elapsed: float) -> None:
        if elapsed > self.grace and received < self.min_bytes_per_second * elapsed:
            raise RequestError(
                Reason.UPLOAD_TOO_SLOW,
                f"the upload arrived at {received / elapsed / 1000:.3g} KB/s after {elapsed:.0f} s; this server "
                f"needs at least {self.min_bytes_per_second / 1000:g} KB/s",
            )


async def paced(
    chunks: AsyncIterator[bytes], pace: UploadPace, still_wanted: Callable[[], None]
) -> AsyncIterator[bytes]:
    """`chunks`, checked every PACE_POLL_SECONDS even while none comes: the pace, and `still_wanted` (which raises)."""
    started = time.monotonic()
    received = 0
    pending: asyncio.Future[bytes | None] | None = None
    try:
        while True:
            # the read is not cancelled between polls: cancelling a stream's read would end the stream
            if pending is None:
                pending = asyncio.ensure_future(anext(chunks, None))
            done, _ = await asyncio.wait({pending}, timeout=PACE_POLL_SECONDS)
            still_wanted()
            if done:
                chunk, pending = pending.result(), None
                if chunk is None:
                    return
                received += len(chunk)
                yield chunk
            pace.check(received, time.monotonic() - started)
    finally:
        if pending is not None:
            pending.cancel()


def too_large(max_bytes: int) -> RequestError:
    return RequestError(
        Reason.UPLOAD_TOO_LARGE,
        f"the request body is larger than the {max_bytes / 1e6:g} MB this server accepts",
    )


def declared_length(request: Request) -> int:
    """The Content-Length, or 0 where there is none to trust (chunked bodies are counted as they stream)."""
    try:
        return int(request.headers.get("content-length", 0))
    except ValueError:
        return 0


def no_check() -> None:
    """A `still_wanted` for uploads nothing can call off."""


async def receive_upload(
    request: Request,
    destination: Path,
    max_bytes: int,
    pace: UploadPace = UploadPace(0.0, float("inf")),
    still_wanted: Callable[[], None] = no_check,
) -> Upload:
    """Stream a multipart/form-data body: the audio part into `destination`, text fields into memory.

    A body over `max_bytes` is refused as soon as its declared length or its received bytes say so,
    so at most `max_bytes` of it ever reach the disk; one slower than `pace` is refused with 408, and
    `still_wanted` (which raises, as when the service stops) is asked every PACE_POLL_SECONDS.
    """
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or not params.get(b"boundary"):
        raise RequestError(
            Reason.BAD_FORM,
            "send the audio as multipart/form-data with a 'file' field (curl -F file=@audio.wav)",
        )
    if len(params[b"boundary"]) > MAX_BOUNDARY_BYTES:
        raise RequestError(Reason.BAD_FORM, f"the multipart boundary is longer than {MAX_BOUNDARY_BYTES} bytes")
    if declared_length(request) > max_bytes:
        raise too_large(max_bytes)
    received = 0
    with destination.open("wb") as audio:
        receiver = _FormReceiver(audio)
        callbacks = {name: getattr(receiver, name) for name in dir(receiver) if name.startswith("on_")}
        try:
            parser = MultipartParser(params[b"boundary"], callbacks)  # type: ignore[arg-type]
            async for chunk in paced(request.stream(), pace, still_wanted):
                received += len(chunk)
                if received > max_bytes:
                    raise too_large(max_bytes)
                parser.write(chunk)
            parser.finalize()
        except ClientDisconnect:
            raise RequestError(Reason.BAD_FORM, "the client disconnected before the upload finished") from None
        except (RequestError, OSError):
            # our own verdicts, and a full tmpfs, which is the server's problem and not a malformed body
            raise
        except Exception as error:
            raise RequestError(Reason.BAD_FORM, f"the multipart body is malformed: {error}") from None
    if not receiver.complete:
        # python-multipart accepts a body cut short; its audio would be cut short too
        raise RequestError(Reason.BAD_FORM, "the multipart body ended before its closing boundary")
    if receiver.upload.file_field is None:
        raise RequestError(
            Reason.MISSING_FILE,
            "the form has no audio file; send it in the 'file' field",
        )
    return receiver.upload
