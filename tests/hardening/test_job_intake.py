"""Job uploads come in through the one intake, so a hostile or careless client gets what /transcribe gives it.

Slow job bodies hold no place and get 408; numbers no recording needs (Infinity, 1e999, 401 digits) are a 400
naming the field on every route; paging errors answer in our shape; what a job cannot do (another language on
an English-only model, translation, streaming, log-probabilities) is refused at once, and unknown fields are
not stored. All against the shared hardened service (tiny.en, WHISPER_MAX_QUEUE=4).
"""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from app.web.jobs.wiring import OWNER_SECRET_FILE
from harness.service import ServiceProcess, wait_until
from tests.hardening.conftest import MAX_QUEUE, log_line, trickle

pytestmark = pytest.mark.integration

SLOW_JOBS = 2 * MAX_QUEUE
# the service's default WHISPER_UPLOAD_GRACE
UPLOAD_GRACE_SECONDS = 10
JOBS_PATH = "/v1/jobs"
NUMBERS_NO_RECORDING_NEEDS = ("Infinity", "-Infinity", "NaN", "1e999", "9" * 401, "-1")


def job_uploads(service: ServiceProcess) -> list[Path]:
    """What the job directory holds besides the owner secret the store keeps beside the uploads."""
    return [path for path in (service.upload_dir.parent / "job-uploads").iterdir() if path.name != OWNER_SECRET_FILE]


def stored_requests(service: ServiceProcess) -> dict[str, str]:
    """Each job's id and the request the store keeps for it, read from the service's SQLite file itself."""
    with sqlite3.connect(service.upload_dir.parent / "jobs.db") as database:
        return dict(database.execute("SELECT id, request FROM whisper_jobs").fetchall())


def submit(service: ServiceProcess, audio: Path, files: dict | None = None, **form: str) -> requests.Response:
    with audio.open("rb") as upload:
        return requests.post(
            f"{service.url}{JOBS_PATH}",
            files={"file": (audio.name, upload), **(files or {})},
            data=form,
            headers=service.auth_headers,
            timeout=120,
        )


def cancel(service: ServiceProcess, job_id: str) -> None:
    """Cancel a job the test needed only submitted, so the shared service does not spend its CPU on it."""
    requests.delete(f"{service.url}{JOBS_PATH}/{job_id}", headers=service.auth_headers, timeout=30)


def test_slow_job_uploads_hold_no_place_and_get_408_while_others_are_served(
    hardened: ServiceProcess, fox_wav: Path
) -> None:
    stop = threading.Event()
    started = [threading.Event() for _ in range(SLOW_JOBS)]
    with ThreadPoolExecutor(SLOW_JOBS + MAX_QUEUE) as pool:
        slow = [pool.submit(trickle, hardened, event, stop, JOBS_PATH) for event in started]
        try:
            for event in started:
                assert event.wait(30)
            # a full queue's worth: /transcribe and one job submission, while every slow job upload is still sending
            others = [pool.submit(hardened.transcribe, fox_wav) for _ in range(MAX_QUEUE - 1)]
            job = pool.submit(submit, hardened, fox_wav)
            still_sending = sum(not future.done() for future in slow)
            served = [future.result() for future in others]
            submitted = job.result()
            answers = [future.result(timeout=UPLOAD_GRACE_SECONDS + 60) for future in slow]
        finally:
            stop.set()
    statuses = [r.status_code for r in served]
    print(f"{SLOW_JOBS} job uploads at 1 byte/s; {MAX_QUEUE - 1} /transcribe and a job beside them: {statuses}")
    assert still_sending == SLOW_JOBS, "the others were sent while every slow job upload was sending"
    assert statuses == [200] * (MAX_QUEUE - 1), [r.text for r in served]
    assert submitted.status_code == 202, submitted.text
    cancel(hardened, submitted.json()["id"])
    assert [a.status for a in answers] == [408] * SLOW_JOBS, answers
    assert {a.json()["reason"] for a in answers} == {"upload_too_slow"}
    assert wait_until(lambda: not list(hardened.upload_dir.iterdir()), 5, "upload dir empty")
    assert job_uploads(hardened) == []


