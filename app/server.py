"""Builds the LitServer (routes, middlewares, /metrics, workers) from Settings, and the `python -m app` entry point.

The one place that wires both sides (app/web, app/worker) together; `python -m app` exits with the
Supervisor's verdict.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI, Response

from app import metrics
from app.config import Settings, litserve_devices, load_settings
from app.contract import ItemError
from app.lifecycle import HTTP_STOP_SECONDS, Supervisor
from app.litserve_adapter import ContinuousLoop, SupervisedLitServer
from app.web import native_api, request_log
from app.web.admission import HEALTH_PATH, Admission, HealthGate
from app.web.connections import ConnectionLimits, HeaderLimits, connections_that_fit, guarded_protocol
from app.web.forms import OPENAI_MODEL_NAME, ServedModel
from app.web.jobs.api import JOBS_PATH, add_job_routes
from app.web.jobs.health import JOBS_HEALTH_PATH, add_store_health
from app.web.jobs.model import JobForm
from app.web.jobs.wiring import build_jobs
from app.web.realtime.route import REALTIME_PATH, RealtimeRoute, SessionSlots
from app.web.request_log import RequestLogMiddleware
from app.web.routes import ROUTES, TranscriptionRoutes
from app.web.schema import describe_uploads
from app.web.security import ApiKeyMiddleware
from app.web.uploads import claim_upload_dir
from app.worker.litapi import WhisperLitAPI, continuous_batching, resolve_device
from app.worker.loading import default_model_spec, english_only, model_display_name
from app.worker.windows import split_waveform

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"


def build_server(settings: Settings) -> tuple[SupervisedLitServer, Supervisor]:
    """A LitServer whose workers batch requests from every upload route, and the Supervisor watching it."""
    claim_upload_dir(settings.tmp_dir)
    admission = Admission(settings.max_queue)
    # resolved once: the worker loads this spec, clients ask for it by this name, /info shows it
    model_spec = settings.model or default_model_spec(torch.cuda.is_available())
    model_name = model_display_name(model_spec)
    served = ServedModel((OPENAI_MODEL_NAME, model_name), english_only=english_only(model_spec))
    spec = TranscriptionRoutes(settings, admission, served)
    api = WhisperLitAPI(
        settings,
        model_spec,
        max_batch_size=settings.max_batch_size,
        batch_timeout=settings.batch_timeout,
        spec=spec,
        # continuous batching answers each request as its last window ends, from a loop of its own
        loop=ContinuousLoop() if continuous_batching(settings) else "auto",
    )
    probes = {HEALTH_PATH, JOBS_HEALTH_PATH}
    open_paths = frozenset(probes if settings.metrics_require_key else {*probes, METRICS_PATH})

    def render_error(path: str, error: ItemError) -> Response:
        return spec.error_renderers.get(path, native_api.error_response)(error)

    # the first is innermost: the log sees every answer, 401s included; the key is checked before /health's gate
    middlewares: list[tuple[type, dict[str, object]]] = [(HealthGate, {"admission": admission})]
    if settings.api_key:
        key = settings.api_key.get_secret_value()
        middlewares.append((ApiKeyMiddleware, {"key": key, "open_paths": open_paths, "render_error": render_error}))
    header_limits = {"max_headers": settings.max_headers, "max_header_bytes": settings.max_header_kb * 1000}
    middlewares.append((HeaderLimits, {**header_limits, "render_error": render_error}))
    middlewares.append((RequestLogMiddleware, {}))
    accelerator = resolve_device(settings.device)
    supervisor = Supervisor(admission, settings.shutdown_grace)
    server = SupervisedLitServer(
        api,
        watch=supervisor.watch,
        on_shutdown=supervisor.stand_down,
        # by the time the HTTP processes are stopped every request is answered: LitServe's 30 s would only add
        http_stop_seconds=HTTP_STOP_SECONDS,
        accelerator=accelerator,
        # LitServe runs every CPU worker on the one "cpu" device; the setting only picks GPUs
        devices=litserve_devices(settings.devices) if accelerator == "cuda" else 1,
        workers_per_device=settings.workers_per_device,
        timeout=settings.request_timeout,
        model_metadata={"model": model_name},
        middlewares=middlewares,
    )

    async def metrics_endpoint() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    server.app.add_api_route(METRICS_PATH, metrics_endpoint, methods=["GET"], include_in_schema=False)
    jobs = build_jobs(settings, spec.intake, spec.worker_client.run, split_waveform)
    add_job_routes(server.app, jobs)
    add_store_health(server.app, jobs)
    realtime = RealtimeRoute(
        settings,
        admission,
        SessionSlots(settings.realtime_max_sessions),
        served.names,
        spec.worker_client.run,
    )
    server.app.add_api_websocket_route(REALTIME_PATH, realtime.endpoint())
    litserve_lifespan = server.app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # each HTTP process runs its own job runner beside LitServe's response reader
        async with litserve_lifespan(app), jobs.runner.running():
            yield

    server.app.router.lifespan_context = lifespan
    forms = {route.path: route.form for route in ROUTES} | {JOBS_PATH: JobForm}
    server.app.openapi = describe_uploads(server.app, forms, open_paths if settings.api_key else None)
    return server, supervisor


def main() -> None:
    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    request_log.configure(settings.log_level)
    metrics.clear_multiprocess_dir()
    server, supervisor = build_server(settings)
    supervisor.install_signal_handler()
    limits = ConnectionLimits(
        max_connections=connections_that_fit(settings.max_connections, settings.decode_concurrency),
        header_timeout=settings.header_timeout,
        max_header_bytes=settings.max_header_kb * 1000,
    )
    log.info("each HTTP process holds at most %d connections", limits.max_connections)
    server.run(
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        generate_client_file=False,
        num_api_servers=settings.http_processes,
        # one JSON line per request comes from RequestLogMiddleware instead
        access_log=False,
        # h11, not httptools: httptools reads headers of any size before the app can refuse them
        http=guarded_protocol(limits),
        h11_max_incomplete_event_size=limits.max_header_bytes,
    )
    raise SystemExit(supervisor.exit_code)
