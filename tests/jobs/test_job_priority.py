"""A ten-minute file through a job while short synchronous requests are served: they go between its windows.

Not a timing: the job's own progress counts how many of its windows each short request waited for. While a
synchronous request is held the runner submits none, so a request waits for the window already in the worker
and no more (the latency this gives is measured by scripts/job_latency.py, not here).
"""

from __future__ import annotations

from pathlib import Path

from harness.jobs_client import job, submitted, wait_until_over, wait_until_windows_done
from harness.service import ServiceProcess
from harness.speech import looped

SHORT_REQUESTS = 5
# a window finishing in the instant between reading the job's progress and the request being held lets one
# more in; a runner that kept submitting under load would add one or more to every request
RACES_ALLOWED = 2


def test_short_requests_are_answered_between_a_long_jobs_windows(
    jobs_service: ServiceProcess, minute_long_wav: Path, fox_wav: Path
) -> None:
    ten_minutes = looped(minute_long_wav, 10, minute_long_wav.parent / "ten-minutes.ogg")
    job_id = submitted(jobs_service, ten_minutes, response_format="text")
    wait_until_windows_done(jobs_service, job_id, 1)

    windows_during: list[int] = []
    for _ in range(SHORT_REQUESTS):
        before = job(jobs_service, job_id).json()
        response = jobs_service.transcribe(fox_wav, response_format="text")
        after = job(jobs_service, job_id).json()
        assert response.status_code == 200, response.text
        assert "fox" in response.text.lower()
        assert before["status"] == after["status"] == "running", "the job ran all along"
        windows_during.append(after["progress"]["windows_done"] - before["progress"]["windows_done"])

    assert sum(windows_during) <= SHORT_REQUESTS + RACES_ALLOWED, windows_during
    body = wait_until_over(jobs_service, job_id)
    assert body["status"] == "done", body
    progress = body["progress"]
    assert progress["windows_done"] == progress["windows_total"] >= 10
    assert progress["audio_seconds_done"] >= 600
