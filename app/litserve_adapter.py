"""Every use of LitServe beyond its public API, in one place: its queue, response buffer, monitor and shutdown.

LitServe 0.2.19 offers no public way to put our own item on a worker's queue and await its answer from a
custom route, nor to replace its worker monitor; tests/unit/test_litserve_adapter.py fails loudly when an
upgrade changes any of the names or layouts used here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from multiprocessing.managers import SyncManager
from multiprocessing.process import BaseProcess
from typing import Any

import litserve as ls
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, ResponseBufferItem

from app.contract import ItemError, QueuedJob, Reason, Reported

log = logging.getLogger(__name__)

# the LitServe release whose internals this module follows
LITSERVE_VERSION = "0.2.19"
# how often a request waiting for the model worker asks whether it may still wait
WAIT_POLL_SECONDS = 0.2
# the status LitServe's loops answer with for an item that waited in the queue past the request timeout
QUEUE_TIMEOUT_STATUS = 504


class WorkerClient:
    """Submits a job to the model workers and awaits its own answer; the HTTP side's only door to them.

    >>> outcome = await spec.worker_client.run(job, arrived_at, keep_waiting=admission.check_waiting)
    """

    def __init__(self, spec: LitSpec, request_timeout: float) -> None:
        # LitServe connects the spec to its queue and buffer inside each HTTP process, after we are built
        self.spec = spec
        self.request_timeout = request_timeout

    async def run(self, job: QueuedJob, arrived_at: float, keep_waiting: Callable[[], None]) -> Reported | ItemError:
        """Queue `job`, stamped with its request's arrival so a worker drops it once out of time, and wait.

        `keep_waiting` is called while waiting and raises to give up (a worker died, a drain ran out).
        """
        spec = self.spec
        uid = uuid.uuid4()
        event = asyncio.Event()
        spec.response_buffer[uid] = ResponseBufferItem(event=event)
        # the layout LitServe's loops unpack: (response_queue_id, uid, timestamp, payload)
        spec.request_queue.put((spec.response_queue_id, uid, arrived_at, job))
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
