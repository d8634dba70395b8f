"""The job store: every state change of a job as one conditional statement, on SQLite or PostgreSQL alike.

Conditions make it safe for many runners at once: a claim takes only a free job, and only the holder of
the current lease may record progress or finish it, so a job interrupted anywhere runs again but completes once.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from typing import Any

from app.web.jobs.backends import Backend, Transaction, open_backend
from app.web.jobs.model import ACTIVE_STATUSES, Claim, Job, JobRequest, JobStatus

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS whisper_jobs (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        status TEXT NOT NULL,
        request TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        expires_at DOUBLE PRECISION,
        audio_bytes BIGINT NOT NULL DEFAULT 0,
        audio_seconds DOUBLE PRECISION,
        windows_total INTEGER,
        windows_done INTEGER NOT NULL DEFAULT 0,
        seconds_done DOUBLE PRECISION NOT NULL DEFAULT 0,
        result TEXT,
        error TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        lease_token TEXT,
        lease_until DOUBLE PRECISION,
        webhook_due INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS whisper_jobs_by_owner ON whisper_jobs (owner, created_at)",
    "CREATE INDEX IF NOT EXISTS whisper_jobs_by_status ON whisper_jobs (status, created_at)",
    # each finished window's transcript, so a job picked up again resumes where it stopped
    """CREATE TABLE IF NOT EXISTS whisper_job_windows (
        job_id TEXT NOT NULL,
        window_index INTEGER NOT NULL,
        transcript TEXT NOT NULL,
        PRIMARY KEY (job_id, window_index)
    )""",
    # facts about the store itself: which owner key its rows are hashed with, when it was last written
    """CREATE TABLE IF NOT EXISTS whisper_store_meta (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
)
# the meta row naming the key the owner column is hashed with (a fingerprint of it, not the key)
OWNER_KEY_ROW = "owner_key"
# what the fingerprint is the HMAC of: a fixed message, so the row proves which key without revealing it
FINGERPRINT_MESSAGE = b"whisper job store owner key"
# a job that is free to claim: waiting, or running under a lease its holder stopped renewing
CLAIMABLE = "(status = 'queued' OR (status = 'running' AND lease_until < :now))"
# the holder's lease is current: the job is still running and nobody claimed it since
HELD = "id = :id AND status = 'running' AND lease_token = :token"
# expired rows are gone to readers at once, whenever the sweep deletes them
LIVE = "(expires_at IS NULL OR expires_at >= :now)"


def job_of(row: Mapping[str, Any]) -> Job:
    values = dict(row)
    values["status"] = JobStatus(values["status"])
    values["request"] = JobRequest.from_json(values["request"])
    return Job(**values)


class OwnerKeyChanged(Exception):
    """The store's owners were hashed with another key than the one given: its jobs would answer to nobody."""


def owner_digest(secret: bytes, owner: str) -> str:
    return hmac.new(secret, owner.encode(), hashlib.sha256).hexdigest()


