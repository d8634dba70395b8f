"""Continuous batching: every request's windows decode in slots that free and refill at each token step.

The worker's loop hands requests in with `submit` and calls `step` while any are in; `step` splits new
requests into windows (the engine's splitter: VAD where it is on), admits waiting windows into free
slots (encoder, then prefill), advances every slot by one token, and returns the requests whose last
window has just ended, so an answer never waits for a longer neighbour. A window that ends is handled
through the window pipeline the static engine uses (app/worker/pipeline.py: fallback, settle, seek-back,
packing), and its request's next round, if any, waits for a slot like any other window: greedy
transcripts are the engine's.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from whisper.decoding import DecodingResult
from whisper.tokenizer import Tokenizer

from app.contract import NORMAL_PRIORITY, ItemError, Outcome, Reason, TranscriptionOptions
from app.worker import pipeline
from app.worker.decoding.memory import ENCODER_WINDOWS
from app.worker.decoding.plan import GreedyPlan, greedy_plan, shared_plan
from app.worker.decoding.slots import SlotDecoder, SlotResult, decoding_result
from app.worker.engine import AudioItem, Transcriber
from app.worker.pipeline import PipelineWindow, RequestWindows, needs_fallback

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

# what decodes side by side under one plan: (task, language, prompt)
PlanKey = tuple[str, str, str | None]
Prepared = tuple[GreedyPlan, tuple[int, ...], Tokenizer]


@dataclass(kw_only=True)
class _Request(RequestWindows):
    """One request in the scheduler: its windows go through the pipeline as their slots finish."""

    key: Hashable
    submitted_at: float
    started_at: float | None = None
    # its windows went the static way (options the slots cannot decode) or failed
    gone: bool = False


@dataclass(frozen=True)
class Finished:
    """A request's answer, when its first window began decoding, and how many windows it took."""

    key: Hashable
    outcome: Outcome
    started_at: float
    windows: int = 0


