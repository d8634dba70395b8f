"""Every use of LitServe beyond its public API, in one place: its queue, response buffer, monitor and shutdown.

LitServe 0.2.19 offers no public way to put our own item on a worker's queue and await its answer from a
custom route, nor to replace its worker monitor; tests/unit/test_litserve_adapter.py fails loudly when an
upgrade changes any of the names or layouts used here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from multiprocessing.managers import SyncManager
from multiprocessing.process import BaseProcess
from queue import Empty, Queue
from typing import Any, Protocol

import litserve as ls
from fastapi import HTTPException
from litserve.loops.base import _SENTINEL_VALUE, LitLoop
from litserve.specs.base import LitSpec
from litserve.transport.base import MessageTransport
from litserve.utils import LitAPIStatus, LoopResponseType, ResponseBufferItem

from app.contract import ItemError, QueuedRequest, Reason, Reported

log = logging.getLogger(__name__)

# the LitServe release whose internals this module follows
LITSERVE_VERSION = "0.2.19"
# how often a request waiting for the model worker asks whether it may still wait
WAIT_POLL_SECONDS = 0.2
# the status LitServe's loops answer with for an item that waited in the queue past the request timeout
QUEUE_TIMEOUT_STATUS = 504


class WorkerClient:
    """Submits a request to the model workers and awaits its own answer; the HTTP side's only door to them.

    >>> outcome = await spec.worker_client.run(request, arrived_at, keep_waiting=admission.check_waiting)
    """

    def __init__(self, spec: LitSpec, request_timeout: float) -> None:
        # LitServe connects the spec to its queue and buffer inside each HTTP process, after we are built
        self.spec = spec
        self.request_timeout = request_timeout

    async def run(
        self, request: QueuedRequest, arrived_at: float, keep_waiting: Callable[[], None]
    ) -> Reported | ItemError:
        """Queue `request`, stamped with its request's arrival so a worker drops it once out of time, and wait.

        `keep_waiting` is called while waiting and raises to give up (a worker died, a drain ran out).
        """
        spec = self.spec
        uid = uuid.uuid4()
        event = asyncio.Event()
        spec.response_buffer[uid] = ResponseBufferItem(event=event)
        # the layout LitServe's loops unpack: (response_queue_id, uid, timestamp, payload)
        spec.request_queue.put((spec.response_queue_id, uid, arrived_at, request))
        try:
            while not event.is_set():
                keep_waiting()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(event.wait(), WAIT_POLL_SECONDS)
            response, status = spec.response_buffer[uid].response
        finally:
            spec.response_buffer.pop(uid, None)
        if status == LitAPIStatus.ERROR:
            if getattr(response, "status_code", None) == QUEUE_TIMEOUT_STATUS:
                return ItemError(Reason.TIMEOUT, f"no model worker was free within {self.request_timeout:g} s")
            log.error("model worker failed a whole batch: %r", response)
            return ItemError(Reason.INFERENCE_FAILED, "inference failed")
        answer: Reported | ItemError = response
        return answer


# how long an idle continuous-batching worker waits on the queue before looking again
IDLE_WAIT_SECONDS = 1.0


class SteppedAPI(Protocol):
    """What ContinuousLoop drives: the LitAPI of a worker that decodes in steps (app/worker/litapi.py)."""

    request_timeout: float

    @property
    def busy(self) -> bool: ...

    def decode_request(self, request: QueuedRequest) -> Any: ...

    def submit(self, uid: str, job: Any, priority: int) -> None: ...

    def step(self) -> list[tuple[str, Reported]]: ...


class ContinuousLoop(LitLoop):
    """A worker loop for continuous batching: every queued request joins between two steps, and each
    answer goes back the moment its request has ended, not when a batch has.

    LitServe's own ContinuousBatchingLoop streams tokens and needs stream=True; these answers are
    whole, so the loop is ours: it takes what is queued, steps the API, sends what finished.
    """

    def __call__(
        self, lit_api: SteppedAPI, device: str, worker_id: int, request_queue: Queue[Any],
        transport: MessageTransport, workers_setup_status: dict[int, str], callback_runner: Any,
        lit_spec: LitSpec | None = None, stream: bool = False,
    ) -> None:  # fmt: skip
        # the reply queue of each request in the worker
        reply_to: dict[str, int] = {}
        while True:
            arrivals = self._arrivals(request_queue, block=not lit_api.busy)
            if arrivals is None:
                return
            for response_queue_id, uid, arrived_at, job in arrivals:
                timeout = lit_api.request_timeout
                if timeout and timeout != -1 and time.monotonic() - arrived_at > timeout:
                    error = HTTPException(QUEUE_TIMEOUT_STATUS, "Request timed out")
                    self.put_response(
                        transport, response_queue_id, uid, error, LitAPIStatus.ERROR, LoopResponseType.REGULAR
                    )
                    continue
                decoded = lit_api.decode_request(job)
                if isinstance(decoded, ItemError):
                    self._answer(transport, response_queue_id, uid, decoded)
                    continue
                reply_to[uid] = response_queue_id
                lit_api.submit(uid, decoded, job.priority)
            if lit_api.busy:
                for uid, reported in lit_api.step():
                    self._answer(transport, reply_to.pop(uid), uid, reported)

    def _arrivals(self, request_queue: Queue[Any], block: bool) -> list[tuple[Any, ...]] | None:
        """Everything queued now (waiting up to IDLE_WAIT_SECONDS for one when `block`); None to stop."""
        arrivals: list[tuple[Any, ...]] = []
        while True:
            try:
                item = (
                    request_queue.get(timeout=IDLE_WAIT_SECONDS)
                    if block and not arrivals
                    else request_queue.get_nowait()
                )
            except Empty:
                return arrivals
            if item == _SENTINEL_VALUE:
                return None
            arrivals.append(item)

    def _answer(self, transport: MessageTransport, response_queue_id: int, uid: str, result: object) -> None:
        self.put_response(transport, response_queue_id, uid, result, LitAPIStatus.OK, LoopResponseType.REGULAR)


class RoutesSpec(LitSpec):
    """A LitSpec that only adds routes: LitServe's own request handling is never used."""

    def __getstate__(self) -> dict[str, Any]:
        state: dict[str, Any] = super().__getstate__()
        # route closures and event-loop objects live in HTTP processes; the spawned workers need neither
        state["_endpoints"] = []
        return state


