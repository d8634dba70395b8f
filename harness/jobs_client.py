"""What the jobs tests send and wait for: submitting a job, polling it to a status, the service's job settings."""

from __future__ import annotations

from pathlib import Path

import requests

from harness.service import ServiceProcess, wait_until

API_KEY = "jobs-test-key-0b9e41"
WEBHOOK_SECRET = "jobs-webhook-secret-7a3c"
# the jobs service's attempts at each webhook call
WEBHOOK_ATTEMPTS = 3
# the jobs service's deadline for one webhook attempt: a receiver that never finishes answering is cut at it
WEBHOOK_TIMEOUT_SECONDS = 4.0
# given, so the tests can open the services' stores themselves (and none generates one in its job directory)
OWNER_SECRET = "jobs-owner-secret-5d1f"
# enough for the ten-minute Opus file and a minute of WAV, not for two minutes of WAV at once
BUDGET_BYTES = 3_500_000
# generous ceilings: a job of twenty windows, and three services loading their models at once, on a busy
# 2-core machine (a quiet one needs a tenth of either)
JOB_SECONDS = 900.0
STARTUP_SECONDS = 600.0
# a job's status is polled over HTTP: often enough to catch each window, rarely enough not to load the service
JOB_POLL_SECONDS = 0.25


def jobs_env(database: str | Path, jobs_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "WHISPER_API_KEY": API_KEY,
        "WHISPER_JOBS_DB": str(database),
        "WHISPER_JOBS_DIR": str(jobs_dir),
        "WHISPER_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "WHISPER_JOBS_OWNER_SECRET": OWNER_SECRET,
        # the window counts these tests expect: a minute and more of speech takes two job windows
        "WHISPER_JOBS_WINDOW_SECONDS": "60",
        **extra,
    }


def submit(service: ServiceProcess, audio: Path, headers: dict | None = None, **form: str) -> requests.Response:
    with audio.open("rb") as upload:
        return requests.post(
            f"{service.url}/v1/jobs",
            files={"file": (audio.name, upload)},
            data=form,
            headers=service.auth_headers if headers is None else headers,
            timeout=120,
        )


def submitted(service: ServiceProcess, audio: Path, **form: str) -> str:
    """Submit and return the job's id, failing with the service's answer unless it is 202."""
    response = submit(service, audio, service.auth_headers, **form)
    assert response.status_code == 202, response.text
    assert response.headers["Location"] == f"/v1/jobs/{response.json()['id']}"
    return response.json()["id"]


def job(service: ServiceProcess, job_id: str) -> requests.Response:
    return requests.get(f"{service.url}/v1/jobs/{job_id}", headers=service.auth_headers, timeout=30)


def wait_for(service: ServiceProcess, job_id: str, condition, what: str, timeout: float = JOB_SECONDS) -> dict:
    """Poll the job until `condition(body)` holds; returns that body."""

    def check() -> dict | None:
        response = job(service, job_id)
        if response.status_code == 200 and condition(response.json()):
            return response.json()
        return None

    return wait_until(check, timeout, f"job {job_id}: {what}", JOB_POLL_SECONDS)


def wait_until_over(service: ServiceProcess, job_id: str, timeout: float = JOB_SECONDS) -> dict:
    return wait_for(service, job_id, lambda body: body["status"] in ("done", "failed", "cancelled"), "over", timeout)


def wait_until_windows_done(service: ServiceProcess, job_id: str, windows: int) -> dict:
    return wait_for(
        service, job_id, lambda body: body["progress"]["windows_done"] >= windows, f"{windows} windows done"
    )
