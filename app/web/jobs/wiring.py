"""Making the jobs parts from Settings: the store, the kept uploads, the webhook sender and the runner.

Called once in the main process; the HTTP processes it forks inherit the result and each runs its runner.
A store or directory that cannot be used stops the start with a message naming its setting, not a traceback.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from app.config import ENV_PREFIX, ConfigurationError, Settings
from app.web.intake import Intake
from app.web.jobs.api import Jobs
from app.web.jobs.backends import POSTGRES_SCHEMES, StoreUnavailable, redacted
from app.web.jobs.files import JobAudio
from app.web.jobs.runner import JobRunner, JobWindowCutter, SubmitWindow
from app.web.jobs.store import JobStore, OwnerKeyChanged
from app.web.jobs.webhook import WebhookSender

# the generated owner secret, kept beside the uploads (a volume every replica of a shared store mounts)
OWNER_SECRET_FILE = ".owner-secret"


def build_jobs(settings: Settings, intake: Intake, submit: SubmitWindow, cut_windows: JobWindowCutter) -> Jobs:
    audio = open_job_audio(settings.jobs_dir)
    store = open_store(settings)
    webhooks = None
    if settings.webhook_secret is not None:
        webhooks = WebhookSender(
            settings.webhook_secret.get_secret_value().encode(),
            settings.webhook_allow_private,
            settings.webhook_attempts,
            settings.webhook_backoff,
            settings.webhook_timeout,
        )
    runner = JobRunner(settings, store, audio, intake.admission, submit, cut_windows, webhooks)
    keys = (settings.api_key.get_secret_value(),) if settings.api_key else ()
    return Jobs(settings, store, audio, intake, runner, keys)


def open_job_audio(directory: Path) -> JobAudio:
    try:
        return JobAudio(directory)
    except OSError as error:
        raise ConfigurationError(
            f"{ENV_PREFIX}JOBS_DIR={directory}: cannot create or use the job upload directory ({error.strerror}); "
            "point it at a writable volume"
        ) from None


def open_store(settings: Settings) -> JobStore:
    location = settings.jobs_db
    named = f"{ENV_PREFIX}JOBS_DB={redacted(location) if location.startswith(POSTGRES_SCHEMES) else location}"
    try:
        return JobStore.open(location, owner_secret(settings))
    except StoreUnavailable as error:
        if location.startswith(POSTGRES_SCHEMES):
            advice = "check that the PostgreSQL server is reachable and the URL's database and user exist"
        else:
            advice = (
                "if the file is damaged, move it (with its -wal and -shm files) aside and restart to begin an "
                "empty store, or restore it from a backup; if its volume is read-only, make it writable"
            )
        raise ConfigurationError(f"{named}: the job store cannot be opened: {error.error.message}. {advice}") from None
    except OSError as error:
        raise ConfigurationError(
            f"{ENV_PREFIX}JOBS_DIR={settings.jobs_dir}: cannot keep the generated owner secret there "
            f"({error.strerror}); make it writable, or set {ENV_PREFIX}JOBS_OWNER_SECRET"
        ) from None
    except OwnerKeyChanged:
        raise ConfigurationError(
            f"{named}: the owners of its jobs were recorded with another owner secret than "
            f"{ENV_PREFIX}JOBS_OWNER_SECRET (or {settings.jobs_dir / OWNER_SECRET_FILE}) gives now, so no key could "
            "reach them; set the earlier secret again, or start with an empty store"
        ) from None


def owner_secret(settings: Settings) -> bytes:
    """WHISPER_JOBS_OWNER_SECRET, or the one generated on the first start and kept in WHISPER_JOBS_DIR.

    Kept outside the database on purpose: a copy of the database alone (a backup, a dump) then holds nothing
    that lets anyone test guesses of an API key against the owner column.
    """
    if settings.jobs_owner_secret is not None:
        return settings.jobs_owner_secret.get_secret_value().encode()
    path = settings.jobs_dir / OWNER_SECRET_FILE
    if not path.exists():
        # written whole under a name of its own, then linked: a concurrent start (another replica) either
        # links first or reads the one that did
        draft = path.with_name(f"{OWNER_SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_hex(32))
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip().encode()
