"""The job runner in each HTTP process: claims jobs from the store and feeds their windows to the model worker.

A job's windows are stretches of the file of at most WHISPER_JOBS_WINDOW_SECONDS, cut at the quietest point.
Each is a request of its own in the worker's queue, which the worker transcribes exactly as it would an upload
to /transcribe (its VAD cuts it into speech windows, with seek-back), so a job differs from /transcribe only at
those few cuts; a long file's windows join passes with everyone else's, and none is submitted while a
synchronous request is held (one after WHISPER_JOBS_LONGEST_YIELD_SECONDS), so those keep their latency.
Every finished window is saved with the lease renewed, so a job picked up again resumes there.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import numpy as np

from app import metrics
from app.config import Settings
from app.contract import (
    SAMPLE_RATE,
    WAVEFORM_DTYPE,
    ItemError,
    QueuedRequest,
    Reason,
    Reported,
    SpeakerLabelling,
    Transcript,
    TranscriptionOptions,
)
from app.web.admission import Admission, Phase
from app.web.audio import decode_upload
from app.web.errors import RequestError
from app.web.jobs.backends import StoreUnavailable
from app.web.jobs.files import JobAudio
from app.web.jobs.model import RESULT_PATH, Claim, Job, JobStatus
from app.web.jobs.store import JobStore
from app.web.jobs.threads import STORE_THREADS
from app.web.jobs.transcripts import joined, shifted, transcript_from_json, transcript_to_json
from app.web.jobs.webhook import WebhookSender
from app.web.uploads import RequestFiles

log = logging.getLogger(__name__)


class Span(Protocol):
    """A stretch of a waveform, in samples: what the window splitter returns."""

    @property
    def start(self) -> int: ...

    @property
    def end(self) -> int: ...


# WorkerClient.run: hands one window to the model worker and awaits its answer
SubmitWindow = Callable[[QueuedRequest, float, Callable[[], None]], Awaitable[Reported | ItemError]]
# cuts a job's waveform into job windows of at most the given samples at quiet points (the worker's
# split_waveform, given by the wiring, as app/web does not import app/worker): (waveform, request_index, samples)
JobWindowCutter = Callable[[np.ndarray, int, int], Sequence[Span]]

# how often an idle runner looks for jobs queued by other processes and replicas
POLL_SECONDS = 1.0
# how often, while windows are in flight, the runner looks again whether synchronous load leaves room
PRIORITY_POLL_SECONDS = 0.05
# how often expired jobs are deleted and the job gauges refreshed
HOUSEKEEPING_SECONDS = 5.0
# a job whose runs keep being interrupted (it crashes the worker, say) fails instead of looping forever
MAX_ATTEMPTS = 5
# job windows submitted while synchronous requests are held: none, so a request shares no pass with a job
# window and waits at most for the one already in the worker (README, "Latency of short requests beside a long job")
WINDOWS_IN_FLIGHT_UNDER_LOAD = 0


class JobFailed(Exception):
    """The job cannot succeed (bad audio, a failed inference): it ends as failed with this message."""


class Interrupted(Exception):
    """This instance is stopping: the job goes back to the queue, to resume from its saved windows."""


class LeaseLost(Exception):
    """The job was cancelled, or another runner took it over: this one drops its work."""


class JobRunner:
    """Runs jobs one at a time, from claim to completion, in the HTTP process that owns it.

    >>> async with JobRunner(settings, store, audio, admission, client.run, split_waveform, webhooks).running():
    ...     ...  # serve requests; the runner works in the background
    """

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        audio: JobAudio,
        admission: Admission,
        submit: SubmitWindow,
        cut_windows: JobWindowCutter,
        webhooks: WebhookSender | None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.audio = audio
        self.admission = admission
        self.submit = submit
        self.cut_windows = cut_windows
        self.webhooks = webhooks
        self._wake = asyncio.Event()
        self._deliveries: set[asyncio.Task[str]] = set()
        # jobs whose webhook call this process is making: one call at a time per job
        self._delivering: set[str] = set()

    def wake(self) -> None:
        """A job was just queued in this process: look now rather than at the next poll."""
        self._wake.set()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        task = asyncio.create_task(self.run(), name="job-runner")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        next_housekeeping = 0.0
        while True:
            try:
                if time.monotonic() >= next_housekeeping:
                    await self.housekeeping()
                    next_housekeeping = time.monotonic() + HOUSEKEEPING_SECONDS
                claim = None
                if self.admission.phase is Phase.SERVING:
                    token = uuid.uuid4().hex
                    claim = await STORE_THREADS.run(self.store.claim, token, self.settings.jobs_lease_seconds)
                if claim is None:
                    self._wake.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
                    continue
                await self.execute(claim)
            except asyncio.CancelledError:
                raise
            except StoreUnavailable as error:
                # the store may be briefly unreachable (a PostgreSQL failover, a volume remounted): keep trying,
                # one line each time rather than a traceback that says nothing more
                log.warning("job runner: %s; retrying in %g s", error.error.message, POLL_SECONDS)
                await asyncio.sleep(POLL_SECONDS)
            except Exception:
                log.exception("job runner error; retrying in %g s", POLL_SECONDS)
                await asyncio.sleep(POLL_SECONDS)

    async def housekeeping(self) -> None:
        for job_id in await STORE_THREADS.run(self.store.expire):
            self.audio.delete(job_id)
        await self.sweep_orphaned_uploads()
        counts = await STORE_THREADS.run(self.store.counts)
        for status, jobs in counts.items():
            metrics.JOBS.labels(status.value).set(jobs)
        metrics.JOBS_QUEUE_DEPTH.set(counts[JobStatus.QUEUED])
        metrics.JOBS_OLDEST_QUEUED_SECONDS.set(await STORE_THREADS.run(self.store.oldest_queued_age))
        if self.webhooks is not None:
            # calls still owed well after their runner's attempts would have ended: it died meanwhile
            orphaned_after = self.webhooks.longest_delivery_seconds + HOUSEKEEPING_SECONDS
            for job in await STORE_THREADS.run(self.store.take_owed_webhooks, orphaned_after):
                log.info("job %s: its webhook call was never settled; calling it now", job.id)
                self.notify(job)

    async def sweep_orphaned_uploads(self) -> None:
        """Delete kept uploads that no queued or running job owns: left by a crash mid-upload, or by a delete
        that failed. Only files untouched for longer than a submission may take, so no upload still arriving
        (here or at another replica sharing the directory) is taken for an orphan."""
        candidates = self.audio.untouched_for(self.settings.request_timeout + HOUSEKEEPING_SECONDS)
        if not candidates:
            return
        live = await STORE_THREADS.run(self.store.ids_with_uploads)
        for job_id in candidates - live:
            log.warning("job upload %s has no live job (an interrupted submission?); deleting it", job_id)
            self.audio.delete(job_id)
            metrics.JOB_UPLOADS_SWEPT.inc()

    async def execute(self, claim: Claim) -> None:
        """Run one claimed job to its end, or hand it back; the lease is renewed throughout."""
        job = claim.job
        if job.attempts > MAX_ATTEMPTS:
            await self.finish(claim, JobStatus.FAILED, error=f"the job was interrupted {MAX_ATTEMPTS} times")
            return
        log.info("job %s: running (attempt %d)", job.id, job.attempts)
        lost = asyncio.Event()
        renewer = asyncio.create_task(self.keep_lease(claim, lost))
        try:
            transcript = await self.transcribe(claim, lost)
        except JobFailed as failure:
            await self.finish(claim, JobStatus.FAILED, error=str(failure))
        except StoreUnavailable:
            # nothing can be recorded now; the lease lapses and the job runs again once the store is back
            raise
        except OSError as error:
            # the tmpfs is full or unwritable: another round would meet the same, so the job ends now, told why
            log.warning("job %s: its audio could not be prepared: %s", job.id, error)
            await self.finish(claim, JobStatus.FAILED, error=audio_unprepared(error))
        except Interrupted:
            log.info("job %s: interrupted; back to the queue", job.id)
            await STORE_THREADS.run(self.store.release, claim)
        except asyncio.CancelledError:
            # the HTTP process is stopping: hand the job back now, so a restart resumes it without a lease wait
            log.info("job %s: stopping; back to the queue", job.id)
            await asyncio.shield(STORE_THREADS.run(self.store.release, claim))
            raise
        except LeaseLost:
            log.info("job %s: cancelled or taken over; its work here is dropped", job.id)
        else:
            await self.finish(claim, JobStatus.DONE, result=transcript_to_json(transcript))
        finally:
            renewer.cancel()

    async def keep_lease(self, claim: Claim, lost: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.settings.jobs_lease_seconds / 3)
            if not await STORE_THREADS.run(self.store.renew, claim, self.settings.jobs_lease_seconds):
                lost.set()
                return

    async def transcribe(self, claim: Claim, lost: asyncio.Event) -> Transcript:
        job = claim.job
        options = job.request.options
        # speakers are found over the whole file once its windows are done, so one voice keeps one label
        diarization, options = options.diarization, replace(options, diarization=None)
        files = RequestFiles.create(self.settings.tmp_dir)
        try:
            upload = self.audio.path(job.id)
            if not upload.exists():
                # cancelled meanwhile (then finish() finds the lease gone and changes nothing), or deleted outside
                # the service: either way no later round could find it
                raise JobFailed(
                    "the job's upload is gone from the server's job directory (WHISPER_JOBS_DIR); submit it again"
                )
            try:
                seconds = await decode_upload(
                    upload, files.waveform, self.settings.request_timeout, self.settings.max_audio_seconds
                )
            except RequestError as error:
                raise JobFailed(error.error.message) from None
            # mapped, not read: an hour of audio stays on the tmpfs, not in this process's memory
            waveform = np.memmap(files.waveform, dtype=WAVEFORM_DTYPE, mode="r")
            windows = self.cut_windows(waveform, 0, round(self.settings.jobs_window_seconds * SAMPLE_RATE))
            if not await STORE_THREADS.run(self.store.plan, claim, len(windows), seconds):
                raise LeaseLost
            saved_json = await STORE_THREADS.run(self.store.saved_windows, job.id)
            done = {index: transcript_from_json(text) for index, text in saved_json.items()}
            run = WindowRun(self, claim, waveform, windows, done, lost)
            if options.language is None and 0 not in done:
                # the first window decides the language of all, as it does for a synchronous request
                await run.window(0, options)
            if options.language is None:
                options = replace(options, language=done[0].language)
            await run.remaining(options)
            transcript = joined([done[index] for index in range(len(windows))], round(len(waveform) / SAMPLE_RATE, 3))
            if diarization is not None:
                transcript = await run.labelled(SpeakerLabelling(transcript, diarization), files.waveform)
            return transcript
        finally:
            files.remove()

    def windows_allowed_in_flight(self, seconds_since_last_window: float) -> int:
        """Synchronous requests first: while any is held here, the job submits no new window, unless it has
        waited jobs_longest_yield_seconds (then one: under sustained load a job slows down, never starves)."""
        if self.admission.held > 0 and seconds_since_last_window < self.settings.jobs_longest_yield_seconds:
            return WINDOWS_IN_FLIGHT_UNDER_LOAD
        if self.admission.held > 0:
            return 1
        return self.settings.jobs_windows_in_flight

    async def finish(
        self, claim: Claim, status: JobStatus, result: str | None = None, error: str | None = None
    ) -> None:
        job = claim.job
        ended = await STORE_THREADS.run(
            self.store.finish, claim, status, self.settings.jobs_ttl, result=result, error=error
        )
        if not ended:
            log.info("job %s: cancelled or taken over before it could end", job.id)
            return
        self.audio.delete(job.id)
        log.info("job %s: %s%s", job.id, status.value, f" ({error})" if error else "")
        metrics.JOBS_FINISHED.labels(status.value).inc()
        metrics.JOB_SECONDS.observe(max(0.0, time.time() - job.created_at))
        self.notify(replace(job, status=status, error=error))

    def notify(self, job: Job) -> None:
        """Call the ended job's webhook in the background; the store owes the call until the attempts end."""
        url = job.request.webhook_url
        if url is None or self.webhooks is None or job.id in self._delivering:
            return
        payload: dict[str, object] = {"id": job.id, "status": job.status.value, "result_url": None, "error": job.error}
        if job.status is JobStatus.DONE:
            payload["result_url"] = result_url(self.settings.public_url, job.id)

        async def deliver(webhooks: WebhookSender) -> str:
            try:
                outcome = await webhooks.deliver(url, payload)
                await STORE_THREADS.run(self.store.webhook_settled, job.id)
                return outcome
            finally:
                self._delivering.discard(job.id)

        self._delivering.add(job.id)
        delivery = asyncio.create_task(deliver(self.webhooks))
        self._deliveries.add(delivery)
        delivery.add_done_callback(self._deliveries.discard)


