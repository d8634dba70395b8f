"""The /v1/jobs API against the real service: submit, poll, fetch, list, cancel in each state, the upload budget."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
import srt

from harness.jobs_client import BUDGET_BYTES, job, submit, submitted, wait_until_over, wait_until_windows_done
from harness.service import ServiceProcess

pytestmark = pytest.mark.integration


def kept_uploads(service: ServiceProcess) -> list[str]:
    return sorted(path.name for path in (service.upload_dir.parent / "job-uploads").iterdir())


def test_a_job_gives_what_transcribe_gives(jobs_service: ServiceProcess, fox_wav: Path) -> None:
    job_id = submitted(jobs_service, fox_wav, response_format="verbose_json", language="en")
    body = wait_until_over(jobs_service, job_id)
    assert body["status"] == "done", body
    synchronous = jobs_service.transcribe(fox_wav, response_format="verbose_json", language="en").json()
    assert body["result"]["text"] == synchronous["text"]
    assert [s["start"] for s in body["result"]["segments"]] == [s["start"] for s in synchronous["segments"]]
    assert body["progress"]["windows_done"] == body["progress"]["windows_total"] == 1
    assert body["progress"]["audio_seconds"] == pytest.approx(synchronous["duration"], abs=0.01)
    assert body["timings"]["running_seconds"] > 0
    assert body["filename"] == fox_wav.name
    result = requests.get(f"{jobs_service.url}/v1/jobs/{job_id}/result", headers=jobs_service.auth_headers, timeout=30)
    assert result.json() == body["result"]
    assert job_id + ".upload" not in kept_uploads(jobs_service)


def test_a_long_job_joins_its_windows_on_the_files_clock(jobs_service: ServiceProcess, minute_long_wav: Path) -> None:
    job_id = submitted(jobs_service, minute_long_wav, response_format="srt")
    body = wait_until_over(jobs_service, job_id)
    assert body["status"] == "done", body
    # job windows of WHISPER_JOBS_WINDOW_SECONDS (60 s): a minute and more of speech takes two
    assert body["progress"]["windows_total"] == body["progress"]["windows_done"] >= 2
    # not compared with /transcribe's answer word for word: a window that fails transcribe()'s checks is
    # sampled at a higher temperature, and sampling differs from run to run
    cues = list(srt.parse(body["result"]))
    starts = [cue.start.total_seconds() for cue in cues]
    assert starts == sorted(starts) and cues[-1].end.total_seconds() > 40, "the windows are on the file's clock"
    result = requests.get(f"{jobs_service.url}/v1/jobs/{job_id}/result", headers=jobs_service.auth_headers, timeout=30)
    assert result.headers["content-type"].startswith("application/x-subrip")
    assert result.text == body["result"]


def test_bad_requests_are_refused_before_a_job_exists(jobs_service: ServiceProcess, fox_wav: Path, tmp_path: Path):
    assert submit(jobs_service, fox_wav, headers={}).status_code == 401
    refused = submit(jobs_service, fox_wav, temperature="7")
    assert (refused.status_code, refused.json()["param"]) == (400, "temperature")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all" * 100)
    assert submit(jobs_service, junk).status_code == 415
    assert job(jobs_service, "0" * 32).status_code == 404
    assert kept_uploads(jobs_service) == []


def test_the_list_pages_through_the_callers_jobs(jobs_service: ServiceProcess, fox_wav: Path) -> None:
    ids = [submitted(jobs_service, fox_wav, response_format="text") for _ in range(3)]
    pages, after = [], None
    while True:
        params = {"limit": 2, **({"after": after} if after else {})}
        page = requests.get(f"{jobs_service.url}/v1/jobs", params=params, headers=jobs_service.auth_headers, timeout=30)
        pages.append(page.json()["jobs"])
        after = page.json()["next_after"]
        if after is None:
            break
    listed = [item["id"] for page in pages for item in page]
    assert listed[:3] == ids[::-1]
    assert all(len(page) <= 2 for page in pages)
    for job_id in ids:
        assert wait_until_over(jobs_service, job_id)["status"] == "done"


def test_cancel_in_each_state(jobs_service: ServiceProcess, few_minutes_speech: Path, fox_wav: Path) -> None:
    running = submitted(jobs_service, few_minutes_speech)
    # one job at a time per runner: this one waits behind the long one
    queued = submitted(jobs_service, fox_wav)
    wait_until_windows_done(jobs_service, running, 1)
    assert job(jobs_service, queued).json()["status"] == "queued"

    cancelled = requests.delete(f"{jobs_service.url}/v1/jobs/{queued}", headers=jobs_service.auth_headers, timeout=30)
    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")
    cancelled = requests.delete(f"{jobs_service.url}/v1/jobs/{running}", headers=jobs_service.auth_headers, timeout=30)
    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")
    assert kept_uploads(jobs_service) == []
    for job_id in (queued, running):
        result = requests.get(f"{jobs_service.url}/v1/jobs/{job_id}/result", headers=jobs_service.auth_headers)
        assert (result.status_code, result.json()["reason"]) == (409, "job_not_done")
    # the runner drops the cancelled job and takes the next one
    done = submitted(jobs_service, fox_wav)
    assert wait_until_over(jobs_service, done)["status"] == "done"
    assert job(jobs_service, running).json()["status"] == "cancelled"
    deleted = requests.delete(f"{jobs_service.url}/v1/jobs/{done}", headers=jobs_service.auth_headers, timeout=30)
    assert deleted.status_code == 204
    assert job(jobs_service, done).status_code == 404


def test_the_upload_budget_answers_507_until_kept_uploads_are_done(
    jobs_service: ServiceProcess, minute_long_wav: Path, tmp_path: Path
) -> None:
    size = minute_long_wav.stat().st_size
    assert size < BUDGET_BYTES < 2 * size
    first = submitted(jobs_service, minute_long_wav)
    refused = submit(jobs_service, minute_long_wav)
    assert (refused.status_code, refused.json()["reason"]) == (507, "storage_full"), refused.text
    assert refused.headers["Retry-After"]
    assert wait_until_over(jobs_service, first)["status"] == "done"
    second = submitted(jobs_service, minute_long_wav)
    assert wait_until_over(jobs_service, second)["status"] == "done"
