"""Threads of their own for the job store's and the webhooks' blocking calls, in each HTTP process.

LitServe reads the worker's answers through asyncio's default executor: job calls that wait on a database
lock or a slow receiver must never occupy it, or synchronous requests would wait for their answers.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class Threads:
    """A small pool for one kind of blocking call; made before the fork, its threads start in each process."""

    def __init__(self, name: str, count: int) -> None:
        self.name = name
        self.count = count
        self._pool: ThreadPoolExecutor | None = None

    async def run(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.count, thread_name_prefix=self.name)
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(call, *args, **kwargs))

    def __getstate__(self) -> dict[str, object]:
        return {"name": self.name, "count": self.count, "_pool": None}


# store calls are short; a few at once keep status polls, window saves and claims moving
STORE_THREADS = Threads("job-store", 4)
# webhook URL checks at submission (a name lookup each); deliveries never use these threads, so a slow
# receiver cannot hold a submission up (app/web/jobs/webhook.py)
WEBHOOK_THREADS = Threads("webhook", 4)
