"""The job store's own readiness route, and the one answer every job route gives when the store fails.

/health stays about transcription (a broken job store must not take synchronous requests out of a load
balancer); /health/jobs says whether jobs can be taken: the store and the upload directory both written to.
"""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from app import metrics
from app.web.jobs.api import Jobs, refusal
from app.web.jobs.backends import StoreUnavailable
from app.web.jobs.threads import STORE_THREADS

JOBS_HEALTH_PATH = "/health/jobs"


async def store_unavailable(request: Request, failure: Exception) -> Response:
    """503 store_unavailable with Retry-After, in our error shape, from any job route."""
    assert isinstance(failure, StoreUnavailable)
    metrics.ERRORS.labels(failure.error.reason.value).inc()
    return refusal(failure.error)


def add_store_health(app: FastAPI, jobs: Jobs) -> None:
    """GET /health/jobs: 200 while jobs can be stored, 503 store_unavailable (and why) while they cannot."""

    async def jobs_health() -> Response:
        await STORE_THREADS.run(jobs.store.probe)
        await STORE_THREADS.run(jobs.audio.probe)
        return JSONResponse({"store": "writable"})

    app.add_exception_handler(StoreUnavailable, store_unavailable)
    app.add_api_route(JOBS_HEALTH_PATH, jobs_health, methods=["GET"], summary="Whether jobs can be stored now")
