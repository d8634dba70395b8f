"""The job store on both backends: budget, claims and leases, completing once, cancel, TTL, paging."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.config import ConfigurationError, Settings
from app.contract import TranscriptionOptions, VadParameters
from app.web.jobs.model import JobRequest, JobStatus, owner_of_key
from app.web.jobs.store import JobStore, OwnerKeyChanged
from app.web.jobs.wiring import open_store

pytestmark = pytest.mark.unit

LEASE = 30.0
TTL = 3600.0
BUDGET = 1000
OWNER_SECRET = b"store-test-owner-secret"


class Clock:
    """A clock the test moves by hand, so leases and TTLs lapse exactly when the test says."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(jobs_db: str, clock: Clock) -> JobStore:
    return JobStore.open(jobs_db, OWNER_SECRET, clock)


def queue(store: JobStore, clock: Clock, job_id: str, owner: str = "alice", audio_bytes: int = 10) -> None:
    assert store.add(
        job_id,
        owner,
        JobRequest(
            TranscriptionOptions(language="en", vad_parameters=VadParameters(threshold=0.3)), "text", filename="a.wav"
        ),
        audio_bytes,
        BUDGET,
    )
    # a distinct creation time per job keeps the queue's order unambiguous
    clock.now += 1


def test_a_queued_job_reads_back_for_its_owner_only(store: JobStore, clock: Clock) -> None:
    queue(store, clock, "j1")
    job = store.get("j1", "alice")
    assert job.status is JobStatus.QUEUED
    assert job.request == JobRequest(
        TranscriptionOptions(language="en", vad_parameters=VadParameters(threshold=0.3)), "text", filename="a.wav"
    )
    assert job.audio_bytes == 10
    assert store.get("j1", "bob") is None
    assert store.get("j1") is not None


def test_the_upload_budget_refuses_a_job_that_would_pass_it_and_frees_on_completion(
    store: JobStore, clock: Clock
) -> None:
    queue(store, clock, "big", audio_bytes=BUDGET - 100)
    assert not store.add("more", "alice", JobRequest(), 101, BUDGET)
    assert store.get("more") is None
    assert store.audio_bytes_kept() == BUDGET - 100
    claim = store.claim("runner", LEASE)
    assert store.finish(claim, JobStatus.DONE, TTL, result="{}")
    assert store.audio_bytes_kept() == 0
    assert store.add("more", "alice", JobRequest(), 101, BUDGET)


def test_concurrent_adds_never_pass_the_budget_together(store: JobStore) -> None:
    with ThreadPoolExecutor(8) as pool:
        added = list(pool.map(lambda i: store.add(f"j{i}", "alice", JobRequest(), 300, BUDGET), range(8)))
    assert sum(added) == BUDGET // 300
    assert store.audio_bytes_kept() <= BUDGET


def test_claims_take_the_oldest_free_job_and_never_a_held_one(store: JobStore, clock: Clock) -> None:
    queue(store, clock, "first")
    queue(store, clock, "second")
    one = store.claim("a", LEASE)
    two = store.claim("b", LEASE)
    assert (one.job.id, two.job.id) == ("first", "second")
    assert one.job.status is JobStatus.RUNNING
    assert one.job.attempts == 1
    assert store.claim("c", LEASE) is None


def test_concurrent_claims_hand_each_job_to_exactly_one_runner(store: JobStore, clock: Clock) -> None:
    for i in range(6):
        queue(store, clock, f"j{i}")
    claimed: list[str] = []
    lock = threading.Lock()

    def runner(name: str) -> None:
        while claim := store.claim(name, LEASE):
            with lock:
                claimed.append(claim.job.id)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(runner, ["r1", "r2", "r3", "r4"]))
    assert sorted(claimed) == [f"j{i}" for i in range(6)]


def test_a_lapsed_lease_is_claimed_again_and_only_the_new_holder_completes(store: JobStore, clock: Clock) -> None:
    queue(store, clock, "j")
    crashed = store.claim("crashed", LEASE)
    assert store.save_window(crashed, 0, '{"w": 0}', 30.0, LEASE)
    clock.now += LEASE + 1
    again = store.claim("restarted", LEASE)
    assert again.job.id == "j"
    assert again.job.attempts == 2
    assert again.job.windows_done == 1
    assert store.saved_windows("j") == {0: '{"w": 0}'}
    # the first holder woke up late: it may neither record progress nor finish
    assert not store.renew(crashed, LEASE)
    assert not store.save_window(crashed, 1, "{}", 60.0, LEASE)
    assert not store.finish(crashed, JobStatus.DONE, TTL, result="stale")
    assert store.finish(again, JobStatus.DONE, TTL, result="fresh")
    assert not store.finish(again, JobStatus.DONE, TTL, result="twice")
    job = store.get("j")
    assert (job.status, job.result, job.audio_bytes) == (JobStatus.DONE, "fresh", 0)
    assert store.saved_windows("j") == {}


