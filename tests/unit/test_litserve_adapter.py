"""app/litserve_adapter.py leans on LitServe internals; these tests fail loudly when an upgrade changes them.

Each names the internal it checks, so the failure says what to adapt. The WorkerClient is also driven
in-process against a stand-in queue, as LitServe's loops would answer it.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
from dataclasses import fields

import litserve as ls
import pytest
from fastapi import HTTPException
from litserve.loops import base as loops_base
from litserve.loops import simple_loops
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, ResponseBufferItem

from app.contract import ItemError, QueuedRequest, Reason, Reported, Transcript, TranscriptionOptions, WorkerTiming
from app.litserve_adapter import LITSERVE_VERSION, QUEUE_TIMEOUT_STATUS, RoutesSpec, SupervisedLitServer, WorkerClient


def test_the_litserve_release_is_the_one_the_adapter_follows() -> None:
    assert ls.__version__ == LITSERVE_VERSION, "re-check every internal in app/litserve_adapter.py, then bump it"


def test_the_loops_unpack_the_queue_tuple_the_client_puts() -> None:
    assert "response_queue_id, uid, timestamp, x_enc = request_data" in inspect.getsource(loops_base)


def test_a_request_out_of_time_is_answered_with_the_status_the_client_maps_to_timeout() -> None:
    assert f"HTTPException({QUEUE_TIMEOUT_STATUS}" in inspect.getsource(simple_loops)


def test_the_response_buffer_item_and_the_spec_attributes_are_where_the_client_looks() -> None:
    assert {"event", "response"} <= {field.name for field in fields(ResponseBufferItem)}
    spec = LitSpec()
    assert all(hasattr(spec, name) for name in ("response_buffer", "request_queue", "response_queue_id", "_endpoints"))
    assert {LitAPIStatus.OK, LitAPIStatus.ERROR}


def test_the_server_calls_the_two_methods_the_supervised_server_replaces() -> None:
    run = inspect.getsource(ls.LitServer.run)
    assert "self._start_worker_monitoring(manager, uvicorn_workers)" in run
    assert "self._perform_graceful_shutdown(" in run and "self._shutdown_event.wait()" in run
    replaced = inspect.signature(ls.LitServer._start_worker_monitoring).parameters
    assert list(replaced) == ["self", "manager", "uvicorn_workers"]
    assert issubclass(SupervisedLitServer, ls.LitServer)


def test_routes_specs_pickle_without_their_routes() -> None:
    spec = RoutesSpec()
    spec.add_endpoint("/x", lambda: None, ["POST"])
    assert spec.__getstate__()["_endpoints"] == []


class StandInSpec:
    """What LitServe gives a spec inside an HTTP process: a worker queue and a response buffer."""

    def __init__(self) -> None:
        self.request_queue: queue.Queue = queue.Queue()
        self.response_buffer: dict = {}
        self.response_queue_id = 7


def answer(spec: StandInSpec, response: object, status: str) -> None:
    """As LitServe's response task does: fill the buffer item of the queued uid and set its event."""
    queue_id, uid, _, _ = spec.request_queue.get(timeout=5)
    assert queue_id == spec.response_queue_id
    item = spec.response_buffer[uid]
    item.response = (response, status)
    item.event.set()


JOB = QueuedRequest("/tmp/x.f32", TranscriptionOptions(), 0.0)


async def run_and_answer(response: object, status: str) -> Reported | ItemError:
    spec = StandInSpec()
    client = WorkerClient(spec, request_timeout=30)  # type: ignore[arg-type]
    task = asyncio.ensure_future(client.run(JOB, arrived_at=0.0, keep_waiting=lambda: None))
    await asyncio.to_thread(answer, spec, response, status)
    result = await task
    assert spec.response_buffer == {}, "the buffer item is removed once answered"
    return result


def test_the_client_returns_the_workers_answer() -> None:
    reported = Reported(Transcript("hi", "en", 1.0), WorkerTiming(0.0, 0.1, 1))
    assert asyncio.run(run_and_answer(reported, LitAPIStatus.OK)) == reported


@pytest.mark.parametrize(
    ("response", "reason"),
    [(HTTPException(504, "Request timed out"), Reason.TIMEOUT), (RuntimeError("boom"), Reason.INFERENCE_FAILED)],
)
def test_litserve_errors_become_item_errors(response: object, reason: Reason) -> None:
    result = asyncio.run(run_and_answer(response, LitAPIStatus.ERROR))
    assert isinstance(result, ItemError) and result.reason is reason
    assert "boom" not in result.message, "internal errors are logged, not sent to clients"


def test_a_wait_the_service_ends_raises_out_of_the_client_and_frees_the_buffer() -> None:
    spec = StandInSpec()
    client = WorkerClient(spec, request_timeout=30)  # type: ignore[arg-type]

    def stop() -> None:
        raise RuntimeError("draining")

    with pytest.raises(RuntimeError, match="draining"):
        asyncio.run(client.run(JOB, arrived_at=0.0, keep_waiting=stop))
    assert spec.response_buffer == {}
