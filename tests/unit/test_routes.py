"""The HTTP side in-process: every upload route over a real ASGI stack, with the model worker stood in for.

The upload is really received onto a temp dir and really decoded by ffmpeg; only WorkerClient is replaced,
so these tests show what the web side does with each answer a worker may give, in seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from app.config import Settings
from app.contract import (
    ItemError,
    LanguageGuess,
    QueuedRequest,
    Reason,
    Reported,
    Segment,
    Transcript,
    TranscriptionOptions,
    WorkerTiming,
    read_waveform,
)
from app.web.admission import HEALTH_PATH, Admission, HealthGate, Phase
from app.web.forms import ServedModel
from app.web.request_log import RequestLogMiddleware
from app.web.routes import TranscriptionRoutes
from app.web.security import ApiKeyMiddleware

KEY = "unit-test-key"
TRANSCRIPT = Transcript(
    "Hello there.",
    "en",
    2.0,
    [Segment(0.0, 1.5, " Hello there.", (1, 2), 0.0, -0.2, 1.1, 0.01)],
)

Answer = Callable[[QueuedRequest], Reported | ItemError]


class StandInWorker:
    """Answers every job with `answer`, after checking the waveform file the HTTP side queued."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.jobs: list[QueuedRequest] = []

    async def run(
        self, request: QueuedRequest, arrived_at: float, keep_waiting: Callable[[], None]
    ) -> Reported | ItemError:
        keep_waiting()
        assert len(read_waveform(Path(request.waveform_path))) > 0, "a decoded waveform is queued, never the upload"
        self.jobs.append(request)
        return self.answer(request)


def reported(outcome: Transcript | LanguageGuess | ItemError) -> Answer:
    return lambda job: Reported(outcome, WorkerTiming(0.0, 0.01, 1))


class Web:
    """The web side of one service: its ASGI app, its admission, its stand-in worker and its upload dir."""

    def __init__(self, tmp_path: Path, answer: Answer, api_key: str | None = None, **settings: object) -> None:
        self.upload_dir = tmp_path / "uploads"
        self.upload_dir.mkdir()
        config = Settings(tmp_dir=self.upload_dir, **settings)  # type: ignore[arg-type]
        self.admission = Admission(config.max_queue)
        self.routes = TranscriptionRoutes(config, self.admission, ServedModel(("whisper-1", "tiny.en")))
        self.worker = StandInWorker(answer)
        self.routes.worker_client = self.worker  # type: ignore[assignment]
        app = FastAPI()
        for path, endpoint, methods in self.routes.endpoints:
            app.add_api_route(path, endpoint, methods=methods)
        app.add_api_route(HEALTH_PATH, lambda: "ok", methods=["GET"])
        app.add_middleware(HealthGate, admission=self.admission)
        if api_key:
            renderers = self.routes.error_renderers
            app.add_middleware(
                ApiKeyMiddleware,
                key=api_key,
                open_paths={HEALTH_PATH},
                render_error=lambda path, error: renderers[path](error),
            )
        app.add_middleware(RequestLogMiddleware)
        self.client = TestClient(app)

    def post(self, path: str, audio: Path, headers: dict[str, str] | None = None, **form: str):
        with audio.open("rb") as upload:
            return self.client.post(path, files={"file": ("a.wav", upload)}, data=form, headers=headers or {})

    def leftovers(self) -> list[Path]:
        return list(self.upload_dir.iterdir())


ANSWER_TRANSCRIPT = reported(TRANSCRIPT)


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Callable[..., Web]]:
    yield lambda answer=ANSWER_TRANSCRIPT, **settings: Web(tmp_path, answer, **settings)


def test_transcribe_queues_the_waveform_with_the_forms_options(web: Callable[..., Web], fox_wav: Path) -> None:
    service = web()
    response = service.post("/transcribe", fox_wav, language="en", temperature="0.2")
    assert response.status_code == 200
    assert response.json() == {
        "transcription": "Hello there.",
        "language": "en",
        "duration": 2.0,
        "segments": [{"start": 0.0, "end": 1.5, "text": "Hello there."}],
    }
    assert service.worker.jobs[0].work == TranscriptionOptions(language="en", temperature=0.2)
    assert service.leftovers() == [], "the upload and its waveform are gone once answered"


