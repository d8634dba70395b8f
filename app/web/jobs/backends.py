"""The two databases a job store runs on: SQLite (one file on a volume) and PostgreSQL (shared by replicas).

Each gives transactions that run named-parameter SQL (`:name`) and the few clauses where the two differ.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from app import metrics
from app.contract import Reason
from app.web.errors import RequestError

log = logging.getLogger(__name__)

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
# seconds a writer waits for SQLite's lock before giving up; busy 2-core CI boxes need a generous one
SQLITE_BUSY_SECONDS = 30.0
NAMED_PARAMETER = re.compile(r"(?<![:\w]):(\w+)")
# one advisory lock number per serialised concern, so PostgreSQL replicas take turns where they must
ADVISORY_LOCKS = {"schema": 7_316_001, "budget": 7_316_002}


class StoreUnavailable(RequestError):
    """The store cannot be read or written (a read-only volume, a damaged or deleted file, an unreachable
    server): 503 store_unavailable with Retry-After for a request, a pause for the runner."""

    def __init__(self, message: str) -> None:
        super().__init__(Reason.STORE_UNAVAILABLE, message)


def store_fault(error: Exception, where: str) -> StoreUnavailable:
    """The database's own error, logged for the operator (naming the store) and counted; the client is told
    what happened in a word and that retrying later may help."""
    log.error("job store %s: %s: %s", where, type(error).__name__, error)
    metrics.JOB_STORE_ERRORS.inc()
    return StoreUnavailable(f"the job store cannot be used now ({error}); retry later")


class Cursor(Protocol):
    """What a statement gives back: rows as mappings of column name to value, and how many it changed."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Transaction(Protocol):
    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> Cursor: ...


class Backend(Protocol):
    """A database the store can use: `transaction(serialise=...)` runs statements atomically."""

    # appended to the claim's row selection: lets PostgreSQL replicas skip rows another one is claiming
    skip_locked: str

    def transaction(
        self, serialise: str | None = None, readonly: bool = False
    ) -> AbstractContextManager[Transaction]: ...


class SqliteBackend:
    """One SQLite file; a connection per transaction, so forked HTTP processes never share one."""

    skip_locked = ""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with self._connection(create=True) as connection:
                # readers never wait for the writer; the file survives a crash mid-write
                connection.execute("PRAGMA journal_mode=WAL")
        except (OSError, sqlite3.Error) as error:
            raise store_fault(error, str(path)) from None

    @contextmanager
    def _connection(self, create: bool = False) -> Iterator[sqlite3.Connection]:
        # only the first connection may create the file: one deleted while the service runs is an error to
        # report, not an empty store to start again silently
        mode = "rwc" if create else "rw"
        uri = f"file:{quote(str(self.path.absolute()))}?mode={mode}"
        connection = sqlite3.connect(uri, uri=True, timeout=SQLITE_BUSY_SECONDS, isolation_level=None)
        connection.row_factory = sqlite3.Row
        try:
            yield connection
        finally:
            connection.close()

    @contextmanager
    def transaction(self, serialise: str | None = None, readonly: bool = False) -> Iterator[Transaction]:
        # IMMEDIATE takes the write lock at once: every writing transaction is serialised, budget checks included;
        # readers take none (WAL): status polls never wait for a writer
        try:
            with self._connection() as connection:
                connection.execute("BEGIN" if readonly else "BEGIN IMMEDIATE")
                try:
                    yield _SqliteTransaction(connection)
                except BaseException:
                    if connection.in_transaction:
                        connection.execute("ROLLBACK")
                    raise
                connection.execute("COMMIT")
        except sqlite3.Error as error:
            deleted = sqlite3.OperationalError(f"{self.path.name} was deleted while the service ran")
            raise store_fault(error if self.path.exists() else deleted, str(self.path)) from None


class _SqliteTransaction:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> Cursor:
        return self.connection.execute(sql, params or {})


class _PostgresTransaction:
    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.connection.execute(NAMED_PARAMETER.sub(r"%(\1)s", sql), params or {})


class PostgresBackend:
    """A PostgreSQL database (psycopg 3); a connection per transaction, opened after any fork."""

    skip_locked = "FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str) -> None:
        import psycopg  # imported here so SQLite-only installs need no PostgreSQL client

        self.psycopg = psycopg
        self.url = url

    @contextmanager
    def transaction(self, serialise: str | None = None, readonly: bool = False) -> Iterator[Transaction]:
        from psycopg.rows import dict_row

        try:
            with self.psycopg.connect(self.url, row_factory=dict_row) as connection, connection.transaction():
                if serialise:
                    connection.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCKS[serialise],))
                yield _PostgresTransaction(connection)
        except self.psycopg.Error as error:
            raise store_fault(error, redacted(self.url)) from None


def redacted(url: str) -> str:
    """A PostgreSQL URL without its user and password, for logs and messages."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"


def open_backend(location: str) -> Backend:
    """WHISPER_JOBS_DB: a postgresql:// URL, or the path of a SQLite file."""
    if location.startswith(POSTGRES_SCHEMES):
        return PostgresBackend(location)
    return SqliteBackend(Path(location))
