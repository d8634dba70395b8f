"""One intake for every upload route: how a request's body gets in, and how its failures get out.

The body streams onto the tmpfs at no less than the minimum pace, its form is typed and validated, and only
then does it take a place in WHISPER_MAX_QUEUE; from arrival to answer it counts for the SIGTERM drain and
within WHISPER_REQUEST_TIMEOUT, and its answer is counted in the metrics. A route differs only in its
`Handler`: what it does with the received upload (decode it and await the model worker, keep it as a job).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request, Response

from app import metrics
from app.config import Settings
from app.contract import ItemError, Reason
from app.web.admission import Admission
from app.web.errors import RequestError, retry_after
from app.web.forms import ServedModel, UploadForm
from app.web.request_log import RequestRecord, record_of
from app.web.uploads import RequestFiles, Upload, UploadPace, receive_upload

log = logging.getLogger(__name__)

ErrorRenderer = Callable[[ItemError], Response]
STORAGE_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class UploadRoute:
    """One upload route: the form it takes and the shape its errors answer in."""

    path: str
    form: type[UploadForm]
    render_error: ErrorRenderer


@dataclass(frozen=True)
class Received:
    """An upload whose body has fully arrived, holding a place: what a route's handler works on."""

    form: UploadForm
    # the audio part as received: its size, and the name the client gave it (never used as a path)
    upload: Upload
    # the upload on the tmpfs (and where its waveform may go): both deleted once the handler returns
    files: RequestFiles
    record: RequestRecord
    # time.monotonic() at arrival: WHISPER_REQUEST_TIMEOUT counts from here
    arrived_at: float


# what a route does with a received upload: its answer, or the failure to answer in the route's error shape.
# The place and the tmpfs files are held while it runs and given back when it returns: a streamed answer
# (whose body is sent after that) must do its work inside the handler or hold what it needs itself.
Handler = Callable[[Received], Awaitable[Response | ItemError]]


class Intake:
    """Receives an upload for any route and runs that route's handler on it.

    >>> intake = Intake(settings, admission, ServedModel(("whisper-1", "tiny.en"), english_only=True))
    >>> async def transcribe(request: Request) -> Response:
    ...     return await intake.serve(request, route, handle)  # handle(received) -> Response | ItemError
    """

    def __init__(self, settings: Settings, admission: Admission, model: ServedModel) -> None:
        self.settings = settings
        self.admission = admission
        self.model = model

    async def serve(self, request: Request, route: UploadRoute, handle: Handler) -> Response:
        """The life of one upload: receive it, take a place, handle it, answer; its files are always removed."""
        started = time.monotonic()
        record = record_of(request)
        timeout = self.settings.request_timeout
        metrics.IN_FLIGHT.inc()
        files = RequestFiles.create(self.settings.tmp_dir)
        try:
            with self.admission.arrive():
                result = await asyncio.wait_for(self.take(request, route, handle, files, record, started), timeout)
        except asyncio.TimeoutError:
            result = ItemError(Reason.TIMEOUT, f"the request did not finish within {timeout:g} s; its work was dropped")
        except RequestError as error:
            result = error.error
        except OSError as error:
            if error.errno not in STORAGE_FULL_ERRNOS:
                raise
            log.error("request storage is full: %s", error)
            result = ItemError(Reason.STORAGE_FULL, "the server could not store the upload; try again later")
        finally:
            files.remove()
            metrics.IN_FLIGHT.dec()
        response = self.refusal(route, result, record) if isinstance(result, ItemError) else result
        metrics.REQUESTS.labels(route.path, str(response.status_code)).inc()
        metrics.REQUEST_SECONDS.labels(route.path).observe(time.monotonic() - started)
        return response

    async def take(
        self,
        request: Request,
        route: UploadRoute,
        handle: Handler,
        files: RequestFiles,
        record: RequestRecord,
        arrived_at: float,
    ) -> Response | ItemError:
        upload = await receive_upload(
            request,
            files.upload,
            int(self.settings.max_upload_mb * 1e6),
            UploadPace(self.settings.min_upload_rate_kb * 1000, self.settings.upload_grace),
            still_wanted=lambda: self.admission.refuse_unless_serving(waiting=True),
        )
        record.upload_bytes = upload.file_size
        form = route.form.from_upload(upload, self.model)
        # a place is taken once the body is here: a slow client holds its connection, never a place
        with self.admission.admit():
            return await handle(Received(form, upload, files, record, arrived_at))

    @staticmethod
    def refusal(route: UploadRoute, failure: ItemError, record: RequestRecord) -> Response:
        """The failure in the route's error shape, with Retry-After where waiting helps, counted."""
        metrics.ERRORS.labels(failure.reason.value).inc()
        record.reason = failure.reason.value
        response = route.render_error(failure)
        if (seconds := retry_after(failure)) is not None:
            response.headers["Retry-After"] = str(seconds)
        return response