def test_progress_counts_saved_windows_whatever_order_their_saves_commit_in(store: JobStore, clock: Clock) -> None:
    queue(store, clock, "j")
    claim = store.claim("a", LEASE)
    for index, seconds in ((2, 90.0), (0, 30.0), (1, 60.0), (1, 60.0)):
        assert store.save_window(claim, index, "{}", seconds, LEASE)
    job = store.get("j")
    assert (job.windows_done, job.seconds_done) == (3, 90.0)


def test_a_renewed_lease_keeps_the_job(store: JobStore, clock: Clock) -> None:
    queue(store, clock, "j")
    claim = store.claim("a", LEASE)
    clock.now += LEASE * 0.8
    assert store.renew(claim, LEASE)
    clock.now += LEASE * 0.8
    assert store.claim("b", LEASE) is None


def test_release_puts_a_job_back_at_once(store: JobStore, clock: Clock) -> None:
    queue(store, clock, "j")
    claim = store.claim("stopping", LEASE)
    assert store.release(claim)
    assert store.get("j").status is JobStatus.QUEUED
    assert store.claim("next", LEASE).job.id == "j"


@pytest.mark.parametrize("state", ["queued", "running"])
def test_cancel_stops_an_active_job_and_drops_its_data(store: JobStore, clock: Clock, state: str) -> None:
    queue(store, clock, "j")
    claim = store.claim("a", LEASE) if state == "running" else None
    if claim:
        assert store.save_window(claim, 0, "{}", 30.0, LEASE)
    assert store.cancel("j", "bob", TTL) is None
    before = store.cancel("j", "alice", TTL)
    assert before.status.value == state
    job = store.get("j")
    assert (job.status, job.audio_bytes) == (JobStatus.CANCELLED, 0)
    assert store.saved_windows("j") == {}
    if claim:
        assert not store.renew(claim, LEASE)
        assert not store.finish(claim, JobStatus.DONE, TTL, result="too late")
    assert store.cancel("j", "alice", TTL) is None


def test_a_finished_job_is_deleted_by_its_owner(store: JobStore, clock: Clock) -> None:
    queue(store, clock, "j")
    assert not store.delete("j", "alice")
    store.finish(store.claim("a", LEASE), JobStatus.FAILED, TTL, error="bad audio")
    assert store.cancel("j", "alice", TTL) is None
    assert not store.delete("j", "bob")
    assert store.delete("j", "alice")
    assert store.get("j") is None


def test_an_owed_webhook_call_is_handed_out_once_after_its_runner_had_time_to_make_it(
    store: JobStore, clock: Clock
) -> None:
    assert store.add("hooked", "alice", JobRequest(webhook_url="https://example.com/hook"), 10, BUDGET)
    queue(store, clock, "quiet")
    for _ in range(2):
        assert store.finish(store.claim("a", LEASE), JobStatus.DONE, TTL, result="{}")
    assert store.take_owed_webhooks(60) == []
    clock.now += 61
    assert [job.id for job in store.take_owed_webhooks(60)] == ["hooked"]
    assert store.take_owed_webhooks(60) == []


def test_a_settled_webhook_call_is_owed_no_more(store: JobStore, clock: Clock) -> None:
    assert store.add("hooked", "alice", JobRequest(webhook_url="https://example.com/hook"), 10, BUDGET)
    assert store.finish(store.claim("a", LEASE), JobStatus.FAILED, TTL, error="bad audio")
    store.webhook_settled("hooked")
    clock.now += 3600
    assert store.take_owed_webhooks(60) == []


def test_results_expire_after_the_ttl(store: JobStore, clock: Clock) -> None:
    queue(store, clock, "old")
    store.finish(store.claim("a", LEASE), JobStatus.DONE, TTL, result="{}")
    queue(store, clock, "waiting")
    clock.now += TTL + 1
    assert store.get("old") is None
    assert store.expire() == ["old"]
    assert store.get("waiting").status is JobStatus.QUEUED


