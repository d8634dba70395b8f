"""The main process's watch over the service: SIGTERM drains it, a dead worker or HTTP process stops it.

A dead process makes the service exit with EXIT_PROCESS_DIED, for the orchestrator to restart it: LitServe
can respawn a model worker, but the requests that worker held wait in HTTP processes that are never told.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.process import BaseProcess
from types import FrameType

from app.web.admission import Admission, Phase

log = logging.getLogger(__name__)

EXIT_PROCESS_DIED = 3
POLL_SECONDS = 0.1
# how long requests answered 503 get to reach their clients before the HTTP processes are stopped
FLUSH_SECONDS = 3.0
# how long an HTTP process gets to close its connections once stopped (uvicorn's graceful shutdown), then it is
# killed; LitServe then gives each model worker WORKER_STOP_SECONDS after SIGTERM before killing it
HTTP_STOP_SECONDS = 3.0
WORKER_STOP_SECONDS = 5.0
# past WHISPER_SHUTDOWN_GRACE, the longest SIGTERM takes to exit, whatever clients do (with a margin for a busy
# host); orchestrators' grace periods (stop_grace_period, terminationGracePeriodSeconds) must exceed grace + this
SHUTDOWN_OVERHEAD_SECONDS = FLUSH_SECONDS + HTTP_STOP_SECONDS + WORKER_STOP_SECONDS + 4.0


class Supervisor:
    """Decides when the service stops, and with which exit status; runs in the main process.

    >>> supervisor = Supervisor(admission, grace_seconds=60)
    >>> supervisor.install_signal_handler()
    >>> # LitServer calls supervisor.watch(...) once its processes run; server.run() returns when it says so
    """

    def __init__(self, admission: Admission, grace_seconds: float) -> None:
        self.admission = admission
        self.grace_seconds = grace_seconds
        self.exit_code = 0
        self._owner_pid = os.getpid()
        self._stop_requested = threading.Event()
        self._standing_down = threading.Event()

    def install_signal_handler(self) -> None:
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._owner_pid:
            # a forked child inherited this handler: it dies of SIGTERM as it would have without us
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self._stop_requested.set()

    def stand_down(self) -> None:
        """The server is stopping its processes on purpose (SIGINT, or after our own verdict): stop watching."""
        self._standing_down.set()

    def watch(self, processes: Callable[[], Sequence[BaseProcess]], stop_server: Callable[[], None]) -> None:
        """Start the watch thread; `processes` lists the workers and HTTP processes, `stop_server` ends run()."""
        threading.Thread(target=self._watch, args=(processes, stop_server), name="supervisor", daemon=True).start()

    def _watch(self, processes: Callable[[], Sequence[BaseProcess]], stop_server: Callable[[], None]) -> None:
        drain_deadline = None
        while not self._standing_down.is_set():
            dead = [process for process in processes() if not process.is_alive()]
            if dead:
                log.error("%s (pid %d) died; answering waiting requests 503 and exiting", dead[0].name, dead[0].pid)
                self.exit_code = EXIT_PROCESS_DIED
                self._stop(Phase.FAILED, stop_server)
                return
            if self._stop_requested.is_set() and drain_deadline is None:
                log.info("SIGTERM: draining %d requests (at most %g s)", self.admission.in_flight, self.grace_seconds)
                self.admission.enter(Phase.DRAINING)
                drain_deadline = time.monotonic() + self.grace_seconds
            if drain_deadline is not None and (self.admission.in_flight == 0 or time.monotonic() >= drain_deadline):
                self._stop(Phase.STOPPING, stop_server)
                return
            time.sleep(POLL_SECONDS)

    def _stop(self, phase: Phase, stop_server: Callable[[], None]) -> None:
        if self.admission.in_flight:
            log.warning("answering %d requests still in flight with 503", self.admission.in_flight)
        self.admission.enter(phase)
        flush_deadline = time.monotonic() + FLUSH_SECONDS
        while self.admission.in_flight and time.monotonic() < flush_deadline:
            time.sleep(POLL_SECONDS)
        stop_server()
