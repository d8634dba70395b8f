"""Batched transcription of waveforms: windows, log-mel, one encoder pass, batched decoding, stitching.

Usable without HTTP: `Transcriber(model).transcribe_batch(jobs)` is what the server, tests and
benchmarks all drive.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import whisper
from whisper.audio import HOP_LENGTH, N_FFT, N_SAMPLES, SAMPLE_RATE, mel_filters
from whisper.decoding import DecodingOptions, DecodingResult, detect_language
from whisper.model import Whisper
from whisper.tokenizer import Tokenizer, get_tokenizer

from app.errors import ItemError, Reason
from app.windows import Window, split_waveform

log = logging.getLogger(__name__)

# openai-whisper transcribe()'s defaults, so a window falls back exactly when transcribe() would
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
COMPRESSION_RATIO_THRESHOLD = 2.4
LOGPROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
# seconds per timestamp token: the encoder halves the mel frame rate
TIME_PRECISION = 2 * HOP_LENGTH / SAMPLE_RATE
TASKS = ("transcribe", "translate")


@dataclass(frozen=True)
class TranscriptionOptions:
    """What one request asks of the model; requests with equal options decode in one group."""

    # ISO code such as "en"; None detects it from the first 30 s
    language: str | None = None
    # "transcribe" keeps the spoken language, "translate" produces English
    task: str = "transcribe"


@dataclass(frozen=True)
class AudioJob:
    """One request's waveform (16 kHz mono float32) and its options."""

    waveform: np.ndarray
    options: TranscriptionOptions = TranscriptionOptions()


@dataclass(frozen=True)
class Segment:
    """A stretch of speech with times relative to the start of the whole file."""

    start: float
    end: float
    text: str
    tokens: tuple[int, ...]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


@dataclass
class Transcript:
    """The stitched result of one request."""

    text: str
    language: str
    duration: float
    segments: list[Segment] = field(default_factory=list)


