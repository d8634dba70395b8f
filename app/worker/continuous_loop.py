"""The model worker's loop under continuous batching: requests join the running decode between token
steps, and each answer goes back the moment its request's last window ends.

LitServe's own ContinuousBatchingLoop streams tokens and needs stream=True; ours answers once per
request, so it is a small LitLoop of its own around ContinuousScheduler.
"""

from __future__ import annotations

import logging
import time
from queue import Empty, Queue

from fastapi import HTTPException
from litserve.loops.base import _SENTINEL_VALUE, LitLoop
from litserve.transport.base import MessageTransport
from litserve.utils import LitAPIStatus, LoopResponseType

from app.errors import ItemError

log = logging.getLogger(__name__)

# how long an idle worker waits on the queue before looking again
IDLE_WAIT_SECONDS = 1.0


class ContinuousLoop(LitLoop):
    """Takes every queued request at each step, steps the scheduler, and answers finished requests."""

    def __call__(
        self, lit_api, device: str, worker_id: int, request_queue: Queue, transport: MessageTransport,
        workers_setup_status: dict, callback_runner: object, lit_spec: object = None, stream: bool = False,
    ) -> None:  # fmt: skip
        # the uid and reply queue of each request in the scheduler
        owners: dict[str, int] = {}
        while True:
            arrivals = self._arrivals(request_queue, block=not lit_api.busy)
            if arrivals is None:
                return
            for response_queue_id, uid, timestamp, payload in arrivals:
                timeout = lit_api.request_timeout
                if timeout and timeout != -1 and time.monotonic() - timestamp > timeout:
                    self.put_response(
                        transport, response_queue_id, uid, HTTPException(504, "Request timed out"),
                        LitAPIStatus.ERROR, LoopResponseType.REGULAR,
                    )  # fmt: skip
                    continue
                job = lit_api.decode_request(payload)
                if isinstance(job, ItemError):
                    self._answer(transport, response_queue_id, uid, job)
                    continue
                owners[uid] = response_queue_id
                lit_api.submit(uid, job)
            if not lit_api.busy:
                continue
            for uid, reported in lit_api.step():
                self._answer(transport, owners.pop(uid), uid, reported)

    def _arrivals(self, request_queue: Queue, block: bool) -> list[tuple] | None:
        """Everything queued now (waiting up to IDLE_WAIT_SECONDS for one when `block`); None to stop."""
        arrivals = []
        while True:
            try:
                if block and not arrivals:
                    item = request_queue.get(timeout=IDLE_WAIT_SECONDS)
                else:
                    item = request_queue.get_nowait()
            except Empty:
                return arrivals
            if item == _SENTINEL_VALUE:
                return None
            arrivals.append(item)

    def _answer(self, transport: MessageTransport, response_queue_id: int, uid: str, result: object) -> None:
        self.put_response(transport, response_queue_id, uid, result, LitAPIStatus.OK, LoopResponseType.REGULAR)
