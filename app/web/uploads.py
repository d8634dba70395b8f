"""Receiving a multipart upload straight onto the tmpfs, and the per-request files that hold it.

The body is parsed as it streams in: the audio part goes to a unique file (never a name the client
chose), small text fields are kept in memory, and nothing else is held.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import uuid
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
ARRAY_SUFFIX = "[]"
# the names RequestFiles gives; a start-up sweep deletes only these, whatever else shares the directory
REQUEST_FILE_NAME = re.compile(r"[0-9a-f]{32}\.(upload|f32)")


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
        if len(self._field_bytes) > MAX_FIELD_BYTES:
            raise RequestError(
                Reason.BAD_FORM,
                f"form field {self._field_name!r} is longer than {MAX_FIELD_BYTES} bytes",
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


async def receive_upload(request: Request, destination: Path, max_bytes: int) -> Upload:
    """Stream a multipart/form-data body: the audio part into `destination`, text fields into memory.

    A body over `max_bytes` is refused as soon as its declared length or its received bytes say so,
    so at most `max_bytes` of it ever reach the disk.
    """
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise RequestError(
            Reason.BAD_FORM,
            "send the audio as multipart/form-data with a 'file' field (curl -F file=@audio.wav)",
        )
    if declared_length(request) > max_bytes:
        raise too_large(max_bytes)
    received = 0
    with destination.open("wb") as audio:
        receiver = _FormReceiver(audio)
        callbacks = {name: getattr(receiver, name) for name in dir(receiver) if name.startswith("on_")}
        parser = MultipartParser(params[b"boundary"], callbacks)  # type: ignore[arg-type]
        try:
            async for chunk in request.stream():
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
