"""How model workers gather requests into passes when several share one queue: one gathers at a time.

LitServe's batched loop gathers for WHISPER_BATCH_TIMEOUT from the moment a worker starts
collecting. With several workers on one queue, two workers back from their passes at nearly the
same moment gather in overlapping windows and split the requests that arrive between them: each
runs a smaller pass, and a decode step costs nearly the same for 8 windows as for 32 (the step is
bound by its per-step work, not by the rows), so the GPUs do less per second. Here the workers
take turns: a worker gathers only while no other worker does, exactly as LitServe gathers; with
one worker the turn is never contended and nothing changes.
"""

from __future__ import annotations

import multiprocessing
from queue import Queue

from litserve import LitAPI
from litserve.loops.simple_loops import BatchedLoop
from litserve.transport.base import MessageTransport


class TurnTakingBatchedLoop(BatchedLoop):
    """LitServe's BatchedLoop whose workers gather one at a time.

    Create it in the main process: the lock travels to each spawned worker with the LitAPI.
    """

    def __init__(self) -> None:
        super().__init__()
        # LitServe spawns its model workers; a lock from the default (fork) context cannot go with them
        self.gathering = multiprocessing.get_context("spawn").Lock()

    def get_batch_requests(
        self, lit_api: LitAPI, request_queue: Queue, transport: MessageTransport
    ) -> tuple[list, list]:
        with self.gathering:
            return super().get_batch_requests(lit_api, request_queue, transport)
