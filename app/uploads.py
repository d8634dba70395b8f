"""Receiving a multipart upload straight onto the tmpfs, and the per-request files that hold it.

The body is parsed as it streams in: the audio part goes to a unique file (never a name the client
chose), small text fields are kept in memory, and nothing else is held.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from app.errors import Reason, RequestError

FILE_FIELDS = ("file", "content")
MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 64
ARRAY_SUFFIX = "[]"


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
        elif len(self.upload.fields) >= MAX_FIELDS:
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


async def receive_upload(request: Request, destination: Path) -> Upload:
    """Stream a multipart/form-data body: the audio part into `destination`, text fields into memory."""
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise RequestError(
            Reason.BAD_FORM,
            "send the audio as multipart/form-data with a 'file' field (curl -F file=@audio.wav)",
        )
    with destination.open("wb") as audio:
        receiver = _FormReceiver(audio)
        callbacks = {name: getattr(receiver, name) for name in dir(receiver) if name.startswith("on_")}
        parser = MultipartParser(params[b"boundary"], callbacks)
        try:
            async for chunk in request.stream():
                parser.write(chunk)
            parser.finalize()
        except ClientDisconnect:
            raise RequestError(Reason.BAD_FORM, "the client disconnected before the upload finished") from None
        except RequestError:
            raise
        except Exception as error:
            raise RequestError(Reason.BAD_FORM, f"the multipart body is malformed: {error}") from None
    if receiver.upload.file_field is None:
        raise RequestError(
            Reason.MISSING_FILE,
            "the form has no audio file; send it in the 'file' field",
        )
    return receiver.upload
