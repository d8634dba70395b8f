"""How a worker gathers a pass: a backlog goes at once, a fresh request waits for companions until its deadline."""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass
from operator import attrgetter

import pytest
from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError

from app.batching import DeadlineBatchedLoop


@dataclass(frozen=True)
class Payload:
    name: str
    submitted_at: float


@dataclass
class Api:
    max_batch_size: int = 8
    batch_timeout: float = 30.0
    request_timeout: float = 600.0


class RecordingQueue(queue.Queue):
    """A queue that records how long each get was allowed to block (0 for get_nowait)."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def get(self, block: bool = True, timeout: float | None = None) -> object:
        self.waits.append(timeout if block else 0.0)
        return super().get(block=False)


class Transport:
    def __init__(self) -> None:
        self.sent: list[tuple] = []

    def send(self, item: tuple, consumer_id: int) -> None:
        self.sent.append((consumer_id, item))


def queued(name: str, age: float, arrived_age: float | None = None) -> tuple[int, str, float, Payload]:
    now = time.monotonic()
    return (0, name, now - (arrived_age if arrived_age is not None else age), Payload(name, now - age))


def gather(items: list[tuple], api: Api) -> tuple[list, list, RecordingQueue]:
    requests = RecordingQueue()
    for item in items:
        requests.put(item)
    loop = DeadlineBatchedLoop(attrgetter("submitted_at"))
    payloads, timed_out = loop.get_batch_requests(api, requests, Transport())
    return payloads, timed_out, requests


def test_a_backlog_older_than_the_timeout_goes_without_waiting() -> None:
    # LitServe's own collation would wait the whole batch timeout here (30 s) for a batch of 8
    payloads, timed_out, requests = gather([queued("a", 31.0), queued("b", 1.0), queued("c", 0.5)], Api())
    assert [p[2].name for p in payloads] == ["a", "b", "c"]
    assert timed_out == []
    # the first get may block (nothing may be queued yet); after it, the oldest's deadline has passed
    assert requests.waits[1:] == [0.0, 0.0, 0.0]


def test_a_fresh_request_waits_for_companions_until_its_deadline() -> None:
    payloads, _, requests = gather([queued("a", 0.0)], Api(batch_timeout=30.0))
    assert [p[2].name for p in payloads] == ["a"]
    # the wait for a companion ends 30 s after "a" was queued, not 30 s after the worker asked
    assert 25.0 < requests.waits[1] <= 30.0


def test_the_deadline_counts_from_the_oldest_request() -> None:
    _, _, requests = gather([queued("a", 10.0), queued("b", 0.0)], Api(batch_timeout=30.0))
    assert 15.0 < requests.waits[2] <= 20.0


def test_a_pass_holds_at_most_max_batch_size_and_the_rest_stays_queued() -> None:
    payloads, _, requests = gather([queued(str(i), 40.0) for i in range(5)], Api(max_batch_size=3))
    assert [p[2].name for p in payloads] == ["0", "1", "2"]
    assert requests.qsize() == 2


def test_requests_out_of_time_are_set_aside_and_do_not_start_the_clock() -> None:
    stale = queued("stale", 0.0, arrived_age=700.0)
    payloads, timed_out, requests = gather([stale, queued("fresh", 0.0)], Api(batch_timeout=30.0))
    assert timed_out == [(0, "stale")]
    assert [p[2].name for p in payloads] == ["fresh"]
    assert requests.waits[1] == 0.0 and requests.waits[2] > 25.0


def test_the_stop_sentinel_ends_the_loop() -> None:
    with pytest.raises(_StopLoopError):
        gather([queued("a", 40.0), _SENTINEL_VALUE], Api())


def test_an_empty_queue_gives_an_empty_pass() -> None:
    loop = DeadlineBatchedLoop(attrgetter("submitted_at"))
    empty = queue.Queue()
    assert loop.get_batch_requests(Api(batch_timeout=0.0), _NoWait(empty), Transport()) == ([], [])


class _NoWait:
    """A queue whose blocking get gives up at once, so the idle poll costs no time."""

    def __init__(self, inner: queue.Queue) -> None:
        self.inner = inner

    def get(self, block: bool = True, timeout: float | None = None) -> object:
        return self.inner.get(block=False)

    def get_nowait(self) -> object:
        return self.inner.get(block=False)