def test_both_protocols_share_one_writer_per_format(web: Callable[..., Web], fox_wav: Path) -> None:
    service = web()
    for response_format in ("srt", "vtt", "text", "verbose_json"):
        native = service.post("/transcribe", fox_wav, response_format=response_format)
        openai = service.post("/v1/audio/transcriptions", fox_wav, model="whisper-1", response_format=response_format)
        assert native.status_code == openai.status_code == 200
        assert native.content == openai.content and native.headers["content-type"] == openai.headers["content-type"]


def test_detect_language_renders_the_guess(web: Callable[..., Web], fox_wav: Path) -> None:
    service = web(reported(LanguageGuess("de", 0.9, (("de", 0.9), ("en", 0.1)))))
    body = service.post("/detect-language", fox_wav).json()
    assert body == {
        "language": "de",
        "probability": 0.9,
        "candidates": [{"language": "de", "probability": 0.9}, {"language": "en", "probability": 0.1}],
    }


def test_a_workers_item_error_answers_in_each_protocols_shape(web: Callable[..., Web], fox_wav: Path) -> None:
    service = web(reported(ItemError(Reason.INFERENCE_FAILED, "inference failed: ValueError")))
    native = service.post("/transcribe", fox_wav)
    assert native.status_code == 500
    assert native.json() == {"detail": "inference failed: ValueError", "reason": "inference_failed"}
    openai = service.post("/v1/audio/translations", fox_wav, model="whisper-1")
    assert openai.status_code == 500 and openai.json()["error"]["type"] == "server_error"


def test_unreadable_audio_never_reaches_the_worker(web: Callable[..., Web], tmp_path: Path) -> None:
    service = web()
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"\x00\xff" * 4000)
    assert service.post("/transcribe", garbage).status_code == 415
    openai = service.post("/v1/audio/transcriptions", garbage, model="whisper-1")
    assert openai.status_code == 400 and openai.json()["error"]["code"] == "unreadable_audio"
    assert service.worker.jobs == [] and service.leftovers() == []


def test_a_bad_option_is_refused_before_decoding(web: Callable[..., Web], fox_wav: Path) -> None:
    service = web()
    response = service.post("/transcribe", fox_wav, task="summarise")
    assert response.status_code == 400 and response.json()["param"] == "task"
    assert service.worker.jobs == [] and service.leftovers() == []


def test_a_full_queue_answers_503_with_retry_after(web: Callable[..., Web], fox_wav: Path) -> None:
    service = web(max_queue=1)
    with service.admission.admit():
        response = service.post("/transcribe", fox_wav)
    assert (response.status_code, response.headers["Retry-After"]) == (503, "2")
    assert response.json()["reason"] == "overloaded"


def test_a_draining_service_refuses_uploads_and_health(web: Callable[..., Web], fox_wav: Path) -> None:
    service = web()
    service.admission.enter(Phase.DRAINING)
    response = service.post("/transcribe", fox_wav)
    assert (response.status_code, response.headers["Retry-After"]) == (503, "10")
    assert service.client.get(HEALTH_PATH).status_code == 503


def test_a_request_past_its_timeout_gets_504_and_leaves_nothing(web: Callable[..., Web], fox_wav: Path) -> None:
    class Hanging(StandInWorker):
        async def run(self, request: QueuedRequest, arrived_at: float, keep_waiting: Callable[[], None]) -> Reported:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    service = web(request_timeout=2.0)
    service.routes.worker_client = Hanging(reported(TRANSCRIPT))  # type: ignore[assignment]
    response = service.post("/transcribe", fox_wav)
    assert response.status_code == 504 and response.json()["reason"] == "timeout"
    assert service.leftovers() == []


def test_the_key_guards_every_route_in_its_own_shape(tmp_path: Path, fox_wav: Path) -> None:
    service = Web(tmp_path, reported(TRANSCRIPT), api_key=KEY)
    assert service.client.get(HEALTH_PATH).status_code == 200
    native = service.post("/transcribe", fox_wav)
    assert native.status_code == 401 and native.json()["reason"] == "unauthorized"
    openai = service.post("/v1/audio/transcriptions", fox_wav, model="whisper-1")
    assert openai.status_code == 401 and openai.json()["error"]["code"] == "unauthorized"
    allowed = service.post("/transcribe", fox_wav, headers={"X-API-Key": KEY})
    assert allowed.status_code == 200


def test_every_answer_carries_a_request_id(web: Callable[..., Web], fox_wav: Path) -> None:
    service = web()
    response = service.post("/transcribe", fox_wav, headers={"X-Request-ID": "client-id-1"})
    assert response.headers["X-Request-ID"] == "client-id-1"
