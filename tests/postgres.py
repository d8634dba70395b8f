"""A throwaway PostgreSQL server from Debian's postgresql package: initdb and pg_ctl in a temp dir, a free port.

PostgreSQL refuses to run as root, so under root (CI) the cluster belongs to the `postgres` user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.service import free_port

SERVER_USER = "postgres"
START_SECONDS = 60


def postgres_bin() -> Path:
    """The newest installed server's bin directory (Debian keeps them in /usr/lib/postgresql/<major>/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda path: int(Path(path).parts[-3]))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql (scripts/setup.sh test does)")
    return Path(found[-1]).parent


def as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", SERVER_USER, "--", *command] if os.geteuid() == 0 else command


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a private cluster with trust auth on 127.0.0.1; yields its URL and removes it afterwards."""
    binaries = postgres_bin()
    directory = Path(tempfile.mkdtemp(prefix="whisper-pg-"))
    data = directory / "data"
    if os.geteuid() == 0:
        user = pwd.getpwnam(SERVER_USER)
        os.chown(directory, user.pw_uid, user.pw_gid)
    port = free_port()
    run = {"check": True, "capture_output": True}
    subprocess.run(
        as_server_user([str(binaries / "initdb"), "-D", str(data), "-U", "whisper", "-A", "trust", "-E", "UTF8"]), **run
    )
    options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg_ctl = [str(binaries / "pg_ctl"), "-D", str(data)]
    start = [*pg_ctl, "-o", options, "-l", str(directory / "log"), "-w", "-t", str(START_SECONDS), "start"]
    subprocess.run(as_server_user(start), **run)
    try:
        yield f"postgresql://whisper@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_server_user([*pg_ctl, "-m", "immediate", "stop"]), **run)
        shutil.rmtree(directory, ignore_errors=True)
