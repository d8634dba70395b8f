"""The decoding plan: what whisper's DecodingTask derives from DecodingOptions for greedy decoding.

Written once: the slot decoder's prefill and steps, and every window that shares a step, read it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import whisper
from whisper.decoding import ApplyTimestampRules, DecodingOptions, DecodingTask
from whisper.model import MultiHeadAttention, Whisper
from whisper.tokenizer import Tokenizer


@dataclass(frozen=True)
class GreedyPlan:
    """What whisper's DecodingTask derives from DecodingOptions for greedy decoding, minus the language.

    Requests in other languages share a plan, and so the captured graphs: only the initial tokens differ.
    """

    n_initial: int
    sot_index: int
    # whisper stops after sample_len tokens, or once the sequence outgrows the text context
    max_tokens: int
    suppress: tuple[int, ...]
    # blank and end-of-text may not open a window (whisper's SuppressBlank)
    suppress_first: tuple[int, ...]
    timestamps: bool
    max_initial_timestamp_index: int | None
    eot: int
    timestamp_begin: int
    no_timestamps: int | None
    no_speech: int | None


def greedy_plan(model: Whisper, options: DecodingOptions) -> tuple[GreedyPlan, tuple[int, ...], Tokenizer] | None:
    """(plan, initial tokens, tokenizer) for options the graphed path decodes exactly; else None."""
    greedy = options.temperature == 0 and options.beam_size is None and options.best_of is None
    if not greedy or options.language is None or options.task not in ("transcribe", "translate"):
        return None
    if not (whisper.model.SDPA_AVAILABLE and MultiHeadAttention.use_sdpa):
        return None
    # whisper's own derivation of tokens and filters, so both paths follow the same rules
    task = DecodingTask(model, options)
    tokenizer = task.tokenizer
    timestamp_rules = [f for f in task.logit_filters if isinstance(f, ApplyTimestampRules)]
    plan = GreedyPlan(
        n_initial=len(task.initial_tokens),
        sot_index=task.sot_index,
        max_tokens=min(task.sample_len, task.n_ctx - len(task.initial_tokens) + 1),
        suppress=task._get_suppress_tokens() if options.suppress_tokens else (),
        suppress_first=tuple([*tokenizer.encode(" "), tokenizer.eot]) if options.suppress_blank else (),
        timestamps=bool(timestamp_rules),
        max_initial_timestamp_index=timestamp_rules[0].max_initial_timestamp_index if timestamp_rules else None,
        eot=tokenizer.eot,
        timestamp_begin=tokenizer.timestamp_begin,
        no_timestamps=tokenizer.no_timestamps,
        no_speech=tokenizer.no_speech,
    )
    return plan, task.initial_tokens, tokenizer


def shared_plan(plan: GreedyPlan) -> GreedyPlan:
    """What rows decoding side by side must agree on: everything but their initial tokens and length."""
    return dataclasses.replace(plan, n_initial=0, sot_index=0, max_tokens=0)
