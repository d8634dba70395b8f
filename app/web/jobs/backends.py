"""The two databases a job store runs on: SQLite (one file on a volume) and PostgreSQL (shared by replicas).

Each gives transactions that run named-parameter SQL (`:name`) and the few clauses where the two differ.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
# seconds a writer waits for SQLite's lock before giving up; busy 2-core CI boxes need a generous one
SQLITE_BUSY_SECONDS = 30.0
NAMED_PARAMETER = re.compile(r"(?<![:\w]):(\w+)")
# one advisory lock number per serialised concern, so PostgreSQL replicas take turns where they must
ADVISORY_LOCKS = {"schema": 7_316_001, "budget": 7_316_002}


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
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connection() as connection:
            # readers never wait for the writer; the file survives a crash mid-write
            connection.execute("PRAGMA journal_mode=WAL")

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self.path, timeout=SQLITE_BUSY_SECONDS, isolation_level=None)
        connection.row_factory = sqlite3.Row
        try:
            yield connection
        finally:
            connection.close()

    @contextmanager
    def transaction(self, serialise: str | None = None, readonly: bool = False) -> Iterator[Transaction]:
        # IMMEDIATE takes the write lock at once: every writing transaction is serialised, budget checks included;
        # readers take none (WAL): status polls never wait for a writer
        with self._connection() as connection:
            connection.execute("BEGIN" if readonly else "BEGIN IMMEDIATE")
            try:
                yield _SqliteTransaction(connection)
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")


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

        with self.psycopg.connect(self.url, row_factory=dict_row) as connection, connection.transaction():
            if serialise:
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCKS[serialise],))
            yield _PostgresTransaction(connection)


def open_backend(location: str) -> Backend:
    """WHISPER_JOBS_DB: a postgresql:// URL, or the path of a SQLite file."""
    if location.startswith(POSTGRES_SCHEMES):
        return PostgresBackend(location)
    return SqliteBackend(Path(location))
