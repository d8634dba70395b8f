"""The job runner in-process, with the model worker stood in for: windows on the file's clock, priority,
resuming from saved windows, failures, and handing a job back when the service drains.

The upload is really decoded by ffmpeg and really cut by the worker's splitter; the store is a real SQLite file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.config import Settings
from app.contract import (
    ItemError,
    QueuedRequest,
    Reason,
    Reported,
    Segment,
    Transcript,
    TranscriptionOptions,
    WorkerTiming,
    read_waveform,
)
from app.web.admission import Admission, Phase
from app.web.jobs.files import JobAudio
from app.web.jobs.model import JobRequest, JobStatus
from app.web.jobs.runner import JobRunner
from app.web.jobs.store import JobStore
from app.web.jobs.transcripts import transcript_to_json
from app.worker.windows import split_waveform
from tests.jobs.test_store import OWNER_SECRET, Clock

pytestmark = pytest.mark.unit

LEASE = 30.0
# long enough for five 30 s windows
AUDIO_SECONDS = 140


class StandInWorker:
    """Answers each window with one segment spanning its first second; counts how many wait at once."""

    def __init__(self, answer: Callable[[int], Transcript | ItemError] | None = None) -> None:
        self.answer = answer or (lambda call: window_transcript(f" window {call}."))
        self.calls: list[QueuedRequest] = []
        self.waiting = 0
        self.most_waiting = 0

    async def run(
        self, request: QueuedRequest, arrived_at: float, keep_waiting: Callable[[], None]
    ) -> Reported | ItemError:
        keep_waiting()
        assert len(read_waveform(Path(request.waveform_path))) > 0
        self.calls.append(request)
        call = len(self.calls)
        self.waiting += 1
        self.most_waiting = max(self.most_waiting, self.waiting)
        # yield to the runner a few times, as a real pass would, so windows queued together overlap here
        for _ in range(5):
            await asyncio.sleep(0)
        self.waiting -= 1
        return Reported(self.answer(call), WorkerTiming(0.0, 0.01, 1))


def window_transcript(text: str) -> Transcript:
    return Transcript(text.strip(), "en", 30.0, [Segment(0.0, 1.0, text, (1,), 0.0, -0.1, 1.0, 0.0, seek=0)])


@pytest.fixture(scope="module")
def tone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("runner") / "tone.flac"
    source = f"sine=frequency=440:sample_rate=16000:duration={AUDIO_SECONDS}"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", source, str(path)], check=True)
    return path


class Jobs:
    """A runner over a real store and upload dir, the worker stood in for, one job queued from `audio`."""

    def __init__(self, tmp_path: Path, audio: Path, worker: StandInWorker, **settings: object) -> None:
        self.clock = Clock()
        self.settings = Settings(
            tmp_dir=tmp_path / "tmp",
            jobs_db=str(tmp_path / "jobs.db"),
            jobs_dir=tmp_path / "job-uploads",
            # windows as short as a job's can be: the tone's 140 s give five
            jobs_window_seconds=30.0,
            **settings,  # type: ignore[arg-type]
        )
        self.settings.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.store = JobStore.open(self.settings.jobs_db, OWNER_SECRET, self.clock)
        self.audio = JobAudio(self.settings.jobs_dir)
        self.admission = Admission(4)
        self.worker = worker
        self.runner = JobRunner(
            self.settings, self.store, self.audio, self.admission, worker.run, split_waveform, webhooks=None
        )
        self.audio.path("j").write_bytes(audio.read_bytes())
        asked = JobRequest(TranscriptionOptions(language="en"), "text")
        assert self.store.add("j", "owner", asked, audio.stat().st_size, 10**9)

    def run_claimed(self) -> None:
        claim = self.store.claim("runner", LEASE)
        assert claim is not None
        asyncio.run(self.runner.execute(claim))


def test_a_job_runs_window_by_window_and_joins_them_on_the_files_clock(tmp_path: Path, tone: Path) -> None:
    jobs = Jobs(tmp_path, tone, StandInWorker())
    jobs.run_claimed()
    job = jobs.store.get("j")
    windows = split_waveform(read_waveform_of(tone, tmp_path))
    assert job.status is JobStatus.DONE
    assert job.windows_total == job.windows_done == len(windows) == len(jobs.worker.calls) >= 4
    assert job.seconds_done == pytest.approx(AUDIO_SECONDS, abs=0.01)
    result = jobs.runner.store.get("j").result
    assert result is not None
    assert '"start": %s' % (windows[1].start / 16000) in result
    assert not jobs.audio.path("j").exists()
    assert list(jobs.settings.tmp_dir.iterdir()) == []


def read_waveform_of(audio: Path, tmp_path: Path) -> object:
    decoded = tmp_path / "decoded.f32"
    decode = ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(audio), "-f", "f32le", "-ac", "1", "-ar", "16000"]
    subprocess.run([*decode, str(decoded)], check=True)
    return read_waveform(decoded)


def test_windows_in_flight_follow_synchronous_load(tmp_path: Path, tone: Path) -> None:
    idle = Jobs(tmp_path / "idle", tone, StandInWorker(), jobs_windows_in_flight=3)
    idle.run_claimed()
    assert idle.worker.most_waiting == 3

    # under sustained synchronous load a job submits one window each time it has yielded long enough
    loaded = Jobs(tmp_path / "loaded", tone, StandInWorker(), jobs_windows_in_flight=3, jobs_longest_yield_seconds=0.1)
    with loaded.admission.admit():
        loaded.run_claimed()
    assert loaded.worker.most_waiting == 1
    assert loaded.store.get("j").status is JobStatus.DONE


def test_a_job_submits_nothing_while_a_synchronous_request_is_held(tmp_path: Path, tone: Path) -> None:
    jobs = Jobs(tmp_path, tone, StandInWorker(), jobs_longest_yield_seconds=3600.0)
    claim = jobs.store.claim("runner", LEASE)
    assert claim is not None

    async def run_while_held() -> None:
        with jobs.admission.admit(), contextlib.suppress(TimeoutError):
            await asyncio.wait_for(jobs.runner.execute(claim), timeout=5.0)

    asyncio.run(run_while_held())
    job = jobs.store.get("j")
    assert job.windows_total is not None and job.windows_total >= 4, "the job was split, ready to submit"
    assert jobs.worker.calls == []
    assert job.windows_done == 0


def test_a_job_picked_up_again_runs_only_its_unsaved_windows(tmp_path: Path, tone: Path) -> None:
    jobs = Jobs(tmp_path, tone, StandInWorker())
    crashed = jobs.store.claim("crashed", LEASE)
    for index in (0, 1):
        assert jobs.store.save_window(crashed, index, transcript_to_json(window_transcript(" saved.")), 60, LEASE)
    jobs.clock.now += LEASE + 1
    jobs.run_claimed()
    job = jobs.store.get("j")
    assert (job.status, job.attempts) == (JobStatus.DONE, 2)
    assert len(jobs.worker.calls) == job.windows_total - 2
    assert json.loads(job.result)["text"] == "saved. saved. window 1. window 2. window 3."


def test_a_failed_window_fails_the_job(tmp_path: Path, tone: Path) -> None:
    failing = StandInWorker(lambda call: ItemError(Reason.INFERENCE_FAILED, "the model failed"))
    jobs = Jobs(tmp_path, tone, failing)
    jobs.run_claimed()
    job = jobs.store.get("j")
    assert (job.status, job.error) == (JobStatus.FAILED, "the model failed")
    assert not jobs.audio.path("j").exists()


def test_a_draining_service_hands_its_job_back_with_the_windows_it_finished(tmp_path: Path, tone: Path) -> None:
    jobs: Jobs

    def drain_after_two(call: int) -> Transcript:
        if call == 2:
            jobs.admission.enter(Phase.DRAINING)
        return window_transcript(f" window {call}.")

    jobs = Jobs(tmp_path, tone, StandInWorker(drain_after_two), jobs_windows_in_flight=1)
    jobs.run_claimed()
    job = jobs.store.get("j")
    assert (job.status, job.windows_done) == (JobStatus.QUEUED, 2)
    assert jobs.audio.path("j").exists()
    assert sorted(jobs.store.saved_windows("j")) == [0, 1]


def test_a_job_whose_upload_is_gone_fails_at_once_saying_so(tmp_path: Path, tone: Path) -> None:
    jobs = Jobs(tmp_path, tone, StandInWorker())
    jobs.audio.path("j").unlink()
    jobs.run_claimed()
    job = jobs.store.get("j")
    # one claim, one clear verdict: not a lease left to lapse and claimed again until MAX_ATTEMPTS
    assert (job.status, job.attempts) == (JobStatus.FAILED, 1)
    assert "upload is gone" in job.error and "WHISPER_JOBS_DIR" in job.error
    assert jobs.worker.calls == []


@pytest.fixture
def full_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs as WHISPER_TMP_DIR: no room for a decoded waveform. Needs CAP_SYS_ADMIN (CI runs as root)."""
    tmp_dir = tmp_path / "tmp"
    tmp_dir.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tmp_dir)], capture_output=True)
    assert mounted.returncode == 0, f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}"
    yield tmp_dir
    subprocess.run(["umount", "--lazy", str(tmp_dir)], check=True)


def test_a_job_that_cannot_be_decoded_for_a_full_tmpfs_fails_at_once_saying_so(
    tmp_path: Path, tone: Path, full_tmpfs: Path
) -> None:
    jobs = Jobs(tmp_path, tone, StandInWorker())
    jobs.run_claimed()
    job = jobs.store.get("j")
    assert (job.status, job.attempts) == (JobStatus.FAILED, 1)
    assert "WHISPER_TMP_DIR" in job.error and "full" in job.error, job.error
    assert not jobs.audio.path("j").exists()
    assert list(full_tmpfs.iterdir()) == []
