"""Workers take turns gathering a pass: the turn is one lock shared by every spawned worker."""

from __future__ import annotations

import multiprocessing
import queue
import sys
import time
from dataclasses import dataclass

from app.batching import TurnTakingBatchedLoop


@dataclass
class Api:
    max_batch_size: int = 8
    batch_timeout: float = 0.0
    request_timeout: float = 600.0
    stream: bool = False


class Transport:
    def send(self, item: tuple, consumer_id: int) -> None:
        pass


def try_turn(loop: TurnTakingBatchedLoop) -> None:
    """In a spawned process, as a model worker: exit 0 if the turn was free, 1 if another process held it."""
    taken = loop.gathering.acquire(block=False)
    sys.exit(0 if taken else 1)


def turn_free_in_a_spawned_worker(loop: TurnTakingBatchedLoop) -> bool:
    worker = multiprocessing.get_context("spawn").Process(target=try_turn, args=(loop,))
    worker.start()
    worker.join()
    return worker.exitcode == 0


def test_a_spawned_worker_sees_the_turn_another_process_holds() -> None:
    loop = TurnTakingBatchedLoop()
    with loop.gathering:
        assert not turn_free_in_a_spawned_worker(loop)
    assert turn_free_in_a_spawned_worker(loop)


def test_gathering_takes_the_queued_requests_and_gives_the_turn_back() -> None:
    loop = TurnTakingBatchedLoop()
    requests: queue.Queue = queue.Queue()
    for uid in ("a", "b", "c"):
        requests.put((0, uid, time.monotonic(), f"payload {uid}"))
    payloads, timed_out = loop.get_batch_requests(Api(max_batch_size=2), requests, Transport())
    assert [uid for _, uid, _ in payloads] == ["a", "b"]
    assert timed_out == [] and requests.qsize() == 1
    assert loop.gathering.acquire(block=False)