class SupervisedLitServer(ls.LitServer):
    """A LitServer whose worker and HTTP processes are watched by our code instead of LitServe's monitor.

    `watch(processes, stop_server)` is called once every process runs; `on_shutdown()` as the server
    stops them on purpose, giving each HTTP process `http_stop_seconds` to exit.
    """

    def __init__(
        self,
        api: ls.LitAPI,
        watch: Callable[[Callable[[], Sequence[BaseProcess]], Callable[[], None]], None],
        on_shutdown: Callable[[], None],
        http_stop_seconds: float,
        **options: Any,
    ) -> None:
        super().__init__(api, **options)
        self._watch = watch
        self._on_shutdown = on_shutdown
        # how long each HTTP process gets to finish once stopped (uvicorn's graceful shutdown, then LitServe's
        # join) before it is killed; LitServe's own 30 s would come on top of the drain
        self.uvicorn_graceful_timeout = http_stop_seconds

    def _start_worker_monitoring(self, manager: SyncManager, uvicorn_workers: dict[str, BaseProcess]) -> None:
        # LitServe's own monitor would leave requests waiting on a dead worker hanging until their timeout
        def processes() -> list[BaseProcess]:
            return [*self.inference_workers, *uvicorn_workers.values()]

        self._watch(processes, self._shutdown_event.set)

    def _perform_graceful_shutdown(self, *args: Any, **kwargs: Any) -> None:
        self._on_shutdown()
        super()._perform_graceful_shutdown(*args, **kwargs)