def test_recent_pages_through_the_owners_jobs_newest_first(store: JobStore, clock: Clock) -> None:
    for i in range(5):
        queue(store, clock, f"j{i}")
    queue(store, clock, "other", owner="bob")
    first = store.recent("alice", 2)
    second = store.recent("alice", 2, after=first[-1].id)
    third = store.recent("alice", 2, after=second[-1].id)
    assert [job.id for job in first + second + third] == ["j4", "j3", "j2", "j1", "j0"]
    assert store.recent("alice", 2, after="other") == []


def test_counts_and_backlog_age(store: JobStore, clock: Clock) -> None:
    queue(store, clock, "a")
    queue(store, clock, "b")
    store.claim("r", LEASE)
    clock.now += 10
    counts = store.counts()
    assert counts[JobStatus.QUEUED] == 1
    assert counts[JobStatus.RUNNING] == 1
    assert counts[JobStatus.DONE] == 0
    assert store.oldest_queued_age() == pytest.approx(11.0)


def test_a_row_stored_with_raw_fields_reads_back_typed() -> None:
    # rows written before options were typed keep their form's raw text fields; they are validated once on read
    stored = {"fields": {"language": "english", "response_format": "srt", "word_timestamps": "true", "x": "1"},
              "webhook_url": "https://example.com/hook", "filename": "a.wav", "base_url": "http://h/"}  # fmt: skip
    request = JobRequest.from_json(json.dumps(stored))
    assert request == JobRequest(
        TranscriptionOptions(language="en", word_timestamps=True),
        "srt",
        "https://example.com/hook",
        "a.wav",
        "http://h/",
    )
    assert JobRequest.from_json(request.to_json()) == request


def stored_owner(store: JobStore, job_id: str) -> str:
    with store.backend.transaction(readonly=True) as tx:
        return tx.execute("SELECT owner FROM whisper_jobs WHERE id = :id", {"id": job_id}).fetchone()["owner"]


def test_the_owner_column_is_keyed_so_a_copy_of_the_store_cannot_test_key_guesses(
    store: JobStore, clock: Clock
) -> None:
    owner = owner_of_key("the-api-key")
    queue(store, clock, "j1", owner=owner)
    kept = stored_owner(store, "j1")
    assert kept == hmac.new(OWNER_SECRET, owner.encode(), hashlib.sha256).hexdigest()
    # the unkeyed hash of the key, which anyone could compute from a guess, is nowhere in the row
    assert owner not in kept and hashlib.sha256(b"the-api-key").hexdigest() != kept
    assert store.get("j1", owner) is not None and store.recent(owner, 5)[0].id == "j1"


def test_a_store_of_unkeyed_owners_is_migrated_once_and_another_key_is_refused(jobs_db: str, clock: Clock) -> None:
    store = JobStore.open(jobs_db, OWNER_SECRET, clock)
    owner = owner_of_key("the-api-key")
    queue(store, clock, "old")
    # the store as the release before keyed owners left it: no meta table, the key's plain SHA-256 as owner
    with store.backend.transaction() as tx:
        tx.execute("DROP TABLE whisper_store_meta")
        tx.execute("UPDATE whisper_jobs SET owner = :owner", {"owner": owner})
    migrated = JobStore.open(jobs_db, OWNER_SECRET, clock)
    assert migrated.get("old", owner) is not None
    assert stored_owner(migrated, "old") == hmac.new(OWNER_SECRET, owner.encode(), hashlib.sha256).hexdigest()
    # opened again (a restart, another replica): not hashed twice
    assert JobStore.open(jobs_db, OWNER_SECRET, clock).get("old", owner) is not None
    with pytest.raises(OwnerKeyChanged):
        JobStore.open(jobs_db, b"another secret", clock)


def test_an_unreachable_postgresql_store_is_unavailable_without_showing_its_password(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    settings = Settings(jobs_db=f"postgresql://whisper:hunter2@127.0.0.1:{port}/jobs", jobs_dir=tmp_path)
    with pytest.raises(ConfigurationError) as stopped:
        open_store(settings)
    message = str(stopped.value)
    assert f"WHISPER_JOBS_DB=postgresql://127.0.0.1:{port}/jobs" in message and "reachable" in message
    assert "hunter2" not in message
