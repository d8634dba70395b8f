"""Builds the LitServer (routes, middlewares, /metrics, workers) from Settings, and the `python -m app` entry point.

The one place that wires both sides (app/web, app/worker) together; `python -m app` exits with the
Supervisor's verdict.
"""

from __future__ import annotations

import logging

import torch
from fastapi import Response

from app import metrics
from app.config import Settings, litserve_devices, load_settings
from app.contract import ItemError
from app.lifecycle import Supervisor
from app.litserve_adapter import ContinuousLoop, SupervisedLitServer
from app.web import native_api, request_log
from app.web.admission import HEALTH_PATH, Admission, HealthGate
from app.web.request_log import RequestLogMiddleware
from app.web.routes import ROUTES, TranscriptionRoutes
from app.web.schema import describe_uploads
from app.web.security import ApiKeyMiddleware
from app.web.uploads import claim_upload_dir
from app.worker.litapi import WhisperLitAPI, continuous_batching, resolve_device
from app.worker.loading import default_model_spec, model_display_name

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"


def build_server(settings: Settings) -> tuple[SupervisedLitServer, Supervisor]:
    """A LitServer whose workers batch requests from every upload route, and the Supervisor watching it."""
    claim_upload_dir(settings.tmp_dir)
    admission = Admission(settings.max_queue)
    # resolved once: the worker loads this spec, clients ask for it by this name, /info shows it
    model_spec = settings.model or default_model_spec(torch.cuda.is_available())
    model_name = model_display_name(model_spec)
    spec = TranscriptionRoutes(settings, admission, model_name)
    api = WhisperLitAPI(
        settings,
        model_spec,
        max_batch_size=settings.max_batch_size,
        batch_timeout=settings.batch_timeout,
        spec=spec,
        # continuous batching answers each request as its last window ends, from a loop of its own
        loop=ContinuousLoop() if continuous_batching(settings) else "auto",
    )
    open_paths = frozenset({HEALTH_PATH} if settings.metrics_require_key else {HEALTH_PATH, METRICS_PATH})

    def render_error(path: str, error: ItemError) -> Response:
        return spec.error_renderers.get(path, native_api.error_response)(error)

    # the first is innermost: the log sees every answer, 401s included; the key is checked before /health's gate
    middlewares: list[tuple[type, dict[str, object]]] = [(HealthGate, {"admission": admission})]
    if settings.api_key:
        key = settings.api_key.get_secret_value()
        middlewares.append((ApiKeyMiddleware, {"key": key, "open_paths": open_paths, "render_error": render_error}))
    middlewares.append((RequestLogMiddleware, {}))
    accelerator = resolve_device(settings.device)
    supervisor = Supervisor(admission, settings.shutdown_grace)
    server = SupervisedLitServer(
        api,
        watch=supervisor.watch,
        on_shutdown=supervisor.stand_down,
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
    forms = {route.path: route.form for route in ROUTES}
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
    server.run(
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        generate_client_file=False,
        num_api_servers=settings.http_processes,
        # one JSON line per request comes from RequestLogMiddleware instead
        access_log=False,
    )
    raise SystemExit(supervisor.exit_code)
