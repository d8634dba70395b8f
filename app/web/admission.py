"""Which uploads the service takes on: at most WHISPER_MAX_QUEUE received at once, none once it is going away.

The count and the phase live in shared memory made by the main process before it forks the HTTP
processes, so every HTTP process and the supervisor in the main process see the same numbers.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.contract import Reason
from app.web.errors import RequestError

HEALTH_PATH = "/health"


class Phase(IntEnum):
    """Where the service is in its life; only SERVING takes new uploads."""

    SERVING = 0
    # SIGTERM arrived: requests in flight finish, new ones are turned away
    DRAINING = 1
    # the grace period is over: requests still waiting are answered 503 now
    STOPPING = 2
    # a model worker or HTTP process died: waiting requests are answered 503, the process exits non-zero
    FAILED = 3


# why the service is not taking uploads, in each phase but SERVING: the detail of its 503
WHY_UNAVAILABLE = {
    Phase.DRAINING: "the server is shutting down; retry on another instance or after the restart",
    Phase.STOPPING: "the server is shutting down; retry on another instance or after the restart",
    Phase.FAILED: "a model worker stopped unexpectedly and the service is restarting; retry shortly",
}


class Admission:
    """Shared across processes: how many requests are in flight, how many received uploads are held, the phase.

    An upload takes a place only once its body is received: a slow client holds its connection, not a place.

    Create it in the main process before LitServe forks its HTTP processes; they inherit the memory.
    Spawned model workers receive a detached copy (they never admit anything).
    """

    def __init__(self, max_held: int) -> None:
        self.max_held = max_held
        self._held = multiprocessing.Value("i", 0)
        self._in_flight = multiprocessing.Value("i", 0)
        self._phase = multiprocessing.Value("i", Phase.SERVING, lock=False)

    def __getstate__(self) -> dict[str, object]:
        # shared memory made for forked children cannot be pickled into a spawned worker, which needs none
        return {"max_held": self.max_held, "_held": None, "_in_flight": None, "_phase": None}

    @property
    def held(self) -> int:
        return self._held.value

    @property
    def in_flight(self) -> int:
        """Requests arrived and not yet answered, receiving their upload or held; SIGTERM drains these."""
        return self._in_flight.value

    @property
    def phase(self) -> Phase:
        return Phase(self._phase.value)

    def enter(self, phase: Phase) -> None:
        self._phase.value = phase

    def refuse_unless_serving(self, *, waiting: bool = False) -> None:
        """Raise the 503 for the current phase; `waiting` requests are refused only once they must stop waiting."""
        phase = self.phase
        if phase is Phase.SERVING or (waiting and phase is Phase.DRAINING):
            return
        raise RequestError(Reason.UNAVAILABLE, WHY_UNAVAILABLE[phase])

    @contextmanager
    def arrive(self) -> Iterator[None]:
        """Count one request in flight for its whole life; raises RequestError (503) once the service is going away."""
        self.refuse_unless_serving()
        with self._in_flight.get_lock():
            self._in_flight.value += 1
        try:
            yield
        finally:
            with self._in_flight.get_lock():
                self._in_flight.value -= 1

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one place for a received upload until it is answered; raises RequestError (503) when none is free."""
        # a request that arrived before SIGTERM is still served while the drain lasts
        self.refuse_unless_serving(waiting=True)
        with self._held.get_lock():
            if self._held.value >= self.max_held:
                raise RequestError(
                    Reason.OVERLOADED,
                    f"the server already holds {self.max_held} requests; retry shortly",
                )
            self._held.value += 1
        try:
            yield
        finally:
            with self._held.get_lock():
                self._held.value -= 1


class HealthGate:
    """ASGI middleware: /health answers 503 whenever the service is not SERVING, so load balancers move on."""

    def __init__(self, app: ASGIApp, admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        phase = self.admission.phase
        if scope["type"] == "http" and scope["path"] == HEALTH_PATH and phase is not Phase.SERVING:
            await PlainTextResponse(phase.name.lower(), status_code=503)(scope, receive, send)
            return
        await self.app(scope, receive, send)
