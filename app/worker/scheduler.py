"""Continuous batching: every request's windows decode in slots that free and refill at each token step.

The worker's loop hands requests in with `submit` and calls `step` while any are in; `step` admits
waiting windows into free slots (encoder, then prefill), advances every slot by one token, and returns
the requests whose last window has just ended, so an answer never waits for a longer neighbour.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

import torch
from whisper.audio import SAMPLE_RATE
from whisper.decoding import DecodingResult, detect_language
from whisper.tokenizer import Tokenizer
from whisper.utils import compression_ratio

from app.contract import ItemError, Reason, Segment, Transcript, TranscriptionOptions
from app.worker import cuda_decoding, synthetic
from app.worker.alignment import add_words
from app.worker.cuda_decoding import GreedyPlan, greedy_plan
from app.worker.engine import AudioJob, Transcriber, is_silence, needs_fallback
from app.worker.segments import window_segments
from app.worker.slot_decoding import SlotDecoder, SlotResult, shared_plan
from app.worker.windows import Window, split_waveform

log = logging.getLogger(__name__)

# while slots decode, waiting windows are admitted once this many slots are free, or once the oldest
# has waited ADMIT_AFTER_STEPS steps: each admission costs the host the same launches (encoder chunks,
# an eager prefill) whatever its size, and the first H100 run spent half the worker's time admitting
# cohorts of a few windows (h100-medium.stacks-on.txt, ADMIT_AT_ONCE 8)
ADMIT_AT_ONCE = 32
ADMIT_AFTER_STEPS = 4
# and at most this many windows per admission while others decode: one admission's encoder time is
# a pause for every running window (an idle decoder admits all it can hold)
ADMIT_MOST = 64


@dataclass
class _Request:
    """One request in the scheduler: its windows' results fill in as their slots finish."""

    key: Hashable
    job: AudioJob
    windows: list[Window]
    submitted_at: float
    language: str | None = None
    results: list[DecodingResult | None] = field(default_factory=list)
    features: list[torch.Tensor | None] = field(default_factory=list)
    started_at: float | None = None
    pending: int = 0

    @property
    def options(self) -> TranscriptionOptions:
        return self.job.options


@dataclass(frozen=True)
class Finished:
    """A request's answer, and when its first window began decoding."""

    key: Hashable
    outcome: Transcript | ItemError
    started_at: float


