"""whisper's logit filters for greedy decoding, on the device, for every row at once and without syncs.

An ordered list in whisper (decoding.py's LogitFilters); here each rule is one function written once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from app.worker.decoding.plan import GreedyPlan

NEG_INF = float("-inf")


def first_token_rules(logits: Tensor, plan: GreedyPlan, vocabulary: Tensor) -> None:
    """whisper's ApplyTimestampRules for the first sampled token: a timestamp, no later than the
    plan's max_initial_timestamp."""
    if not plan.timestamps:
        return
    if plan.no_timestamps is not None:
        logits[:, plan.no_timestamps] = NEG_INF
    logits[:, : plan.timestamp_begin] = NEG_INF
    if plan.max_initial_timestamp_index is not None:
        logits[:, plan.timestamp_begin + plan.max_initial_timestamp_index + 1 :] = NEG_INF
    prefer_timestamps(logits, plan, vocabulary)


def timestamp_rules(
    logits: Tensor,
    plan: GreedyPlan,
    vocabulary: Tensor,
    last_is_timestamp: Tensor,
    penultimate_is_timestamp: Tensor,
    last_timestamp: Tensor,
) -> None:
    """whisper's ApplyTimestampRules after the first token, for all rows at once and without syncs.

    The three row states are (rows,) tensors: whether the last and the one before were timestamps
    (a missing one counts as a timestamp), and the last timestamp token (-1 before any)."""
    if plan.no_timestamps is not None:
        logits[:, plan.no_timestamps] = NEG_INF
    last = last_is_timestamp[:, None]
    penultimate = penultimate_is_timestamp[:, None]
    closing = last & ~penultimate
    timestamp_column = vocabulary >= plan.timestamp_begin
    # timestamps come in pairs: after a pair, text; after a closing one, a timestamp or the end
    forbidden = (last & penultimate & timestamp_column) | (closing & (vocabulary < plan.eot))
    # timestamps never decrease, and a segment after text has a nonzero length
    last_timestamp = last_timestamp[:, None]
    bound = torch.where(closing, last_timestamp, last_timestamp + 1)
    forbidden |= timestamp_column & (vocabulary < bound) & (last_timestamp >= 0)
    logits.masked_fill_(forbidden, NEG_INF)
    prefer_timestamps(logits, plan, vocabulary)


def prefer_timestamps(logits: Tensor, plan: GreedyPlan, vocabulary: Tensor) -> None:
    """A timestamp is forced where all timestamps together are likelier than any text token."""
    logprobs = F.log_softmax(logits.float(), dim=-1)
    timestamp_logprob = logprobs[:, plan.timestamp_begin :].logsumexp(dim=-1)
    max_text_logprob = logprobs[:, : plan.timestamp_begin].max(dim=-1).values
    prefer = (timestamp_logprob > max_text_logprob)[:, None]
    logits.masked_fill_(prefer & (vocabulary < plan.timestamp_begin), NEG_INF)
