"""Batched transcription of waveforms: the window pipeline in rounds, each one encoder pass and static passes.

Usable without HTTP: `Transcriber(model).transcribe_batch(jobs)` is what the server, tests and
benchmarks all drive. Its parts (the decoder, the window splitter, a token budget) are given to it,
not patched in; the window pipeline itself (app/worker/pipeline.py) is the scheduler's too.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import torch
from whisper.audio import HOP_LENGTH, N_FFT, N_SAMPLES, SAMPLE_RATE, mel_filters
from whisper.decoding import DecodingOptions, DecodingResult, detect_language
from whisper.model import Whisper
from whisper.tokenizer import Tokenizer, get_tokenizer

from app.contract import (
    TEMPERATURES,
    ItemError,
    LanguageDetection,
    LanguageGuess,
    Outcome,
    PassStatistics,
    Reason,
    Segment,
    Transcript,
    TranscriptionOptions,
    Work,
)
from app.worker import pipeline, precision
from app.worker.alignment import add_words
from app.worker.decoding import memory, static
from app.worker.pipeline import (
    DecodedWindow,
    PipelineWindow,
    RequestWindows,
    WindowSplitter,
    needs_fallback,
    transcription_options,
)
from app.worker.segments import in_order, window_segments
from app.worker.windows import Window, split_waveform

log = logging.getLogger(__name__)

# languages listed by POST /detect-language
LANGUAGE_CANDIDATES = 5


@dataclass(frozen=True)
class AudioItem:
    """One request's waveform (16 kHz mono float32) and its options."""

    waveform: np.ndarray
    options: Work = field(default_factory=TranscriptionOptions)


class TokenBudget(Protocol):
    """How many tokens windows decode where a model does not decide it itself (a synthetic model's)."""

    def decoding_overrides(self) -> dict[str, object]:
        """DecodingOptions fields added to every decode."""
        ...

    def window_tokens(self, samples: int) -> int | None:
        """The most tokens a window of `samples` decodes; None: to end-of-text."""
        ...


@dataclass(frozen=True)
class PassResult:
    """One pass's outcomes, in the order of its jobs, and what the pass did."""

    outcomes: list[Outcome]
    statistics: PassStatistics


def fixed_windows(jobs: Sequence[AudioItem]) -> list[Window]:
    """Consecutive windows of at most 30 s over each whole waveform, cut at quiet points."""
    return [window for index, job in enumerate(jobs) for window in split_waveform(job.waveform, index)]


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