class ContinuousScheduler:
    """Greedy transcription with windows joining and leaving the running decode at every step.

    >>> scheduler = ContinuousScheduler(transcriber, slots=256)
    >>> scheduler.submit("a", AudioJob(waveform))
    >>> while scheduler.busy: answers = scheduler.step()
    """

    def __init__(self, transcriber: Transcriber, slots: int) -> None:
        self.transcriber = transcriber
        self.model = transcriber.model
        self.decoder = SlotDecoder(self.model, slots)
        self.waiting: deque[tuple[_Request, int]] = deque()
        self.in_slots: dict[int, tuple[_Request, int]] = {}
        self.plans: dict[tuple, tuple[GreedyPlan, tuple[int, ...], Tokenizer] | None] = {}
        # steps since the last admission while windows waited
        self.waited_steps = 0
        started = time.monotonic()
        default = self._plan("transcribe", "en", None)
        graphs = self.decoder.prepare(default[0]) if default else 0
        if graphs:
            log.info("captured %d step graphs in %.1f s", graphs, time.monotonic() - started)

    @staticmethod
    def takes(job: AudioJob) -> bool:
        """Whether `job` decodes here: greedy transcription (with its fallback ladder); the rest does not."""
        return isinstance(job.options, TranscriptionOptions) and not job.options.temperature

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.in_slots)

    @property
    def occupied(self) -> int:
        return self.decoder.occupied

    def submit(self, key: Hashable, job: AudioJob) -> None:
        windows = split_waveform(job.waveform)
        request = _Request(key, job, windows, time.monotonic(), pending=len(windows))
        request.results = [None] * len(windows)
        request.features = [None] * len(windows)
        if not self.model.is_multilingual:
            request.language = "en"
        elif job.options.language is not None:
            request.language = job.options.language
        self.waiting.extend((request, index) for index in range(len(windows)))

    def step(self) -> list[Finished]:
        """Admit, advance every slot one token, and answer the requests that ended; never raises:
        a failure answers every request in the slots and waiting for them with an error."""
        try:
            answers = self._admit()
            if self.decoder.occupied:
                self.decoder.step()
            return answers + self._harvest()
        except Exception as error:
            log.exception("continuous decoding failed; failing the requests it held")
            return self._fail_all(error)

    # -- admission ------------------------------------------------------------------------------------

    def _admit(self) -> list[Finished]:
        free = self.decoder.free_slots()
        if not self.waiting or not free:
            return []
        running = self.decoder.occupied > 0
        self.waited_steps += 1
        enough = min(len(free), len(self.waiting)) >= ADMIT_AT_ONCE
        if running and not enough and self.waited_steps < ADMIT_AFTER_STEPS:
            return []
        self.waited_steps = 0
        most = min(len(free), ADMIT_MOST) if running else len(free)
        taken: list[tuple[_Request, int]] = []
        while self.waiting and len(taken) < most:
            taken.append(self.waiting.popleft())
        features = self.transcriber.encode(
            [self._samples(request, index) for request, index in taken], cuda_decoding.ENCODER_WINDOWS
        )
        self._detect_languages(taken, features)
        # windows whose plan cannot decode beside the slots' go back to the front, in order
        groups: dict[tuple, list[int]] = {}
        refused: list[tuple[_Request, int]] = []
        answers: list[Finished] = []
        for row, (request, index) in enumerate(taken):
            if request.pending < 0:
                continue  # its request went the static way
            key = self._plan_key(request)
            prepared = self._plan(*key)
            if prepared is None:
                request.pending = -1
                answers.append(self._unsupported(request))
                continue
            if not self.decoder.accepts(prepared[0]) or (
                groups and shared_plan(prepared[0]) != self._first_plan(groups)
            ):
                refused.append((request, index))
                continue
            groups.setdefault(key, []).append(row)
        self.waiting.extendleft(reversed(refused))
        for key, rows in groups.items():
            plan, initial, _ = self.plans[key]
            slots = self.decoder.free_slots()[: len(rows)]
            limits = [self._limit(plan, *taken[row]) for row in rows]
            self.decoder.admit(slots, features[rows], plan, initial, limits)
            now = time.monotonic()
            for slot, row in zip(slots, rows, strict=True):
                request, index = taken[row]
                # a copy: a view would keep the whole admission's features alive as long as any request
                request.features[index] = features[row].clone()
                request.started_at = request.started_at or now
                self.in_slots[slot] = (request, index)
        return [answer for answer in answers if answer is not None]

    def _first_plan(self, groups: dict[tuple, list[int]]) -> GreedyPlan:
        return shared_plan(self.plans[next(iter(groups))][0])

    def _samples(self, request: _Request, index: int):
        window = request.windows[index]
        return request.job.waveform[window.start : window.end]

    def _limit(self, plan: GreedyPlan, request: _Request, index: int) -> int:
        window = request.windows[index]
        realistic = synthetic.window_tokens(self.model, window.end - window.start)
        return min(plan.max_tokens, realistic) if realistic else plan.max_tokens

    def _detect_languages(self, taken: list[tuple[_Request, int]], features: torch.Tensor) -> None:
        """A request without a language takes the one detected in its first window (admitted first)."""
        rows = [row for row, (request, index) in enumerate(taken) if request.language is None and index == 0]
        if not rows:
            return
        with torch.inference_mode():
            _, probabilities = detect_language(self.model, features[rows])
        for row, distribution in zip(rows, probabilities, strict=True):
            taken[row][0].language = max(distribution, key=distribution.get)

    def _plan_key(self, request: _Request) -> tuple:
        return (request.options.task, request.language, request.options.prompt)

    def _plan(
        self, task: str, language: str, prompt: str | None
    ) -> tuple[GreedyPlan, tuple[int, ...], Tokenizer] | None:
        key = (task, language, prompt)
        if key not in self.plans:
            options = self.transcriber.decoding_options(task, language, prompt)
            self.plans[key] = greedy_plan(self.model, options)
        return self.plans[key]

    # -- finished windows -----------------------------------------------------------------------------

    def _harvest(self) -> list[Finished]:
        answers = []
        for result in self.decoder.finished():
            request, index = self.in_slots.pop(result.slot)
            request.results[index] = self._result(request, index, result)
            request.pending -= 1
            if request.pending == 0:
                answers.append(self._finish(request))
        return answers

    def _result(self, request: _Request, index: int, slot: SlotResult) -> DecodingResult:
        plan, _, tokenizer = self.plans[self._plan_key(request)]
        text = tokenizer.decode(slot.tokens).strip()
        return DecodingResult(
            audio_features=request.features[index],
            language=request.language,
            tokens=slot.tokens,
            text=text,
            avg_logprob=slot.sum_logprob / (len(slot.tokens) + 1),
            no_speech_prob=slot.no_speech_prob if plan.no_speech is not None else float("nan"),
            temperature=0.0,
            compression_ratio=compression_ratio(text),
        )

    def _finish(self, request: _Request) -> Finished:
        """transcribe()'s fallback for the windows that need it (a separate, static pass), then segments."""
        options = request.options
        transcriber = self.transcriber
        retry = [i for i, result in enumerate(request.results) if needs_fallback(result)]
        if retry:
            decoding = transcriber.decoding_options(options.task, request.language, options.prompt)
            features = torch.stack([request.features[i] for i in retry])
            limits = [self._limit(self.plans[self._plan_key(request)][0], request, i) for i in retry]
            hotter = transcriber.decode_with_fallback(features, decoding, options.temperatures[1:], limits)
            for i, result in zip(retry, hotter, strict=True):
                request.results[i] = result
        tokenizer = transcriber.tokenizer(options.task, request.language)
        segments: list[Segment] = []
        last_speech = 0.0
        for index, (window, result) in enumerate(zip(request.windows, request.results, strict=True)):
            if is_silence(result):
                continue
            found = window_segments(result, window, tokenizer)
            if options.word_timestamps:
                found, last_speech = add_words(
                    self.model, tokenizer, window, request.features[index], found, last_speech
                )
            segments.extend(found)
        transcript = Transcript(
            text="".join(s.text for s in segments).strip(),
            language=request.language,
            duration=round(len(request.job.waveform) / SAMPLE_RATE, 3),
            segments=segments,
        )
        request.features = []
        return Finished(request.key, transcript, request.started_at)

    def _unsupported(self, request: _Request) -> Finished | None:
        """A window whose options the greedy slots cannot decode: its whole request goes the static way."""
        self.waiting = deque(item for item in self.waiting if item[0] is not request)
        for slot in [slot for slot, (held, _) in self.in_slots.items() if held is request]:
            self.in_slots.pop(slot)
        [outcome] = self.transcriber.run_isolated([request.job]).outcomes
        return Finished(request.key, outcome, time.monotonic())

    def _fail_all(self, error: Exception) -> list[Finished]:
        if isinstance(error, torch.cuda.OutOfMemoryError):
            torch.cuda.empty_cache()
        requests = {id(r): r for r, _ in [*self.in_slots.values(), *self.waiting]}
        self.in_slots.clear()
        self.waiting.clear()
        self.decoder.release_all()
        failure = ItemError(Reason.INFERENCE_FAILED, f"inference failed: {type(error).__name__}")
        now = time.monotonic()
        return [Finished(request.key, failure, request.started_at or now) for request in requests.values()]
