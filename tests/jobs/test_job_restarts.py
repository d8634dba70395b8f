"""Jobs across crashes and replicas: a service killed mid-job resumes it after restart, on SQLite and PostgreSQL;
two instances on one PostgreSQL answer for each other's jobs; another key sees none of them; results expire.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from app.web.jobs.model import JobStatus
from app.web.jobs.store import JobStore
from harness.jobs_client import (
    OWNER_SECRET,
    STARTUP_SECONDS,
    job,
    jobs_env,
    submitted,
    wait_until_over,
    wait_until_windows_done,
)
from harness.service import ServiceProcess, wait_until

pytestmark = pytest.mark.integration

# a runner that stops renewing loses its job this soon: the restarted service picks it up quickly
LEASE_SECONDS = "6"
# one window at a time, so a crash finds the job part done
ONE_WINDOW = {"WHISPER_JOBS_LEASE_SECONDS": LEASE_SECONDS, "WHISPER_JOBS_WINDOWS_IN_FLIGHT": "1"}
# windows done before the crash; the rest must be done after it, and only the rest
DONE_BEFORE_CRASH = 2
# long enough to read a finished job back on a busy machine, short enough to wait for its expiry
TTL_SECONDS = 30


def crash(service: ServiceProcess) -> None:
    """SIGKILL the whole process tree: no drain, no release, as a power cut or an OOM kill would."""
    os.killpg(service.process.pid, signal.SIGKILL)
    service.process.wait(timeout=30)


def completions(job_id: str, *services: ServiceProcess) -> int:
    return sum(service.log_path.read_text().count(f"job {job_id}: done") for service in services)


def requests_transcribed(service: ServiceProcess) -> float:
    """Requests this instance's model worker answered: one per job window (these tests send no others).

    Not whisper_batch_windows: that counts the model's 30 s windows, VAD's cuts and seek-back follow-ups
    included, which are more than the job's windows.
    """
    return service.metric_total("whisper_batch_size_sum")


def stored_rows(jobs_db: str) -> int:
    """Rows in the jobs table, expired or not (the store's reads hide expired ones before the sweep runs)."""
    with JobStore.open(jobs_db, OWNER_SECRET.encode()).backend.transaction() as tx:
        return tx.execute("SELECT COUNT(*) AS jobs FROM whisper_jobs").fetchone()["jobs"]


def test_a_job_interrupted_by_a_crash_resumes_after_restart_on_sqlite(
    tmp_path: Path, model_cache_dir: Path, few_minutes_speech: Path
) -> None:
    jobs_db, jobs_dir = str(tmp_path / "jobs.db"), tmp_path / "job-uploads"
    first, second = (
        ServiceProcess(tmp_path / name, model_cache_dir, STARTUP_SECONDS, **jobs_env(jobs_db, jobs_dir, **ONE_WINDOW))
        for name in ("first", "second")
    )
    try:
        interrupted_job_resumes_after_restart(first.start(), second, jobs_db, jobs_dir, few_minutes_speech)
    finally:
        # stopped here whatever failed: a service left running would load the machine for the tests after it
        second.stop()
        first.stop()


def interrupted_job_resumes_after_restart(
    first: ServiceProcess, second: ServiceProcess, jobs_db: str, jobs_dir: Path, audio: Path
) -> None:
    """`first` crashes part way through a job; `second`, started after on the same store, finishes it."""
    job_id = submitted(first, audio, response_format="text")
    wait_until_windows_done(first, job_id, DONE_BEFORE_CRASH)
    crash(first)
    at_crash = JobStore.open(jobs_db, OWNER_SECRET.encode()).get(job_id)
    assert at_crash.status is JobStatus.RUNNING
    assert DONE_BEFORE_CRASH <= at_crash.windows_done < at_crash.windows_total
    second.start()
    body = wait_until_over(second, job_id)
    assert body["status"] == "done", body
    assert body["attempts"] == 2
    assert body["progress"]["windows_done"] == body["progress"]["windows_total"] == at_crash.windows_total
    # resumed, not restarted: the second run transcribed only the windows the first had not saved
    assert requests_transcribed(second) == at_crash.windows_total - at_crash.windows_done
    assert completions(job_id, first, second) == 1
    assert "the quick brown fox" in body["result"].lower()
    assert list(jobs_dir.iterdir()) == []


def test_replicas_on_one_postgresql_share_jobs_and_take_over_a_crashed_ones_work(
    tmp_path: Path, model_cache_dir: Path, fresh_postgres_url: str, few_minutes_speech: Path, fox_wav: Path
) -> None:
    jobs_dir = tmp_path / "job-uploads"
    env = jobs_env(fresh_postgres_url, jobs_dir, **ONE_WINDOW, WHISPER_JOBS_TTL=str(TTL_SECONDS))
    # two replicas with the key, and a third with another key: it runs jobs too, but sees none of theirs
    first, second = (
        ServiceProcess(tmp_path / name, model_cache_dir, STARTUP_SECONDS, **env).launch() for name in ("a", "b")
    )
    stranger = ServiceProcess(
        tmp_path / "c", model_cache_dir, STARTUP_SECONDS, **{**env, "WHISPER_API_KEY": "another-key"}
    ).launch()
    replicas = [first, second, stranger]
    try:
        for replica in replicas:
            replica.wait_until_healthy()
        short = submitted(first, fox_wav, response_format="text")
        assert wait_until_over(second, short)["status"] == "done"
        assert job(second, short).json()["result"] == job(first, short).json()["result"]
        assert job(stranger, short).status_code == 404

        long = submitted(second, few_minutes_speech, response_format="text")
        wait_until_windows_done(first, long, DONE_BEFORE_CRASH)
        holder = next(r for r in replicas if f"job {long}: running" in r.log_path.read_text())
        crash(holder)
        reader = first if holder is not first else second
        body = wait_until_over(reader, long)
        assert (body["status"], body["attempts"]) == ("done", 2)
        assert completions(long, *replicas) == 1
        assert list(jobs_dir.iterdir()) == []

        # WHISPER_JOBS_TTL after they ended, the jobs are gone, rows and all
        wait_until(lambda: job(reader, long).status_code == 404, TTL_SECONDS * 4, "the long job expired")
        wait_until(lambda: stored_rows(fresh_postgres_url) == 0, TTL_SECONDS * 4, "the expired rows deleted")
    finally:
        for replica in replicas:
            replica.stop()