class ContinuousScheduler:
    """Greedy transcription with windows joining and leaving the running decode at every step.

    >>> scheduler = ContinuousScheduler(transcriber, slots=256)
    >>> scheduler.submit("a", AudioItem(waveform))
    >>> while scheduler.busy: answers = scheduler.step()
    """

    def __init__(self, transcriber: Transcriber, slots: int) -> None:
        self.transcriber = transcriber
        self.model = transcriber.model
        self.decoder = SlotDecoder(self.model, slots)
        self.arrived: list[_Request] = []
        self.waiting: deque[PipelineWindow] = deque()
        self.in_slots: dict[int, PipelineWindow] = {}
        self.plans: dict[PlanKey, Prepared | None] = {}
        # steps since the last admission while windows waited, and since the oldest arrival came
        self.waited_steps = 0
        self.arrival_steps = 0
        started = time.monotonic()
        default = self._plan(("transcribe", "en", None))
        graphs = self.decoder.prepare(default[0]) if default else 0
        if graphs:
            log.info("captured %d step graphs in %.1f s", graphs, time.monotonic() - started)

    @staticmethod
    def takes(job: AudioItem) -> bool:
        """Whether `job` decodes here: greedy transcription (with its fallback ladder); the rest does not."""
        return isinstance(job.options, TranscriptionOptions) and not job.options.temperature

    @property
    def busy(self) -> bool:
        return bool(self.arrived or self.waiting or self.in_slots)

    @property
    def occupied(self) -> int:
        return self.decoder.occupied

    def submit(self, key: Hashable, job: AudioItem, priority: int = NORMAL_PRIORITY) -> None:
        """`job` joins at the next step (split into windows there, together with every other new request)."""
        self.arrived.append(_Request(job=job, key=key, submitted_at=time.monotonic(), priority=priority))

    def step(self) -> list[Finished]:
        """Split, admit, advance every slot one token, and answer the requests that ended; never raises:
        a failure answers every request in the scheduler with an error."""
        try:
            answers = self._split() if self._split_due() else []
            answers += self._admit()
            if self.decoder.occupied:
                self.decoder.step()
            return answers + self._harvest()
        except Exception as error:
            log.exception("continuous decoding failed; failing the requests it held")
            return self._fail_all(error)

    # -- arrival ----------------------------------------------------------------------------------------

    def _split_due(self) -> bool:
        """Whether to split the arrivals now: where an admission would take their windows (an idle decoder
        at once, else ADMIT_AT_ONCE of them or the oldest waited ADMIT_AFTER_STEPS steps). The VAD splitter
        costs the host about the same launches whatever the batch; split at every step, it took a third
        of the worker's samples on an H100 (benchmarks/README.md, issue 15)."""
        if not self.arrived:
            return False
        self.arrival_steps += 1
        return (
            not self.decoder.occupied
            or len(self.arrived) + len(self.waiting) >= ADMIT_AT_ONCE
            or self.arrival_steps >= ADMIT_AFTER_STEPS
        )

    def _split(self) -> list[Finished]:
        """New requests' windows, from the engine's splitter in one call; answers for those with none.

        Their windows are admitted in the same step: they already waited for the split."""
        arrived, self.arrived = self.arrived, []
        self.arrival_steps = 0
        self.waited_steps = max(self.waited_steps, ADMIT_AFTER_STEPS - 1)
        answers: list[Finished] = []
        requests: list[_Request] = []
        for request in arrived:
            refusal = self.transcriber.refusal(request.options)
            if refusal is not None:
                answers.append(Finished(request.key, refusal, time.monotonic()))
                continue
            request.language = pipeline.known_language(request.job, self.model.is_multilingual)
            requests.append(request)
        urgent: list[PipelineWindow] = []
        for item in pipeline.split(requests, self.transcriber.split):
            (urgent if item.request.priority > NORMAL_PRIORITY else self.waiting).append(item)
        # live speech is waited for as it is spoken: ahead of every window already waiting (job windows too)
        self.waiting.extendleft(reversed(urgent))
        # VAD heard no speech: the engine's empty transcript
        answers += [self._finish(request) for request in requests if request.done]
        return answers

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
        taken: list[PipelineWindow] = []
        while self.waiting and len(taken) < most:
            taken.append(self.waiting.popleft())
        features = self.transcriber.encode([item.audio() for item in taken], ENCODER_WINDOWS)
        pipeline.detect_languages(self.model, taken, features)
        # windows whose plan cannot decode beside the slots' go back to the front, in order
        groups: dict[PlanKey, list[int]] = {}
        refused: list[PipelineWindow] = []
        answers: list[Finished] = []
        for row, item in enumerate(taken):
            request = self._request(item)
            if request.gone:
                continue  # its request went the static way
            key = self._plan_key(request)
            prepared = self._plan(key) if key is not None else None
            if key is None or prepared is None:
                answers.append(self._unsupported(request))
                continue
            if not self.decoder.accepts(prepared[0]) or (
                groups and shared_plan(prepared[0]) != self._first_plan(groups)
            ):
                refused.append(item)
                continue
            groups.setdefault(key, []).append(row)
        self.waiting.extendleft(reversed(refused))
        for key, rows in groups.items():
            plan, initial, _ = self._prepared(key)
            slots = self.decoder.free_slots()[: len(rows)]
            limits = [self._limit(plan, taken[row]) for row in rows]
            self.decoder.admit(slots, features[rows], plan, initial, limits)
            now = time.monotonic()
            for slot, row in zip(slots, rows, strict=True):
                item = taken[row]
                # a copy: a view would keep the whole admission's features alive as long as any window
                item.features = features[row].clone()
                request = self._request(item)
                request.started_at = request.started_at or now
                self.in_slots[slot] = item
        return answers

    def _first_plan(self, groups: dict[PlanKey, list[int]]) -> GreedyPlan:
        return shared_plan(self._prepared(next(iter(groups)))[0])

    def _limit(self, plan: GreedyPlan, item: PipelineWindow) -> int:
        budget = self.transcriber.window_limit(item.window)
        return min(plan.max_tokens, budget) if budget else plan.max_tokens

    @staticmethod
    def _request(item: PipelineWindow) -> _Request:
        if not isinstance(item.request, _Request):
            raise TypeError("a window of a request the scheduler does not hold")
        return item.request

    def _plan_key(self, request: RequestWindows) -> PlanKey | None:
        if request.language is None:
            return None
        return (request.options.task, request.language, request.options.prompt)

    def _plan(self, key: PlanKey) -> Prepared | None:
        if key not in self.plans:
            self.plans[key] = greedy_plan(self.model, self.transcriber.decoding_options(*key))
        return self.plans[key]

    def _prepared(self, key: PlanKey) -> Prepared:
        """The plan of windows already admitted under `key`, which therefore has one."""
        prepared = self.plans.get(key)
        if prepared is None:
            raise LookupError(f"no greedy plan for {key}")
        return prepared

    # -- finished windows -----------------------------------------------------------------------------

    def _harvest(self) -> list[Finished]:
        """Settle the windows that ended: the fallback ladder for those that need it (one static pass per
        plan), then the engine's rule per window; a request whose last window settled is answered."""
        ended = [(self.in_slots.pop(result.slot), result) for result in self.decoder.finished()]
        if not ended:
            return []
        results = [self._result(item, slot) for item, slot in ended]
        retry: dict[PlanKey, list[int]] = {}
        for position, ((item, _), result) in enumerate(zip(ended, results, strict=True)):
            key = self._plan_key(item.request)
            if needs_fallback(result) and key is not None:
                retry.setdefault(key, []).append(position)
        for key, positions in retry.items():
            hotter = self._fall_back([ended[p][0] for p in positions], key)
            for position, result in zip(positions, hotter, strict=True):
                results[position] = result
        answers = []
        for (item, _), result in zip(ended, results, strict=True):
            answer = self._settle(item, result)
            if answer is not None:
                answers.append(answer)
        return answers

    def _result(self, item: PipelineWindow, slot: SlotResult) -> DecodingResult:
        """The slot's tokens as whisper.decode's result for that window."""
        key = self._plan_key(item.request)
        if key is None:
            raise LookupError("a window decoded without a language")
        plan, _, tokenizer = self._prepared(key)
        return decoding_result(slot, plan, tokenizer, key[1], item.features)

    def _fall_back(self, items: Sequence[PipelineWindow], key: PlanKey) -> list[DecodingResult]:
        """transcribe()'s ladder past greedy for windows that failed its checks: a static pass, hotter."""
        features = torch.stack([self._features(item) for item in items])
        decoding = self.transcriber.decoding_options(*key)
        temperatures = items[0].request.options.temperatures[1:]
        limits = [self.transcriber.window_limit(item.window) for item in items]
        return self.transcriber.decode_with_fallback(features, decoding, temperatures, limits)

    @staticmethod
    def _features(item: PipelineWindow) -> torch.Tensor:
        if item.features is None:
            raise LookupError("a window left its slot without its encoder features")
        return item.features

    def _settle(self, item: PipelineWindow, result: DecodingResult) -> Finished | None:
        """The pipeline's settle point for one window; its request's next round goes first in the queue
        (it is what the request's answer waits for), and a request with nothing left is answered."""
        request = self._request(item)
        if request.gone:
            request.pending -= 1
            return None
        key = self._plan_key(request)
        if key is None:
            raise LookupError("a window decoded without a language")
        next_round = pipeline.settle(item, result, self._prepared(key)[2])
        self.waiting.extendleft(reversed(next_round))
        return self._finish(request) if request.done else None

    def _finish(self, request: _Request) -> Finished:
        """The request's transcript, stitched by the engine in its own window order."""
        transcript = self.transcriber.stitch(request)
        request.decoded = []
        return Finished(request.key, transcript, request.started_at or time.monotonic(), request.windows)

    def _unsupported(self, request: _Request) -> Finished:
        """A window whose options the greedy slots cannot decode: its whole request goes the static way."""
        request.gone = True
        self.waiting = deque(item for item in self.waiting if item.request is not request)
        result = self.transcriber.run_isolated([request.job])
        [outcome] = result.outcomes
        return Finished(request.key, outcome, time.monotonic(), result.statistics.windows)

    def _fail_all(self, error: Exception) -> list[Finished]:
        if isinstance(error, torch.cuda.OutOfMemoryError):
            torch.cuda.empty_cache()
        held = [*self.arrived, *(self._request(item) for item in (*self.in_slots.values(), *self.waiting))]
        requests = {id(request): request for request in held if not request.gone}
        self.arrived.clear()
        self.in_slots.clear()
        self.waiting.clear()
        self.decoder.release_all()
        failure = ItemError(Reason.INFERENCE_FAILED, f"inference failed: {type(error).__name__}")
        now = time.monotonic()
        return [Finished(request.key, failure, request.started_at or now) for request in requests.values()]