class Transcriber:
    """Batched Whisper inference over many requests' waveforms at once.

    >>> transcriber = Transcriber(whisper.load_model("tiny.en"))
    >>> [transcript] = transcriber.transcribe_batch([AudioItem(waveform)])
    >>> transcript.text
    'Hello world.'
    """

    def __init__(
        self,
        model: Whisper,
        max_windows_per_pass: int = 64,
        gpu_share: float = 1.0,
        *,
        decoder: static.BatchDecoder | None = None,
        splitter: WindowSplitter = fixed_windows,
        budget: TokenBudget | None = None,
        cast_weights: bool = True,
        model_name: str = "the loaded model",
    ) -> None:
        """`decoder` defaults to the device's best (static passes through the slot decoder on CUDA, sized
        to `gpu_share` of its memory); `budget` fixes how many tokens windows decode (a synthetic model's:
        app/worker/synthetic.py); `cast_weights=False` keeps fp32 weights on CUDA, as whisper.decode's
        per-call casts expect."""
        self.model = model
        self.device = model.device
        self.fp16 = self.device.type == "cuda"
        if self.fp16 and cast_weights:
            precision.cast_to_fp16(model)
        self.decode = decoder or static.batch_decoder(model, max_windows_per_pass, gpu_share)
        self.split = splitter
        self.budget = budget
        # named in refusals (an English-only model asked for another language)
        self.model_name = model_name
        # on the GPU the decoder's buffers are sized to free memory: no pass may outgrow them
        self.max_windows_per_pass = self.decode.capacity
        # requests without a prompt all share one decoding plan (the language is not part of it)
        started = time.monotonic()
        graphs = self.decode.prepare(self.decoding_options("transcribe", "en", prompt=None))
        if graphs:
            log.info("captured %d decoder graphs in %.1f s", graphs, time.monotonic() - started)

    def decoding_options(self, task: str, language: str, prompt: str | None) -> DecodingOptions:
        """Greedy options for one group of windows; the engine's fallback changes only the temperature."""
        return DecodingOptions(
            task=task,
            language=language,
            prompt=self.prompt_tokens(task, language, prompt),
            without_timestamps=False,
            fp16=self.fp16,
            **(self.budget.decoding_overrides() if self.budget is not None else {}),
        )

    def prompt_tokens(self, task: str, language: str, prompt: str | None) -> list[int] | None:
        """The prompt's tokens as whisper's DecodingTask would encode them, but always as text.

        "<|endoftext|>" in a prompt is those 13 characters, never the special token; tiktoken's default, which
        DecodingTask keeps, raises on such text and failed the request.
        """
        if not prompt:
            return None
        return self.tokenizer(task, language).encode(" " + prompt.strip(), disallowed_special=())

    def tokenizer(self, task: str, language: str) -> Tokenizer:
        return get_tokenizer(
            self.model.is_multilingual, num_languages=self.model.num_languages, language=language, task=task
        )

    @torch.inference_mode()
    def encode(self, waveforms: Sequence[np.ndarray], chunk: int | None = None) -> torch.Tensor:
        """Encoder features for windows, `chunk` (default: ENCODER_WINDOWS or the pass's size) at a time."""
        dtype = torch.float16 if self.fp16 else torch.float32
        passes = []
        step = chunk or min(self.max_windows_per_pass, memory.ENCODER_WINDOWS)
        for first in range(0, len(waveforms), step):
            part = waveforms[first : first + step]
            mel = log_mel_batch(part, self.model.dims.n_mels, self.device).to(dtype)
            passes.append(self.model.encoder(mel))
        return torch.cat(passes)

    @torch.inference_mode()
    def decode_with_fallback(
        self,
        features: torch.Tensor,
        options: DecodingOptions,
        temperatures: Sequence[float] = TEMPERATURES,
        limits: Sequence[int | None] | None = None,
    ) -> list[DecodingResult]:
        """Greedy decoding; windows that fail transcribe()'s quality checks retry, together, hotter.

        `limits`: per window, the most tokens it may decode (None: no limit)."""
        results: list[DecodingResult | None] = [None] * len(features)
        pending = list(range(len(features)))
        for temperature in temperatures:
            attempt = replace(options, temperature=temperature)
            for first in range(0, len(pending), self.max_windows_per_pass):
                chunk = pending[first : first + self.max_windows_per_pass]
                chunk_limits = None
                if limits is not None and any(limits[i] is not None for i in chunk):
                    chunk_limits = [limits[i] or self.model.dims.n_text_ctx for i in chunk]
                for index, result in zip(chunk, self.decode(features[chunk], attempt, chunk_limits), strict=True):
                    results[index] = result
            pending = [i for i in pending if needs_fallback(results[i])]
            if not pending:
                break
        return results

    def transcribe_batch(self, jobs: Sequence[AudioItem]) -> list[Transcript]:
        """Transcribe every job with one encoder pass over all their windows and batched decodes."""
        return self._transcribe(jobs)[0]

    def _transcribe(self, jobs: Sequence[AudioItem]) -> tuple[list[Transcript], int]:
        """The transcripts of `jobs`, and how many windows they took (follow-ups included).

        The window pipeline (app/worker/pipeline.py) in rounds: one encoder pass over all first windows
        and a static pass per decoding group; every window settles, and each round's seek-back
        remainders, packed, are encoded and decoded together like the first windows.
        """
        requests = [RequestWindows(job, pipeline.known_language(job, self.model.is_multilingual)) for job in jobs]
        waiting = pipeline.split(requests, self.split)
        window_count = 0
        while waiting:
            features = self.encode([item.audio() for item in waiting])
            window_count += len(waiting)
            pipeline.detect_languages(self.model, waiting, features)
            next_round: list[PipelineWindow] = []
            for (language, task, prompt, temperatures), positions in self.decoding_groups(waiting):
                tokenizer = self.tokenizer(task, language)
                decoding = self.decoding_options(task, language, prompt)
                limits = [self.window_limit(waiting[p].window) for p in positions]
                results = self.decode_with_fallback(features[positions], decoding, temperatures, limits)
                for position, result in zip(positions, results, strict=True):
                    item = waiting[position]
                    item.features = features[position]
                    next_round += pipeline.settle(item, result, tokenizer)
            waiting = next_round
        return [self.stitch(request) for request in requests], window_count

    def window_limit(self, window: Window) -> int | None:
        """The most tokens `window` may decode under the budget; None: to end-of-text."""
        return self.budget.window_tokens(window.length) if self.budget is not None else None

    def stitch(self, request: RequestWindows) -> Transcript:
        """A request's transcript from the windows it kept, in the transcript's order."""
        return self.transcript(request.job, request.language or "en", pipeline.stitched_order(request))

    def transcript(self, job: AudioItem, language: str, decoded: Sequence[DecodedWindow]) -> Transcript:
        """A job's transcript from its decoded windows, given in the engine's order: rounds, then windows.

        Word alignment carries the end of the last word from one window to the next, so the order matters
        (the continuous scheduler sorts its windows into this order first).
        """
        options = transcription_options(job)
        tokenizer = self.tokenizer(options.task, language)
        segments: list[Segment] = []
        last_speech = 0.0
        for item in decoded:
            found = window_segments(item.result, item.window, tokenizer)
            if options.word_timestamps and item.features is not None:
                found, last_speech = add_words(self.model, tokenizer, item.window, item.features, found, last_speech)
            segments.extend(found)
        duration = round(len(job.waveform) / SAMPLE_RATE, 3)
        ordered = in_order(segments, duration)
        return Transcript(
            text="".join(s.text for s in ordered).strip(),
            language=language,
            duration=duration,
            segments=ordered,
        )

    def decoding_groups(
        self, items: Sequence[PipelineWindow]
    ) -> list[tuple[tuple[str, str, str | None, tuple[float, ...]], list[int]]]:
        """Positions of windows whose requests' decoding options agree: each group is one batched decode."""
        groups: dict[tuple[str, str, str | None, tuple[float, ...]], list[int]] = defaultdict(list)
        for position, item in enumerate(items):
            options = item.request.options
            key = (item.request.language or "en", options.task, options.prompt, options.temperatures)
            groups[key].append(position)
        return list(groups.items())

    def detect_languages(self, waveforms: Sequence[np.ndarray]) -> list[LanguageGuess]:
        """The language of each waveform's first 30 s, from one batched encoder pass."""
        if not self.model.is_multilingual:
            return [LanguageGuess("en", 1.0, (("en", 1.0),))] * len(waveforms)
        features = self.encode([waveform[:N_SAMPLES] for waveform in waveforms])
        with torch.inference_mode():
            _, probabilities = detect_language(self.model, features)
        guesses = []
        for distribution in probabilities:
            ranked = sorted(distribution.items(), key=lambda pair: pair[1], reverse=True)[:LANGUAGE_CANDIDATES]
            guesses.append(LanguageGuess(ranked[0][0], ranked[0][1], tuple(ranked)))
        return guesses

    def refusal(self, options: TranscriptionOptions) -> ItemError | None:
        """What an English-only model cannot do (hear another language, translate), refused instead of guessed."""
        if self.model.is_multilingual:
            return None
        if options.task == "translate":
            message = f"model {self.model_name} is English-only: it cannot translate; serve a multilingual model"
            return ItemError(Reason.BAD_OPTION, message, "model")
        if options.language not in (None, "en"):
            message = (
                f"model {self.model_name} is English-only: language {options.language!r} is not supported; "
                "send language=en or none"
            )
            return ItemError(Reason.BAD_OPTION, message, "language")
        return None

    def run_batch(self, jobs: Sequence[AudioItem]) -> PassResult:
        """Answer a mixed batch: transcriptions and language detections, each kind in one pass."""
        outcomes: list[Outcome | None] = [None] * len(jobs)
        for i, job in enumerate(jobs):
            if isinstance(job.options, TranscriptionOptions):
                outcomes[i] = self.refusal(job.options)
        transcribe = [
            i for i, job in enumerate(jobs) if isinstance(job.options, TranscriptionOptions) and outcomes[i] is None
        ]
        detect = [i for i, job in enumerate(jobs) if isinstance(job.options, LanguageDetection)]
        windows = 0
        if transcribe:
            transcripts, windows = self._transcribe([jobs[i] for i in transcribe])
            for i, transcript in zip(transcribe, transcripts, strict=True):
                outcomes[i] = transcript
        if detect:
            for i, guess in zip(detect, self.detect_languages([jobs[i].waveform for i in detect]), strict=True):
                outcomes[i] = guess
        audio_seconds = sum(len(job.waveform) for job in jobs) / SAMPLE_RATE
        return PassResult(
            [outcome for outcome in outcomes if outcome is not None],
            PassStatistics(windows + len(detect), audio_seconds),
        )

    def run_isolated(self, jobs: Sequence[AudioItem]) -> PassResult:
        """Like run_batch, but a failure costs only the job that causes it.

        A failed batch is halved and retried, so a job that breaks the model (or a batch too large
        for the GPU's memory) ends with its own error while its neighbours still succeed. The
        statistics count the work of the halves that succeeded.
        """
        try:
            return self.run_batch(jobs)
        except Exception as error:
            if len(jobs) == 1:
                log.exception("inference failed for one request")
                failure = ItemError(Reason.INFERENCE_FAILED, f"inference failed: {type(error).__name__}")
                return PassResult([failure], PassStatistics())
            if isinstance(error, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            middle = len(jobs) // 2
            first, second = self.run_isolated(jobs[:middle]), self.run_isolated(jobs[middle:])
            return PassResult(first.outcomes + second.outcomes, first.statistics + second.statistics)
