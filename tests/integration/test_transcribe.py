"""POST /transcribe on the real server with the real tiny.en model, over HTTP."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from harness.service import ServiceProcess
from harness.speech import duration_seconds

pytestmark = pytest.mark.integration


def send_together(
    service: ServiceProcess, uploads: list[Path], routes: list[str] | None = None, **form: str
) -> list[requests.Response]:
    """POST every upload at the same moment (a barrier releases all threads at once)."""
    barrier = threading.Barrier(len(uploads))
    routes = routes or ["/transcribe"] * len(uploads)

    def send(upload: Path, route: str) -> requests.Response:
        with upload.open("rb") as audio:
            body = audio.read()
        barrier.wait()
        return requests.post(f"{service.url}{route}", files={"file": (upload.name, body)}, data=form, timeout=300)

    with ThreadPoolExecutor(len(uploads)) as pool:
        return list(pool.map(send, uploads, routes))


def histogram_delta(service: ServiceProcess, action: Callable[[], object], name: str) -> dict[str, float]:
    """Bucket counts of histogram `name`, summed over workers, added while `action` ran."""

    def buckets() -> dict[str, float]:
        totals: dict[str, float] = {}
        for sample, value in service.metric_samples().items():
            if sample.startswith(f"{name}_bucket"):
                bound = sample.split('le="')[1].split('"')[0]
                totals[bound] = totals.get(bound, 0.0) + value
            elif sample.startswith(f"{name}_count"):
                totals["count"] = totals.get("count", 0.0) + value
        return totals

    before = buckets()
    action()
    after = buckets()
    return {bound: after[bound] - before.get(bound, 0.0) for bound in after}


@pytest.mark.parametrize("fixture", ["fox_wav", "fox_mp3", "fox_ogg"])
def test_formats_transcribe(service: ServiceProcess, fixture: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(fixture)
    response = service.transcribe(path)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"transcription", "language", "duration", "segments"}
    assert {"quick", "brown", "fox"} <= set(body["transcription"].lower().replace(".", "").split())
    assert body["language"] == "en"
    assert body["duration"] == pytest.approx(duration_seconds(path), abs=0.1)
    assert body["segments"] and all(set(s) == {"start", "end", "text"} for s in body["segments"])
    assert 0 <= body["segments"][0]["start"] < body["segments"][-1]["end"] <= body["duration"] + 0.05


def test_content_field_of_the_original_design_is_accepted(service: ServiceProcess, fox_wav: Path) -> None:
    response = service.transcribe(fox_wav, field="content")
    assert response.status_code == 200, response.text
    assert "fox" in response.json()["transcription"].lower()


def test_clip_over_a_minute_is_windowed_and_stitched(service: ServiceProcess, minute_long_wav: Path) -> None:
    responses: list[requests.Response] = []
    windows = histogram_delta(
        service, lambda: responses.append(service.transcribe(minute_long_wav)), "whisper_batch_windows"
    )
    [response] = responses
    assert response.status_code == 200, response.text
    # one model pass over at least three windows of at most 30 s (and any follow-ups of windows that ended early)
    assert windows["count"] == 1 and windows["2.0"] == 0
    body = response.json()
    assert body["duration"] > 60
    segments = body["segments"]
    starts = [s["start"] for s in segments]
    assert starts == sorted(starts)
    assert segments[-1]["end"] > 55, "segments of later windows must carry whole-file times"
    text = body["transcription"].lower()
    assert "fox" in text and "cat" in text  # first and last sentences both present


def test_concurrent_uploads_form_one_batch(service: ServiceProcess, five_second_clips: list[Path]) -> None:
    responses: list[requests.Response] = []
    delta = histogram_delta(
        service, lambda: responses.extend(send_together(service, five_second_clips)), "whisper_batch_size"
    )
    assert [r.status_code for r in responses] == [200] * len(five_second_clips)
    assert "fox" in responses[0].json()["transcription"].lower()
    assert "snake" in responses[3].json()["transcription"].lower()
    batches = delta["count"]
    assert delta["1.0"] < batches, "some model pass must have held more than one request"
    assert batches < len(five_second_clips)


def test_bad_uploads_fail_alone_inside_a_batch(
    service: ServiceProcess, five_second_clips: list[Path], tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(np.random.default_rng(1).bytes(8000))
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp3"
    text.write_text("not audio\n" * 100)
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(five_second_clips[1].read_bytes()[:30])
    uploads = [five_second_clips[0], garbage, five_second_clips[1], empty, text, five_second_clips[3], truncated]
    responses = send_together(service, uploads)
    statuses = [r.status_code for r in responses]
    assert statuses[0] == statuses[2] == statuses[5] == 200
    assert statuses[1] == 415 and statuses[4] == 415 and statuses[6] == 415
    assert statuses[3] == 400
    assert responses[3].json() == {"detail": "the uploaded file is empty", "reason": "empty_upload"}
    assert "not decodable audio" in responses[1].json()["detail"]
    assert "fox" in responses[0].json()["transcription"].lower()


def test_request_without_a_file_is_a_clear_400(service: ServiceProcess) -> None:
    response = requests.post(f"{service.url}/transcribe", data={"language": "en"}, files={"x": ("", b"")})
    assert response.status_code == 400
    assert "'file' field" in response.json()["detail"]
    not_multipart = requests.post(f"{service.url}/transcribe", json={"file": "x"})
    assert not_multipart.status_code == 400
    assert "multipart/form-data" in not_multipart.json()["detail"]


def test_options_are_validated(service: ServiceProcess, fox_wav: Path) -> None:
    response = service.transcribe(fox_wav, task="summarise")
    assert response.status_code == 400
    assert "task must be one of transcribe, translate" in response.json()["detail"]
    assert service.transcribe(fox_wav, language="en", task="transcribe").status_code == 200


def test_metrics_describe_the_traffic(service: ServiceProcess, fox_wav: Path) -> None:
    before = service.metric_samples()
    assert service.transcribe(fox_wav).status_code == 200
    after = service.metric_samples()
    ok = 'whisper_requests_total{route="/transcribe",status="200"}'
    assert after[ok] == before.get(ok, 0) + 1
    audio = sum(v for k, v in after.items() if k.startswith("whisper_audio_seconds_total"))
    audio_before = sum(v for k, v in before.items() if k.startswith("whisper_audio_seconds_total"))
    assert audio - audio_before == pytest.approx(duration_seconds(fox_wav), abs=0.1)
    assert after["whisper_requests_in_flight"] == 0
    for family in (
        "whisper_queue_wait_seconds_count",
        "whisper_inference_seconds_count",
        "whisper_batch_windows_count",
    ):
        assert any(k.startswith(family) for k in after), family
    assert requests.get(f"{service.url}/health", timeout=5).status_code == 200


def test_upload_directory_is_empty_afterwards(service: ServiceProcess, fox_wav: Path) -> None:
    assert service.transcribe(fox_wav).status_code == 200
    assert list(service.upload_dir.iterdir()) == []
