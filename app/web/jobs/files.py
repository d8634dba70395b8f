"""Uploads kept for jobs until they are done: one file per job in WHISPER_JOBS_DIR, within WHISPER_JOBS_MAX_BYTES.

The store counts the bytes (so every replica sees one budget); this module only names and moves the files.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import time
from pathlib import Path

from app import metrics
from app.contract import Reason
from app.web.errors import RequestError
from app.web.jobs.backends import StoreUnavailable

log = logging.getLogger(__name__)

UPLOAD_SUFFIX = ".upload"


def budget_full(max_bytes: int) -> RequestError:
    """507: the kept uploads fill WHISPER_JOBS_MAX_BYTES (or, with 0, the volume itself)."""
    where = f"the {max_bytes / 1e6:g} MB this server keeps" if max_bytes else "the server's job volume"
    return RequestError(
        Reason.STORAGE_FULL,
        f"the uploads of unfinished jobs already fill {where}; retry when some are done",
    )


class JobAudio:
    """The directory of kept job uploads; a job's file is named by its id, never by the client."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, job_id: str) -> Path:
        return self.directory / f"{job_id}{UPLOAD_SUFFIX}"

    def delete(self, job_id: str) -> None:
        try:
            self.path(job_id).unlink(missing_ok=True)
        except OSError as error:
            # a read-only or vanished volume: the file stays until a sweep finds it with no live job
            log.warning("could not delete the upload of job %s: %s", job_id, error)

    def probe(self) -> None:
        """Write and delete a file here, as every job does: raises StoreUnavailable when that fails."""
        probe = self.directory / f".probe-{os.getpid()}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            metrics.JOB_STORE_ERRORS.inc()
            raise StoreUnavailable(f"the server cannot keep job uploads now ({error.strerror})") from None

    def untouched_for(self, seconds: float) -> set[str]:
        """Ids of the kept uploads not written for `seconds`."""
        before = time.time() - seconds
        ids = set()
        for path in self.directory.glob(f"*{UPLOAD_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < before:
                    ids.add(path.name.removesuffix(UPLOAD_SUFFIX))
        return ids

    async def keep(self, received: Path, job_id: str) -> None:
        """Move an upload received on the tmpfs to the job's file (a copy where they are different filesystems)."""
        moving = asyncio.ensure_future(asyncio.to_thread(shutil.move, received, self.path(job_id)))
        try:
            await asyncio.shield(moving)
        except OSError as error:
            self.delete(job_id)
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            log.error("cannot keep a job upload in WHISPER_JOBS_DIR %s: %s", self.directory, error)
            metrics.JOB_STORE_ERRORS.inc()
            raise StoreUnavailable(f"the server cannot keep job uploads now ({error.strerror}); retry later") from None
        except BaseException:
            # a cancelled wait (the request's timeout) does not stop the copy in its thread: let it end first
            await asyncio.wait({moving})
            self.delete(job_id)
            raise
