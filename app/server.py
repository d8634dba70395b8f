"""Builds the LitServer (routes, /metrics, workers) from Settings, and the `python -m app` entry point."""

from __future__ import annotations

import logging

import litserve as ls
from fastapi import Response

from app import metrics
from app.api import WhisperLitAPI, resolve_device
from app.config import Settings, litserve_devices, load_settings
from app.routes import TranscriptionRoutes

log = logging.getLogger(__name__)


def build_server(settings: Settings) -> ls.LitServer:
    """A LitServer whose workers batch requests from POST /transcribe."""
    settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    api = WhisperLitAPI(
        settings,
        max_batch_size=settings.max_batch_size,
        batch_timeout=settings.batch_timeout,
        spec=TranscriptionRoutes(settings),
    )
    accelerator = resolve_device(settings.device)
    server = ls.LitServer(
        api,
        accelerator=accelerator,
        # LitServe runs every CPU worker on the one "cpu" device; the setting only picks GPUs
        devices=litserve_devices(settings.devices) if accelerator == "cuda" else 1,
        workers_per_device=settings.workers_per_device,
        timeout=settings.request_timeout,
        model_metadata={"model": settings.model or "default"},
    )

    async def metrics_endpoint() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    server.app.add_api_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False)
    return server


def main() -> None:
    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    metrics.clear_multiprocess_dir()
    server = build_server(settings)
    server.run(
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        generate_client_file=False,
    )