class JobStore:
    """Jobs in one database, shared by every HTTP process and replica that opens the same location.

    Owners are kept as HMAC-SHA256 keyed with `owner_secret`: a copy of the database alone does not let anyone
    test guesses of an API key. Rows of a store written before that (an unkeyed hash) are rehashed on open.

    >>> store = JobStore.open("/var/lib/whisper/jobs.sqlite3", owner_secret=b"...")
    >>> store.add("a1", "owner", JobRequest(), audio_bytes=10, max_bytes=10**9)
    True
    """

    def __init__(self, backend: Backend, owner_secret: bytes, clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.owner_secret = owner_secret
        self.clock = clock
        with backend.transaction(serialise="schema") as tx:
            for statement in SCHEMA:
                tx.execute(statement)
            self._key_owners(tx)

    @classmethod
    def open(cls, location: str, owner_secret: bytes, clock: Callable[[], float] = time.time) -> JobStore:
        return cls(open_backend(location), owner_secret, clock)

    def _key_owners(self, tx: Transaction) -> None:
        """Hash every row's owner with the key, once per store; refuse a key other than the one rows carry."""
        fingerprint = owner_digest(self.owner_secret, FINGERPRINT_MESSAGE.decode())
        row = tx.execute("SELECT value FROM whisper_store_meta WHERE name = :name", {"name": OWNER_KEY_ROW}).fetchone()
        if row is not None:
            if not hmac.compare_digest(row["value"], fingerprint):
                raise OwnerKeyChanged("the job store's owners were hashed with another owner secret")
            return
        for job in tx.execute("SELECT id, owner FROM whisper_jobs").fetchall():
            tx.execute(
                "UPDATE whisper_jobs SET owner = :owner WHERE id = :id",
                {"id": job["id"], "owner": owner_digest(self.owner_secret, job["owner"])},
            )
        tx.execute(
            "INSERT INTO whisper_store_meta (name, value) VALUES (:name, :value)",
            {"name": OWNER_KEY_ROW, "value": fingerprint},
        )

    def _owner(self, owner: str) -> str:
        return owner_digest(self.owner_secret, owner)

    def probe(self) -> None:
        """Write to the store, as every job does: raises StoreUnavailable when it cannot be written."""
        with self.backend.transaction() as tx:
            tx.execute(
                """INSERT INTO whisper_store_meta (name, value) VALUES ('written_at', :now)
                ON CONFLICT (name) DO UPDATE SET value = :now""",
                {"now": repr(self.clock())},
            )

    def ids_with_uploads(self) -> set[str]:
        """Ids of the jobs whose uploads are kept: every queued or running one."""
        with self.backend.transaction(readonly=True) as tx:
            rows = tx.execute("SELECT id FROM whisper_jobs WHERE status IN ('queued', 'running')").fetchall()
        return {row["id"] for row in rows}

    def add(self, job_id: str, owner: str, request: JobRequest, audio_bytes: int, max_bytes: int) -> bool:
        """Queue a job whose upload is kept; False, and nothing added, when its audio would pass `max_bytes`."""
        with self.backend.transaction(serialise="budget") as tx:
            cursor = tx.execute(
                """INSERT INTO whisper_jobs (id, owner, status, request, created_at, audio_bytes)
                SELECT :id, :owner, 'queued', :request, :now, :bytes
                WHERE (SELECT COALESCE(SUM(audio_bytes), 0) FROM whisper_jobs) + :bytes <= :max""",
                {
                    "id": job_id,
                    "owner": self._owner(owner),
                    "request": request.to_json(),
                    "now": self.clock(),
                    "bytes": audio_bytes,
                    "max": max_bytes,
                },
            )
            return cursor.rowcount == 1

    def audio_bytes_kept(self) -> int:
        """Bytes of uploads kept for jobs not yet over (the budget's use)."""
        with self.backend.transaction(readonly=True) as tx:
            return int(tx.execute("SELECT COALESCE(SUM(audio_bytes), 0) AS kept FROM whisper_jobs").fetchone()["kept"])

    def get(self, job_id: str, owner: str | None = None) -> Job | None:
        """The job, unless it expired or (when `owner` is given) belongs to someone else."""
        owned = "" if owner is None else " AND owner = :owner"
        with self.backend.transaction(readonly=True) as tx:
            row = tx.execute(
                f"SELECT * FROM whisper_jobs WHERE id = :id AND {LIVE}{owned}",
                {"id": job_id, "owner": None if owner is None else self._owner(owner), "now": self.clock()},
            ).fetchone()
        return job_of(row) if row else None

    def recent(self, owner: str, limit: int, after: str | None = None) -> list[Job]:
        """The owner's jobs, newest first; `after` is the id of the last job of the previous page."""
        cursor_clause = ""
        if after is not None:
            cursor_clause = (
                " AND (created_at, id) < (SELECT created_at, id FROM whisper_jobs WHERE id = :after AND owner = :owner)"
            )
        with self.backend.transaction(readonly=True) as tx:
            rows = tx.execute(
                f"""SELECT * FROM whisper_jobs WHERE owner = :owner AND {LIVE}{cursor_clause}
                ORDER BY created_at DESC, id DESC LIMIT :limit""",
                {"owner": self._owner(owner), "after": after, "limit": limit, "now": self.clock()},
            ).fetchall()
        return [job_of(row) for row in rows]

    def claim(self, token: str, lease_seconds: float) -> Claim | None:
        """Take the oldest free job (queued, or running under a lapsed lease) for `lease_seconds`."""
        now = self.clock()
        with self.backend.transaction() as tx:
            # the claimable test is repeated outside the subquery: a replica that lost the race updates nothing
            rows = tx.execute(
                f"""UPDATE whisper_jobs SET status = 'running', lease_token = :token, lease_until = :until,
                    attempts = attempts + 1, started_at = COALESCE(started_at, :now)
                WHERE id = (SELECT id FROM whisper_jobs WHERE {CLAIMABLE}
                            ORDER BY created_at, id LIMIT 1 {self.backend.skip_locked})
                AND {CLAIMABLE}
                RETURNING *""",
                {"token": token, "until": now + lease_seconds, "now": now},
            ).fetchall()
        return Claim(job_of(rows[0]), token) if rows else None

    def plan(self, claim: Claim, windows_total: int, audio_seconds: float) -> bool:
        """Record how many windows the job's audio has; False when the lease is no longer held."""
        return self._update_held(
            claim,
            "windows_total = :windows, audio_seconds = :seconds",
            {"windows": windows_total, "seconds": audio_seconds},
        )

    def renew(self, claim: Claim, lease_seconds: float) -> bool:
        """Extend the lease; False when the job was cancelled or claimed by another runner."""
        return self._update_held(claim, "lease_until = :until", {"until": self.clock() + lease_seconds})

    def save_window(self, claim: Claim, index: int, transcript: str, seconds_done: float, lease_seconds: float) -> bool:
        """Keep one window's transcript and the progress it brings, extending the lease, all or nothing.

        Windows finish out of order and their saves may commit out of order: the count is taken from the
        saved windows, and the seconds only ever grow.
        """
        params = {
            "id": claim.job.id,
            "token": claim.token,
            "seconds": seconds_done,
            "until": self.clock() + lease_seconds,
            "index": index,
            "transcript": transcript,
        }
        with self.backend.transaction() as tx:
            held = tx.execute(f"UPDATE whisper_jobs SET lease_until = :until WHERE {HELD}", params)
            if held.rowcount != 1:
                return False
            tx.execute(
                """INSERT INTO whisper_job_windows (job_id, window_index, transcript) VALUES (:id, :index, :transcript)
                ON CONFLICT (job_id, window_index) DO NOTHING""",
                params,
            )
            tx.execute(
                """UPDATE whisper_jobs SET
                    windows_done = (SELECT COUNT(*) FROM whisper_job_windows WHERE job_id = :id),
                    seconds_done = CASE WHEN seconds_done < :seconds THEN :seconds ELSE seconds_done END
                WHERE id = :id""",
                params,
            )
        return True

    def saved_windows(self, job_id: str) -> dict[int, str]:
        """Transcripts of the windows a previous holder finished, by window index."""
        with self.backend.transaction(readonly=True) as tx:
            rows = tx.execute(
                "SELECT window_index, transcript FROM whisper_job_windows WHERE job_id = :id", {"id": job_id}
            ).fetchall()
        return {row["window_index"]: row["transcript"] for row in rows}

    def finish(
        self, claim: Claim, status: JobStatus, ttl_seconds: float, result: str | None = None, error: str | None = None
    ) -> bool:
        """End a held job as done or failed, once: True only for the holder of the current lease."""
        now = self.clock()
        with self.backend.transaction() as tx:
            cursor = tx.execute(
                f"""UPDATE whisper_jobs SET status = :status, result = :result, error = :error, finished_at = :now,
                    expires_at = :expires, audio_bytes = 0, lease_token = NULL, lease_until = NULL,
                    webhook_due = :webhook
                WHERE {HELD}""",
                {
                    "id": claim.job.id,
                    "token": claim.token,
                    "status": status.value,
                    "result": result,
                    "error": error,
                    "now": now,
                    "expires": now + ttl_seconds,
                    # the webhook call is owed from this commit on, until a delivery attempt ends
                    "webhook": int(claim.job.request.webhook_url is not None),
                },
            )
            if cursor.rowcount != 1:
                return False
            tx.execute("DELETE FROM whisper_job_windows WHERE job_id = :id", {"id": claim.job.id})
        return True

    def webhook_settled(self, job_id: str) -> None:
        """The job's webhook call was delivered, or given up on: nobody owes it any more."""
        with self.backend.transaction() as tx:
            tx.execute("UPDATE whisper_jobs SET webhook_due = 0 WHERE id = :id", {"id": job_id})

    def take_owed_webhooks(self, older_than_seconds: float) -> list[Job]:
        """Jobs that ended over `older_than_seconds` ago and whose webhook call is still owed.

        The runner that ended them died before its delivery attempts ended; each is handed to one caller
        only (a conditional update), which then owes the call.
        """
        with self.backend.transaction() as tx:
            rows = tx.execute(
                f"""UPDATE whisper_jobs SET webhook_due = 0
                WHERE webhook_due = 1 AND finished_at < :before AND {LIVE}
                RETURNING *""",
                {"before": self.clock() - older_than_seconds, "now": self.clock()},
            ).fetchall()
        return [job_of(row) for row in rows]

    def release(self, claim: Claim) -> bool:
        """Give a held job back to the queue now (a clean shutdown), instead of waiting for its lease to lapse."""
        return self._update_held(claim, "status = 'queued', lease_token = NULL, lease_until = NULL", {})

    def cancel(self, job_id: str, owner: str, ttl_seconds: float) -> Job | None:
        """Cancel a queued or running job and drop its data (its row stays, as cancelled, for `ttl_seconds`).

        Returns the job as it was before, or None when the owner has no such job or it is already over.
        """
        before = self.get(job_id, owner)
        if before is None or before.status.final:
            return None
        now = self.clock()
        with self.backend.transaction() as tx:
            cursor = tx.execute(
                """UPDATE whisper_jobs SET status = 'cancelled', finished_at = :now, expires_at = :expires,
                    audio_bytes = 0, result = NULL, lease_token = NULL, lease_until = NULL
                WHERE id = :id AND owner = :owner AND status IN (:queued, :running)""",
                {
                    "id": job_id,
                    "owner": self._owner(owner),
                    "now": now,
                    "expires": now + ttl_seconds,
                    "queued": ACTIVE_STATUSES[0].value,
                    "running": ACTIVE_STATUSES[1].value,
                },
            )
            if cursor.rowcount != 1:
                return None
            tx.execute("DELETE FROM whisper_job_windows WHERE job_id = :id", {"id": job_id})
        return before

    def delete(self, job_id: str, owner: str) -> bool:
        """Delete a finished job and its result at once."""
        with self.backend.transaction() as tx:
            cursor = tx.execute(
                "DELETE FROM whisper_jobs WHERE id = :id AND owner = :owner AND status NOT IN ('queued', 'running')",
                {"id": job_id, "owner": self._owner(owner)},
            )
        return cursor.rowcount == 1

    def expire(self) -> list[str]:
        """Delete the jobs whose results outlived WHISPER_JOBS_TTL; returns their ids."""
        with self.backend.transaction() as tx:
            rows = tx.execute(
                "DELETE FROM whisper_jobs WHERE expires_at < :now RETURNING id", {"now": self.clock()}
            ).fetchall()
            ids = [row["id"] for row in rows]
            for job_id in ids:
                tx.execute("DELETE FROM whisper_job_windows WHERE job_id = :id", {"id": job_id})
        return ids

    def counts(self) -> dict[JobStatus, int]:
        """How many live jobs are in each status (every status present, zero or not)."""
        with self.backend.transaction(readonly=True) as tx:
            rows = tx.execute(
                f"SELECT status, COUNT(*) AS jobs FROM whisper_jobs WHERE {LIVE} GROUP BY status", {"now": self.clock()}
            ).fetchall()
        counted = {JobStatus(row["status"]): int(row["jobs"]) for row in rows}
        return {status: counted.get(status, 0) for status in JobStatus}

    def oldest_queued_age(self) -> float:
        """Seconds the oldest queued job has waited; 0 with none waiting."""
        with self.backend.transaction(readonly=True) as tx:
            row = tx.execute("SELECT MIN(created_at) AS oldest FROM whisper_jobs WHERE status = 'queued'").fetchone()
        return 0.0 if row["oldest"] is None else max(0.0, self.clock() - row["oldest"])

    def _update_held(self, claim: Claim, assignments: str, params: dict[str, Any]) -> bool:
        with self.backend.transaction() as tx:
            cursor = tx.execute(
                f"UPDATE whisper_jobs SET {assignments} WHERE {HELD}",
                {"id": claim.job.id, "token": claim.token, **params},
            )
        return cursor.rowcount == 1
