"""The batched engine on the real tiny.en model: batching, stitching, fallback parsing, isolation."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import whisper
from whisper.audio import HOP_LENGTH, N_FRAMES, N_SAMPLES, SAMPLE_RATE
from whisper.decoding import DecodingResult
from whisper.model import Whisper
from whisper.tokenizer import get_tokenizer

from app.contract import ItemError, Reason, Transcript, TranscriptionOptions
from app.web.errors import status_of
from app.worker.engine import AudioItem, Transcriber, log_mel_batch
from app.worker.pipeline import needs_fallback
from app.worker.segments import window_segments
from app.worker.windows import Window


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, words(a), words(b)).ratio()


@pytest.fixture(scope="module")
def transcriber(tiny_en_model: Whisper) -> Transcriber:
    return Transcriber(tiny_en_model, max_windows_per_pass=8)


def test_log_mel_batch_matches_transcribes_mel_for_each_window(fox_wav: Path) -> None:
    audio = whisper.load_audio(str(fox_wav))
    other = audio[: len(audio) // 2] * 0.1
    batch = log_mel_batch([audio, other], 80, torch.device("cpu"))
    for row, samples in enumerate((audio, other)):
        # transcribe(): mel of the audio plus 30 s of zeros, cut to the content, then padded with 0
        mel = whisper.log_mel_spectrogram(samples, padding=N_SAMPLES)
        content_frames = len(samples) // HOP_LENGTH
        expected = whisper.pad_or_trim(mel[:, :content_frames], N_FRAMES)
        torch.testing.assert_close(batch[row], expected, atol=1e-4, rtol=1e-4)


def test_batched_results_equal_one_at_a_time(transcriber: Transcriber, five_second_clips: list[Path]) -> None:
    waveforms = [whisper.load_audio(str(p)) for p in five_second_clips[:4]]
    batch = transcriber.run_batch([AudioItem(w) for w in waveforms])
    together = batch.outcomes
    assert batch.statistics.windows == 4
    alone = [transcriber.transcribe_batch([AudioItem(w)])[0] for w in waveforms]
    # greedy decoding is deterministic; a window that fell back to sampling (temperature > 0) is not
    greedy = [i for i in range(4) if all(s.temperature == 0 for s in together[i].segments + alone[i].segments)]
    assert len(greedy) >= 3
    assert [together[i].text for i in greedy] == [alone[i].text for i in greedy]
    assert "fox" in together[0].text.lower()


def test_long_audio_stays_close_to_sequential_transcribe(
    transcriber: Transcriber, tiny_en_model: Whisper, minute_long_wav: Path
) -> None:
    audio = whisper.load_audio(str(minute_long_wav))
    assert len(audio) > 2 * N_SAMPLES
    [ours] = transcriber.transcribe_batch([AudioItem(audio)])
    reference = tiny_en_model.transcribe(audio, fp16=False, language="en")
    score = similarity(ours.text, reference["text"])
    print(f"word-sequence similarity to transcribe(): {score:.3f}")
    assert score >= 0.85
    assert ours.duration == pytest.approx(len(audio) / SAMPLE_RATE, abs=0.01)
    starts = [s.start for s in ours.segments]
    assert starts == sorted(starts)
    assert all(s.start <= s.end <= ours.duration + 0.01 for s in ours.segments)
    # the last window's words carry file-relative times, not window-relative ones
    assert ours.segments[-1].end > 2 * 30 - 5


def test_silence_is_treated_as_transcribe_treats_it(transcriber: Transcriber, tiny_en_model: Whisper) -> None:
    silence = np.zeros(5 * SAMPLE_RATE, dtype=np.float32)
    [transcript] = transcriber.transcribe_batch([AudioItem(silence)])
    assert transcript.text == tiny_en_model.transcribe(silence, fp16=False, language="en")["text"].strip()
    assert transcript.language == "en"
    assert transcript.duration == 5.0


def result(tokens: list[int], **fields: float) -> DecodingResult:
    return DecodingResult(
        audio_features=torch.zeros(1),
        language="en",
        tokens=tokens,
        temperature=0.0,
        avg_logprob=fields.get("avg_logprob", -0.2),
        compression_ratio=fields.get("compression_ratio", 1.2),
        no_speech_prob=fields.get("no_speech_prob", 0.01),
    )


def test_window_segments_are_split_at_timestamp_pairs_and_offset() -> None:
    tokenizer = get_tokenizer(multilingual=False)
    stamp = tokenizer.timestamp_begin
    hello, world = tokenizer.encode(" hello"), tokenizer.encode(" world")
    # <0.00> hello <1.00><1.00> world <2.50>
    tokens = [stamp, *hello, stamp + 50, stamp + 50, *world, stamp + 125]
    window = Window(0, start=40 * SAMPLE_RATE, end=70 * SAMPLE_RATE)
    segments = window_segments(result(tokens), window, tokenizer)
    assert [(s.start, s.end, s.text) for s in segments] == [(40.0, 41.0, " hello"), (41.0, 42.5, " world")]


def test_unfinished_last_segment_ends_at_the_window_end() -> None:
    tokenizer = get_tokenizer(multilingual=False)
    stamp = tokenizer.timestamp_begin
    tokens = [stamp, *tokenizer.encode(" one"), stamp + 50, stamp + 60, *tokenizer.encode(" two")]
    window = Window(0, start=0, end=8 * SAMPLE_RATE)
    segments = window_segments(result(tokens), window, tokenizer)
    assert [(s.start, s.end, s.text) for s in segments] == [(0.0, 1.0, " one"), (1.2, 8.0, " two")]


def test_fallback_rules_follow_transcribe() -> None:
    assert needs_fallback(result([], compression_ratio=3.0))
    assert needs_fallback(result([], avg_logprob=-1.5))
    assert not needs_fallback(result([], avg_logprob=-1.5, no_speech_prob=0.9))  # silence
    assert not needs_fallback(result([]))


def test_a_failing_job_fails_alone(transcriber: Transcriber, five_second_clips: list[Path], monkeypatch) -> None:
    poison = np.full(SAMPLE_RATE, 0.25, dtype=np.float32)
    real_batch = Transcriber._transcribe

    def breaks_on_poison(self: Transcriber, jobs: list[AudioItem]) -> tuple[list[Transcript], int]:
        if any(job.waveform is poison for job in jobs):
            raise RuntimeError("simulated kernel failure")
        return real_batch(self, jobs)

    monkeypatch.setattr(Transcriber, "_transcribe", breaks_on_poison)
    good = [AudioItem(whisper.load_audio(str(p))) for p in five_second_clips[:3]]
    passed = transcriber.run_isolated([good[0], AudioItem(poison), good[1], good[2]])
    results = passed.outcomes
    assert [type(r) for r in results] == [Transcript, ItemError, Transcript, Transcript]
    assert results[1].reason is Reason.INFERENCE_FAILED and status_of(results[1]) == 500
    assert passed.statistics.windows == 3, "the windows of the three jobs that succeeded"
    assert "fox" in results[0].text.lower()


@pytest.mark.parametrize("prompt", ["<|endoftext|>", "names: <|startoftranscript|><|en|>"])
def test_a_prompt_spelling_special_tokens_is_encoded_as_text(transcriber: Transcriber, prompt: str) -> None:
    tokenizer = transcriber.tokenizer("transcribe", "en")
    tokens = transcriber.decoding_options("transcribe", "en", prompt).prompt
    assert isinstance(tokens, list) and not set(tokens) & set(tokenizer.special_tokens.values())
    assert tokenizer.decode(tokens) == " " + prompt


def test_an_english_only_model_refuses_other_languages_and_translation(transcriber: Transcriber) -> None:
    speech = np.zeros(SAMPLE_RATE, dtype=np.float32)
    jobs = [
        AudioItem(speech, TranscriptionOptions(language="de")),
        AudioItem(speech, TranscriptionOptions(task="translate")),
        AudioItem(speech, TranscriptionOptions(language="en")),
    ]
    german, translation, english = transcriber.run_batch(jobs).outcomes
    assert isinstance(german, ItemError) and german.reason is Reason.BAD_OPTION and german.param == "language"
    assert isinstance(translation, ItemError) and translation.param == "model"
    assert "English-only" in german.message and "English-only" in translation.message
    assert isinstance(english, Transcript)