@pytest.mark.parametrize("number", NUMBERS_NO_RECORDING_NEEDS)
@pytest.mark.parametrize("key", ["threshold", "prefix_padding_ms", "silence_duration_ms"])
def test_server_vad_numbers_no_recording_needs_are_a_400_naming_the_field(
    hardened: ServiceProcess, fox_wav: Path, key: str, number: str
) -> None:
    strategy = f'{{"type": "server_vad", "{key}": {number}}}'
    answer = requests.post(
        f"{hardened.url}/v1/audio/transcriptions",
        files={"file": fox_wav.read_bytes()},
        data={"model": "whisper-1", "chunking_strategy": strategy},
        headers=hardened.auth_headers,
        timeout=60,
    )
    error = answer.json()["error"]
    assert (answer.status_code, error["code"], error["param"]) == (400, "bad_option", "chunking_strategy"), answer.text
    assert key in error["message"]


@pytest.mark.parametrize("number", NUMBERS_NO_RECORDING_NEEDS)
def test_temperatures_no_recording_needs_are_a_400_naming_the_field_on_every_route(
    hardened: ServiceProcess, fox_wav: Path, number: str
) -> None:
    native = requests.post(
        f"{hardened.url}/transcribe",
        files={"file": fox_wav.read_bytes()},
        data={"temperature": number},
        headers=hardened.auth_headers,
        timeout=60,
    )
    job = submit(hardened, fox_wav, temperature=number)
    for answer in (native, job):
        assert (answer.status_code, answer.json()["param"]) == (400, "temperature"), answer.text
    assert job_uploads(hardened) == []


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("limit=abc", "limit"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=-1", "limit"),
        ("limit=1e999", "limit"),
        ("limit=Infinity", "limit"),
        ("limit=" + "9" * 401, "limit"),
        ("after=../../etc/passwd", "after"),
    ],
)
def test_paging_errors_answer_in_our_shape_naming_the_parameter(
    hardened: ServiceProcess, query: str, param: str
) -> None:
    answer = requests.get(f"{hardened.url}{JOBS_PATH}?{query}", headers=hardened.auth_headers, timeout=30)
    assert answer.status_code == 400, answer.text
    assert (answer.json()["reason"], answer.json()["param"]) == ("bad_option", param)


@pytest.mark.parametrize(
    ("form", "param", "says"),
    [
        ({"language": "fr"}, "language", "English-only"),
        ({"task": "translate"}, "model", "English-only"),
        ({"stream": "true"}, "stream", "not streamed"),
    ],
)
def test_what_a_job_cannot_do_is_refused_at_submission(
    hardened: ServiceProcess, fox_wav: Path, form: dict[str, str], param: str, says: str
) -> None:
    before = stored_requests(hardened)
    answer = submit(hardened, fox_wav, **form)
    assert (answer.status_code, answer.json()["param"]) == (400, param), answer.text
    assert says in answer.json()["detail"]
    assert stored_requests(hardened) == before and job_uploads(hardened) == []


def test_log_probabilities_are_refused_on_a_job(hardened: ServiceProcess, fox_wav: Path) -> None:
    answer = submit(hardened, fox_wav, files={"include[]": (None, "logprobs")})
    assert (answer.status_code, answer.json()["param"]) == (400, "include"), answer.text


def test_an_english_only_model_refuses_other_languages_before_decoding(hardened: ServiceProcess, fox_wav: Path) -> None:
    answer = hardened.transcribe(fox_wav, language="de")
    assert (answer.status_code, answer.json()["param"]) == (400, "language"), answer.text
    assert "English-only" in answer.json()["detail"]
    # refused by the form, before ffmpeg: the request's log line has no decode time
    assert log_line(hardened, answer.headers["X-Request-ID"])["decode_ms"] is None


def test_unknown_fields_are_not_stored_with_the_job(hardened: ServiceProcess, fox_wav: Path) -> None:
    filler = "x" * 60_000
    answer = submit(hardened, fox_wav, response_format="srt", unknown_field=filler, another_unknown="marker-6d1f")
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    cancel(hardened, job_id)
    stored = stored_requests(hardened)[job_id]
    assert "marker-6d1f" not in stored and filler not in stored
    assert len(stored) < 1000, stored
    assert answer.json()["response_format"] == "srt"
