"""Builds the LitServer (routes, middlewares, /metrics, workers) from Settings, and the `python -m app` entry point.

The server is a LitServer whose processes our Supervisor watches; `python -m app` exits with its verdict.
"""

from __future__ import annotations

import logging
from multiprocessing.managers import SyncManager
from multiprocessing.process import BaseProcess

import litserve as ls
from fastapi import Response

from app import metrics
from app.config import Settings, litserve_devices, load_settings
from app.errors import ItemError
from app.lifecycle import Supervisor
from app.web import native_api, request_log
from app.web.admission import HEALTH_PATH, Admission, HealthGate
from app.web.request_log import RequestLogMiddleware
from app.web.routes import TranscriptionRoutes
from app.web.schema import describe_uploads
from app.web.security import ApiKeyMiddleware
from app.web.uploads import claim_upload_dir
from app.worker.continuous_loop import ContinuousLoop
from app.worker.litapi import WhisperLitAPI, continuous_batching, resolve_device

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"


class WhisperServer(ls.LitServer):
    """A LitServer whose worker and HTTP processes are watched by our Supervisor instead of LitServe's monitor."""

    def __init__(self, api: WhisperLitAPI, supervisor: Supervisor, **options: object) -> None:
        super().__init__(api, **options)
        self.supervisor = supervisor

    def _start_worker_monitoring(self, manager: SyncManager, uvicorn_workers: dict) -> None:
        # LitServe calls this once every process runs; its own monitor would leave waiting requests hanging
        def processes() -> list[BaseProcess]:
            return [*self.inference_workers, *uvicorn_workers.values()]

        self.supervisor.watch(processes, self._shutdown_event.set)

    def _perform_graceful_shutdown(self, *args: object, **kwargs: object) -> None:
        self.supervisor.stand_down()
        super()._perform_graceful_shutdown(*args, **kwargs)


def build_server(settings: Settings) -> WhisperServer:
    """A WhisperServer whose workers batch requests from every upload route."""
    claim_upload_dir(settings.tmp_dir)
    admission = Admission(settings.max_queue)
    spec = TranscriptionRoutes(settings, admission)
    api = WhisperLitAPI(
        settings,
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
    middlewares: list = [(HealthGate, {"admission": admission})]
    if settings.api_key:
        key = settings.api_key.get_secret_value()
        middlewares.append((ApiKeyMiddleware, {"key": key, "open_paths": open_paths, "render_error": render_error}))
    middlewares.append((RequestLogMiddleware, {}))
    accelerator = resolve_device(settings.device)
    server = WhisperServer(
        api,
        Supervisor(admission, settings.shutdown_grace),
        accelerator=accelerator,
        # LitServe runs every CPU worker on the one "cpu" device; the setting only picks GPUs
        devices=litserve_devices(settings.devices) if accelerator == "cuda" else 1,
        workers_per_device=settings.workers_per_device,
        timeout=settings.request_timeout,
        model_metadata={"model": settings.model or "default"},
        middlewares=middlewares,
    )

    async def metrics_endpoint() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    server.app.add_api_route(METRICS_PATH, metrics_endpoint, methods=["GET"], include_in_schema=False)
    server.app.openapi = describe_uploads(server.app, open_paths if settings.api_key else None)
    return server


def main() -> None:
    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    request_log.configure(settings.log_level)
    metrics.clear_multiprocess_dir()
    server = build_server(settings)
    server.supervisor.install_signal_handler()
    server.run(
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        generate_client_file=False,
        # one JSON line per request comes from RequestLogMiddleware instead
        access_log=False,
    )
    raise SystemExit(server.supervisor.exit_code)