def result_url(public_url: str | None, job_id: str) -> str:
    """Where the webhook's receiver fetches the result: under WHISPER_PUBLIC_URL, or the path alone.

    Never from a request's Host header, which the client writes: a webhook must not point anyone elsewhere.
    """
    path = RESULT_PATH.format(job_id=job_id)
    return f"{public_url.rstrip('/')}{path}" if public_url else path


def audio_unprepared(error: OSError) -> str:
    """A job's failure when its audio cannot be decoded or cut into windows on the tmpfs."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the server's upload directory (WHISPER_TMP_DIR) is full, so the job's audio could not be decoded"
    return f"the job's audio could not be prepared in the server's upload directory (WHISPER_TMP_DIR): {error}"


def transcript_of(answer: Reported | ItemError) -> Transcript:
    """The worker's transcript; a failure fails the job, or hands it back where the worker was away.

    (WindowRun.window reads its answer the same way; kept apart while the runner's failure paths are reworked.)
    """
    outcome = answer.outcome if isinstance(answer, Reported) else answer
    if isinstance(outcome, ItemError):
        if outcome.reason in (Reason.UNAVAILABLE, Reason.TIMEOUT):
            raise Interrupted
        raise JobFailed(outcome.message)
    if not isinstance(outcome, Transcript):
        raise JobFailed(f"the model worker answered a transcription with {type(outcome).__name__}")
    return outcome


class WindowRun:
    """One run of one job's windows: each a queued request of its own, saved as it finishes."""

    def __init__(
        self,
        runner: JobRunner,
        claim: Claim,
        waveform: np.ndarray,
        windows: Sequence[Span],
        done: dict[int, Transcript],
        lost: asyncio.Event,
    ) -> None:
        self.runner = runner
        self.claim = claim
        self.waveform = waveform
        self.windows = windows
        self.done = done
        self.lost = lost

    def may_submit(self) -> None:
        if self.lost.is_set():
            raise LeaseLost
        if self.runner.admission.phase is not Phase.SERVING:
            raise Interrupted

    async def remaining(self, options: TranscriptionOptions) -> None:
        """Every window not yet done, as many in flight at once as synchronous load allows."""
        in_flight: set[asyncio.Task[None]] = set()
        last_window = time.monotonic()
        try:
            for index in range(len(self.windows)):
                if index in self.done:
                    continue
                while len(in_flight) >= self.runner.windows_allowed_in_flight(time.monotonic() - last_window):
                    if not in_flight:
                        await asyncio.sleep(PRIORITY_POLL_SECONDS)
                        continue
                    finished, in_flight = await asyncio.wait(
                        in_flight, timeout=PRIORITY_POLL_SECONDS, return_when=asyncio.FIRST_COMPLETED
                    )
                    for task in finished:
                        task.result()
                self.may_submit()
                last_window = time.monotonic()
                in_flight.add(asyncio.create_task(self.window(index, options)))
            for finishing in asyncio.as_completed(in_flight):
                await finishing
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def labelled(self, labelling: SpeakerLabelling, waveform: Path) -> Transcript:
        """The joined transcript with speakers from one diarization of the whole file."""
        self.may_submit()
        now = time.monotonic()
        keep_waiting = self.runner.admission.refuse_unless_serving
        try:
            answer = await self.runner.submit(
                QueuedRequest(str(waveform), labelling, now), now, lambda: keep_waiting(waiting=True)
            )
        except RequestError as error:
            raise Interrupted from error
        return transcript_of(answer)

    async def window(self, index: int, options: TranscriptionOptions) -> None:
        self.may_submit()
        window = self.windows[index]
        settings = self.runner.settings
        path = RequestFiles.create(settings.tmp_dir).waveform
        try:
            np.asarray(self.waveform[window.start : window.end], dtype=WAVEFORM_DTYPE).tofile(path)
            now = time.monotonic()
            keep_waiting = self.runner.admission.refuse_unless_serving
            try:
                answer = await self.runner.submit(
                    QueuedRequest(str(path), options, now), now, lambda: keep_waiting(waiting=True)
                )
            except RequestError as error:
                raise Interrupted from error
        finally:
            path.unlink(missing_ok=True)
        outcome = answer.outcome if isinstance(answer, Reported) else answer
        if isinstance(outcome, ItemError):
            if outcome.reason in (Reason.UNAVAILABLE, Reason.TIMEOUT):
                raise Interrupted
            raise JobFailed(outcome.message)
        if not isinstance(outcome, Transcript):
            raise JobFailed(f"the model worker answered a transcription with {type(outcome).__name__}")
        self.done[index] = shifted(outcome, window.start)
        seconds_done = sum(self.windows[i].end - self.windows[i].start for i in self.done) / SAMPLE_RATE
        saved = await STORE_THREADS.run(
            self.runner.store.save_window,
            self.claim,
            index,
            transcript_to_json(self.done[index]),
            round(seconds_done, 3),
            settings.jobs_lease_seconds,
        )
        if not saved:
            raise LeaseLost
