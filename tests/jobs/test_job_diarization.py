"""A job over a conversation longer than one job window: speakers found over the whole file keep their labels."""

from __future__ import annotations

import pytest

from harness.accuracy import DEFAULT_CACHE
from harness.conversations import dialogue, label_map, speaker_voices
from harness.jobs_client import submitted, wait_until_over
from harness.service import ServiceProcess
from harness.speech_corpus import write_wav

pytestmark = pytest.mark.integration


def test_a_job_labels_one_voice_alike_in_every_window(
    jobs_service: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    voices = speaker_voices(DEFAULT_CACHE)
    dickens, austen = voices["dickens_reader"], voices["austen_reader"]
    # about 70 s, every utterance of both readers in ten alternating turns: two job windows of 60 s
    lines = [
        turn
        for index in range(5)
        for turn in (
            ("dickens_reader", dickens[index * 4 : index * 4 + 4]),
            ("austen_reader", austen[index : index + 1]),
        )
        if turn[1]
    ]
    talk = dialogue("job", lines, gap_seconds=0.5)
    path = write_wav(tmp_path_factory.mktemp("job-diarization") / "talk.wav", talk.waveform)
    body = wait_until_over(jobs_service, submitted(jobs_service, path, diarize="true", response_format="verbose_json"))
    assert body["status"] == "done", body.get("error")
    assert body["progress"]["windows_total"] >= 2
    segments = [(s["speaker"], s["start"], s["end"]) for s in body["result"]["segments"]]
    # one label per reader across both windows, each on the right turns (within 0.5 s of a change)
    assert set(label_map(talk, segments)) == {"A", "B"}