def log_mel_batch(windows: Sequence[np.ndarray], n_mels: int, device: torch.device) -> torch.Tensor:
    """Log-mel spectrograms of windows, each padded to 30 s: shape (M, n_mels, N_FRAMES).

    Same arithmetic as transcribe(): frames past a window's audio are 0 (transcribe() pads the
    mel, not the audio), and the dynamic-range clamp is per window, where whisper's
    log_mel_spectrogram takes the maximum over its whole input (which would mix a batch's windows).
    """
    audio = torch.zeros(len(windows), N_SAMPLES, device=device)
    for row, samples in enumerate(windows):
        audio[row, : len(samples)] = torch.from_numpy(np.ascontiguousarray(samples)).to(device)
    window = torch.hann_window(N_FFT, device=device)
    stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    magnitudes = stft[..., :-1].abs() ** 2
    log_spec = torch.clamp(mel_filters(device, n_mels) @ magnitudes, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.amax(dim=(1, 2), keepdim=True) - 8.0)
    content_frames = torch.tensor([len(samples) // HOP_LENGTH for samples in windows], device=device)
    padding = torch.arange(log_spec.shape[-1], device=device)[None, :] >= content_frames[:, None]
    return ((log_spec + 4.0) / 4.0).masked_fill(padding[:, None, :], 0.0)


def needs_fallback(result: DecodingResult) -> bool:
    """transcribe()'s rule: too repetitive or too improbable, unless the window is silence."""
    silent = result.no_speech_prob > NO_SPEECH_THRESHOLD and result.avg_logprob < LOGPROB_THRESHOLD
    poor = result.compression_ratio > COMPRESSION_RATIO_THRESHOLD or result.avg_logprob < LOGPROB_THRESHOLD
    return poor and not silent


def is_silence(result: DecodingResult) -> bool:
    """transcribe() skips windows the model thinks hold no speech, unless its text is confident."""
    return result.no_speech_prob > NO_SPEECH_THRESHOLD and result.avg_logprob <= LOGPROB_THRESHOLD


def window_segments(result: DecodingResult, window: Window, tokenizer: Tokenizer) -> list[Segment]:
    """Split one window's tokens at timestamp pairs, as transcribe() does, into file-relative segments.

    transcribe() would re-decode from the last timestamp when a window ends mid-segment; our windows
    are cut in pauses and decoded together, so a trailing unfinished segment ends at the window's end.
    """
    tokens = list(result.tokens)
    begin = tokenizer.timestamp_begin

    def segment(piece: list[int], start: float, end: float) -> Segment:
        return Segment(
            start=round(window.offset_seconds + start, 3),
            end=round(window.offset_seconds + min(end, window.duration_seconds), 3),
            text=tokenizer.decode([t for t in piece if t < tokenizer.eot]),
            tokens=tuple(piece),
            temperature=result.temperature,
            avg_logprob=result.avg_logprob,
            compression_ratio=result.compression_ratio,
            no_speech_prob=result.no_speech_prob,
        )

    is_timestamp = [t >= begin for t in tokens]
    pair_ends = [i + 1 for i in range(len(tokens) - 1) if is_timestamp[i] and is_timestamp[i + 1]]
    if not pair_ends:
        stamps = [t - begin for t in tokens if t >= begin]
        end = stamps[-1] * TIME_PRECISION if stamps and stamps[-1] > 0 else window.duration_seconds
        return [segment(tokens, 0.0, end)] if tokens else []
    segments = []
    last = 0
    for current in pair_ends:
        piece = tokens[last:current]
        segments.append(
            segment(
                piece,
                (piece[0] - begin) * TIME_PRECISION,
                (piece[-1] - begin) * TIME_PRECISION,
            )
        )
        last = current
    tail = tokens[last:]
    if any(t < begin for t in tail):
        start = (tail[0] - begin) * TIME_PRECISION if tail[0] >= begin else segments[-1].end - window.offset_seconds
        # a single closing timestamp ends the segment; without one it runs to the window's end
        end = (tail[-1] - begin) * TIME_PRECISION if tail[-1] >= begin else window.duration_seconds
        segments.append(segment(tail, start, end))
    return [s for s in segments if s.text.strip()]


class Transcriber:
    """Batched Whisper inference over many requests' waveforms at once.

    >>> transcriber = Transcriber(whisper.load_model("tiny.en"))
    >>> [transcript] = transcriber.transcribe_batch([AudioJob(waveform)])
    >>> transcript.text
    'Hello world.'
    """

    def __init__(self, model: Whisper, max_windows_per_pass: int = 64) -> None:
        self.model = model
        self.device = model.device
        self.fp16 = self.device.type == "cuda"
        self.max_windows_per_pass = max_windows_per_pass
        self.last_window_count = 0

    def tokenizer(self, options: TranscriptionOptions, language: str) -> Tokenizer:
        return get_tokenizer(
            self.model.is_multilingual,
            num_languages=self.model.num_languages,
            language=language,
            task=options.task,
        )

    @torch.inference_mode()
    def encode(self, waveforms: Sequence[np.ndarray]) -> torch.Tensor:
        """Encoder features for windows, in passes of at most `max_windows_per_pass`."""
        dtype = torch.float16 if self.fp16 else torch.float32
        passes = []
        for first in range(0, len(waveforms), self.max_windows_per_pass):
            chunk = waveforms[first : first + self.max_windows_per_pass]
            mel = log_mel_batch(chunk, self.model.dims.n_mels, self.device).to(dtype)
            passes.append(self.model.encoder(mel))
        return torch.cat(passes)

    def languages(self, jobs: Sequence[AudioJob], first_features: torch.Tensor) -> list[str]:
        """Each job's language: asked for, the only one an English-only model knows, or detected."""
        if not self.model.is_multilingual:
            return ["en"] * len(jobs)
        unknown = [i for i, job in enumerate(jobs) if job.options.language is None]
        detected: dict[int, str] = {}
        if unknown:
            _, probabilities = detect_language(self.model, first_features[unknown])
            detected = {i: max(p, key=p.get) for i, p in zip(unknown, probabilities, strict=True)}
        return [job.options.language or detected[i] for i, job in enumerate(jobs)]

    @torch.inference_mode()
    def decode_with_fallback(self, features: torch.Tensor, options: DecodingOptions) -> list[DecodingResult]:
        """Greedy decoding; windows that fail transcribe()'s quality checks retry, together, hotter."""
        results: list[DecodingResult | None] = [None] * len(features)
        pending = list(range(len(features)))
        for temperature in TEMPERATURES:
            attempt = replace(options, temperature=temperature)
            for first in range(0, len(pending), self.max_windows_per_pass):
                chunk = pending[first : first + self.max_windows_per_pass]
                for index, result in zip(chunk, whisper.decode(self.model, features[chunk], attempt), strict=True):
                    results[index] = result
            pending = [i for i in pending if needs_fallback(results[i])]
            if not pending:
                break
        return results

    def transcribe_batch(self, jobs: Sequence[AudioJob]) -> list[Transcript]:
        """Transcribe every job with one encoder pass over all their windows and batched decodes."""
        windows = [w for index, job in enumerate(jobs) for w in split_waveform(job.waveform, index)]
        self.last_window_count = len(windows)
        features = self.encode([jobs[w.request_index].waveform[w.start : w.end] for w in windows])
        first_window = {}
        for position, window in enumerate(windows):
            first_window.setdefault(window.request_index, position)
        languages = self.languages(jobs, features[[first_window[i] for i in range(len(jobs))]])

        # windows of requests with the same decoding options share one batched decode
        groups: dict[tuple[str, str], list[int]] = defaultdict(list)
        for position, window in enumerate(windows):
            index = window.request_index
            groups[(languages[index], jobs[index].options.task)].append(position)

        segments: list[list[Segment]] = [[] for _ in jobs]
        for (language, task), positions in groups.items():
            tokenizer = self.tokenizer(jobs[windows[positions[0]].request_index].options, language)
            options = DecodingOptions(task=task, language=language, without_timestamps=False, fp16=self.fp16)
            for position, result in zip(
                positions, self.decode_with_fallback(features[positions], options), strict=True
            ):
                if not is_silence(result):
                    window = windows[position]
                    segments[window.request_index].extend(window_segments(result, window, tokenizer))

        return [
            Transcript(
                text="".join(s.text for s in job_segments).strip(),
                language=language,
                duration=round(len(job.waveform) / SAMPLE_RATE, 3),
                segments=job_segments,
            )
            for job, language, job_segments in zip(jobs, languages, segments, strict=True)
        ]

    def transcribe_isolated(self, jobs: Sequence[AudioJob]) -> list[Transcript | ItemError]:
        """Like transcribe_batch, but a failure costs only the job that causes it.

        A failed batch is halved and retried, so a job that breaks the model (or a batch too large
        for the GPU's memory) ends with its own error while its neighbours still succeed.
        """
        try:
            return list(self.transcribe_batch(jobs))
        except Exception as error:
            if len(jobs) == 1:
                log.exception("inference failed for one request")
                return [
                    ItemError(
                        Reason.INFERENCE_FAILED,
                        f"inference failed: {type(error).__name__}",
                    )
                ]
            if isinstance(error, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            middle = len(jobs) // 2
            return self.transcribe_isolated(jobs[:middle]) + self.transcribe_isolated(jobs[middle:])
