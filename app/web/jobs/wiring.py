"""Making the jobs parts from Settings: the store, the kept uploads, the webhook sender and the runner.

Called once in the main process; the HTTP processes it forks inherit the result and each runs its runner.
"""

from __future__ import annotations

from app.config import Settings
from app.web.intake import Intake
from app.web.jobs.api import Jobs
from app.web.jobs.files import JobAudio
from app.web.jobs.runner import JobRunner, JobWindowCutter, SubmitWindow
from app.web.jobs.store import JobStore
from app.web.jobs.webhook import WebhookSender


def build_jobs(settings: Settings, intake: Intake, submit: SubmitWindow, cut_windows: JobWindowCutter) -> Jobs:
    store = JobStore.open(settings.jobs_db)
    audio = JobAudio(settings.jobs_dir)
    webhooks = None
    if settings.webhook_secret is not None:
        webhooks = WebhookSender(
            settings.webhook_secret.get_secret_value().encode(),
            settings.webhook_allow_private,
            settings.webhook_attempts,
            settings.webhook_backoff,
        )
    runner = JobRunner(settings, store, audio, intake.admission, submit, cut_windows, webhooks)
    keys = (settings.api_key.get_secret_value(),) if settings.api_key else ()
    return Jobs(settings, store, audio, intake, runner, keys)
