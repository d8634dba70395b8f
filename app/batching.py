"""How a model worker gathers requests into one pass: LitServe's batched loop with a queueing deadline.

LitServe's own collation waits WHISPER_BATCH_TIMEOUT from the moment the worker starts collecting,
unless the batch fills. A worker back from a long pass, with the requests that arrived meanwhile
already waiting, therefore still idles the whole timeout before its next pass: 5% of the wall time
at one-second passes, on every pass. Here the wait ends WHISPER_BATCH_TIMEOUT after the oldest
gathered request was queued (Triton's "max queue delay"): a backlog goes at once, and an idle
worker that receives a request waits at most the timeout, counted from that request's queueing,
for companions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from queue import Empty, Queue

from litserve import LitAPI
from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError
from litserve.loops.simple_loops import BatchedLoop
from litserve.transport.base import MessageTransport
from litserve.utils import LitAPIStatus, LoopResponseType

# an idle worker returns to LitServe's loop this often while no request arrives
IDLE_POLL_SECONDS = 1.0

# (response queue id, uid, arrival time, payload), as the HTTP process queues it
Queued = tuple[int, str, float, object]


class DeadlineBatchedLoop(BatchedLoop):
    """LitServe's BatchedLoop; only how a batch is gathered differs (see the module's docstring).

    `queued_at(payload)` gives the time.monotonic() at which the HTTP process queued the payload
    (system-wide on Linux, so comparable across processes).
    """

    def __init__(self, queued_at: Callable[[object], float]) -> None:
        super().__init__()
        self.queued_at = queued_at

    def get_batch_requests(
        self, lit_api: LitAPI, request_queue: Queue, transport: MessageTransport
    ) -> tuple[list[tuple[int, str, object]], list[tuple[int, str]]]:
        """(response queue id, uid, payload) of each request of the next pass, and those already out of time."""
        payloads: list[tuple[int, str, object]] = []
        timed_out: list[tuple[int, str]] = []
        try:
            first = request_queue.get(timeout=IDLE_POLL_SECONDS)
        except Empty:
            return payloads, timed_out
        deadline = None
        item: Queued | None = first
        while item is not None:
            if item == _SENTINEL_VALUE:
                raise _StopLoopError()
            response_queue_id, uid, arrived_at, payload = item
            self.put_response(
                transport, response_queue_id, uid, (), LitAPIStatus.START, LoopResponseType.REGULAR
            )  # fmt: skip
            if lit_api.request_timeout not in (-1, False) and time.monotonic() - arrived_at > lit_api.request_timeout:
                timed_out.append((response_queue_id, uid))
            else:
                payloads.append((response_queue_id, uid, payload))
                if deadline is None:
                    deadline = self.queued_at(payload) + lit_api.batch_timeout
            if len(payloads) >= lit_api.max_batch_size:
                break
            item = next_request(request_queue, deadline)
        return payloads, timed_out


def next_request(request_queue: Queue, deadline: float | None) -> Queued | None:
    """The next queued request if one is there, or arrives before `deadline`; None otherwise."""
    remaining = 0.0 if deadline is None else deadline - time.monotonic()
    try:
        return request_queue.get(timeout=remaining) if remaining > 0 else request_queue.get_nowait()
    except Empty:
        return None
