"""Greedy decoding in slots: every row holds one window at its own position, so windows join and leave
the running decode at any step (iteration-level scheduling, as LLM servers do it).

Each slot keeps its own self-attention cache and the cross-attention keys and values computed once
from its window's encoder output. `admit` prefills new windows into free slots between steps; `step`
advances every occupied slot by one token; a slot whose window ended is free again at once. The
tokens are whisper.decode's, bit for bit: the self-attention over rows of different lengths is
flash attention's variable-length form (each row reads exactly its own keys, as whisper's dense call
does), used only where a start-up probe finds it bit-identical to the dense call; otherwise rows of
equal length are attended together with whisper's own call.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor
from whisper.decoding import DecodingResult
from whisper.model import Whisper
from whisper.tokenizer import Tokenizer
from whisper.utils import compression_ratio

from app.worker.decoding.attention import (
    attend,
    cross_attention_and_mlp,
    dense_attention,
    split_heads,
    varlen_attention,
    varlen_is_exact,
)
from app.worker.decoding.cross_attention import CrossAttentionCache, CrossAttentionOptions
from app.worker.decoding.graphs import GraphCache, bucket
from app.worker.decoding.plan import GreedyPlan, shared_plan
from app.worker.decoding.rules import NEG_INF, first_token_rules, timestamp_rules

log = logging.getLogger(__name__)


@dataclass
class _Snapshot:
    """The per-slot results as they stood after one step, copied to the host without a wait."""

    done: Tensor
    n_sampled: Tensor
    sum_logprobs: Tensor
    no_speech: Tensor
    tokens: Tensor
    event: torch.cuda.Event | None
    step: int = -1
    rows: int = 0

    @classmethod
    def empty(cls, capacity: int, n_ctx: int, pinned: bool) -> _Snapshot:
        def host(*shape: int, dtype: torch.dtype) -> Tensor:
            return torch.zeros(*shape, dtype=dtype, pin_memory=pinned)

        return cls(
            done=host(capacity, dtype=torch.bool),
            n_sampled=host(capacity, dtype=torch.long),
            sum_logprobs=host(capacity, dtype=torch.float32),
            no_speech=host(capacity, dtype=torch.float32),
            tokens=host(capacity, n_ctx, dtype=torch.long),
            event=torch.cuda.Event() if pinned else None,  # type: ignore[no-untyped-call]
        )

    def take(self, decoder: SlotDecoder, rows: int, step: int) -> None:
        """Queue the copies of rows [0, rows) after the step just queued."""
        for target, source in (
            (self.done, decoder.done), (self.n_sampled, decoder.n_sampled), (self.sum_logprobs, decoder.sum_logprobs),
            (self.no_speech, decoder.no_speech), (self.tokens, decoder.tokens),
        ):  # fmt: skip
            target[:rows].copy_(source[:rows], non_blocking=self.event is not None)
        if self.event is not None:
            self.event.record()
        self.step, self.rows = step, rows


@dataclass(frozen=True)
class SlotResult:
    """One finished window: its sampled tokens (end-of-text cut off) and whisper's per-window figures."""

    slot: int
    tokens: list[int]
    sum_logprob: float
    no_speech_prob: float


def decoding_result(
    ended: SlotResult, plan: GreedyPlan, tokenizer: Tokenizer, language: str, features: Tensor | None
) -> DecodingResult:
    """A window's slot tokens as whisper.decode's result for that window: text and whisper's figures."""
    text = tokenizer.decode(ended.tokens).strip()
    return DecodingResult(
        audio_features=features,
        language=language,
        tokens=ended.tokens,
        text=text,
        avg_logprob=ended.sum_logprob / (len(ended.tokens) + 1),
        no_speech_prob=ended.no_speech_prob if plan.no_speech is not None else math.nan,
        temperature=0.0,
        compression_ratio=compression_ratio(text),
    )


class SlotDecoder:
    """Greedy decoding of up to `capacity` windows, each in its own slot and at its own position.

    >>> decoder = SlotDecoder(model, capacity=256)
    >>> decoder.admit([0, 1], features, plan, initial_tokens, limits=[224, 224])
    >>> while decoder.occupied: finished = decoder.step()
    """

    def __init__(
        self, model: Whisper, capacity: int, use_graphs: bool | None = None, cross: CrossAttentionOptions | None = None
    ) -> None:
        """A step over the slots runs as one CUDA graph per bucket of slots (graphs.bucket): the
        smallest that covers every occupied slot. `cross`: the step's cross-attention (default: the process's
        setting, cross_attention.configure)."""
        self.model = model
        self.capacity = capacity
        device = model.device
        self.use_graphs = device.type == "cuda" if use_graphs is None else use_graphs
        self.dtype = torch.float16 if device.type == "cuda" else torch.float32
        dims = model.dims
        self.n_head = dims.n_text_head
        self.n_ctx = dims.n_text_ctx
        self.n_layers = dims.n_text_layer

        def zeros(*shape: int, dtype: torch.dtype = self.dtype) -> Tensor:
            return torch.zeros(*shape, dtype=dtype, device=device)

        layers, width = dims.n_text_layer, dims.n_text_state
        self.cross = CrossAttentionCache(
            layers, capacity, dims.n_audio_ctx, width, self.n_head, device, self.dtype, cross
        )
        self.self_keys = zeros(layers, capacity, dims.n_text_ctx, width)
        self.self_values = zeros(layers, capacity, dims.n_text_ctx, width)
        self.embedding_t = model.decoder.token_embedding.weight.to(self.dtype).t()
        self.vocabulary = torch.arange(dims.n_vocab, device=device)
        self.slot_index = torch.arange(capacity, device=device)
        # per-slot state, updated in place so that every replay sees the same memory
        self.next_token = zeros(capacity, dtype=torch.long)
        self.n_initial = torch.ones(capacity, dtype=torch.long, device=device)
        # tokens sampled so far, the one being fed included
        self.n_sampled = torch.ones(capacity, dtype=torch.long, device=device)
        self.limit = torch.ones(capacity, dtype=torch.long, device=device)
        self.sum_logprobs = zeros(capacity, dtype=torch.float32)
        self.no_speech = zeros(capacity, dtype=torch.float32)
        self.tokens = zeros(capacity, dims.n_text_ctx, dtype=torch.long)
        self.last_is_timestamp = zeros(capacity, dtype=torch.bool)
        self.penultimate_is_timestamp = zeros(capacity, dtype=torch.bool)
        self.last_timestamp = zeros(capacity, dtype=torch.long)
        # a free slot counts as done: it never advances and its rows' results are ignored
        self.done = torch.ones(capacity, dtype=torch.bool, device=device)
        self.lengths = torch.ones(capacity, dtype=torch.int32, device=device)
        self.offsets = torch.arange(capacity + 1, dtype=torch.int32, device=device)
        self.hidden = zeros(capacity, 1, width)
        self.query = zeros(capacity, 1, width)
        self.attended = zeros(capacity, 1, width)
        # what every row in the slots decodes by (shared_plan), set by the first admission or `prepare`
        self._plan: GreedyPlan | None = None
        self.suppress: Tensor | None = None
        # host side: which slots hold a window, and each one's key count (for grouped attention)
        self.occupant: list[bool] = [False] * capacity
        self.host_lengths: list[int] = [0] * capacity
        state = [
            self.next_token, self.n_sampled, self.sum_logprobs, self.tokens, self.last_is_timestamp,
            self.penultimate_is_timestamp, self.last_timestamp, self.done, self.lengths, self.hidden, self.query,
            self.attended,
        ]  # fmt: skip
        self.graphs = GraphCache(device, self.use_graphs, state)
        # whisper's tokens bit for bit only where cross-attention keeps them too (its own call, sdpa): with
        # cuDNN or the split-KV kernel a varlen self-attention within fp16 rounding costs nothing more
        bitwise = self.cross.backend == "sdpa"
        self.varlen = self.use_graphs and varlen_is_exact(
            device, self.n_head, width // self.n_head, self.n_ctx, bitwise=bitwise
        )
        # results leave the GPU one step behind: step N's state is copied out while step N + 1 runs,
        # so the host never waits for the GPU to finish the step it just queued
        self.snapshots = [_Snapshot.empty(capacity, self.n_ctx, self.use_graphs) for _ in range(2)]
        self.steps = 0
        # the first step that includes each slot's window
        self.admitted_at: list[int] = [0] * capacity
        log.info("slot decoder: %d slots, %s self-attention", capacity, "varlen" if self.varlen else "grouped")

    # -- host bookkeeping ---------------------------------------------------------------------------

    @property
    def plan(self) -> GreedyPlan:
        """The shared plan of the rows in the slots; only read once a window was admitted or graphs prepared."""
        if self._plan is None:
            raise RuntimeError("the slot decoder has no plan before its first admission")
        return self._plan

    @property
    def occupied(self) -> int:
        return sum(self.occupant)

    def free_slots(self) -> list[int]:
        return [slot for slot, taken in enumerate(self.occupant) if not taken]

    def rows(self) -> int:
        """The bucket covering every occupied slot."""
        highest = max((slot for slot, taken in enumerate(self.occupant) if taken), default=0)
        return bucket(highest + 1, self.capacity)

    def accepts(self, plan: GreedyPlan) -> bool:
        """Whether windows of `plan` can decode beside the windows in the slots now."""
        return self._plan is None or self.occupied == 0 or shared_plan(plan) == self._plan

    def on_device(self) -> contextlib.AbstractContextManager[object]:
        return torch.cuda.device(self.model.device) if self.use_graphs else contextlib.nullcontext()

    # -- admission ----------------------------------------------------------------------------------

    @torch.inference_mode()
    def admit(
        self, slots: Sequence[int], features: Tensor, plan: GreedyPlan, initial_tokens: Sequence[int],
        limits: Sequence[int],
    ) -> None:  # fmt: skip
        """Prefill windows (their encoder `features`) into free `slots`: cross-attention keys and values,
        the initial tokens, the first choice. All share `plan` and `initial_tokens`."""
        if not self.accepts(plan):
            raise ValueError("windows of another decoding plan are in the slots")
        self._configure(plan)
        shared = self.plan
        with self.on_device():
            device = self.model.device
            index = torch.tensor(list(slots), dtype=torch.long, device=device)
            decoder = self.model.decoder
            n_initial = plan.n_initial
            rows = len(slots)
            initial = torch.tensor(list(initial_tokens), dtype=torch.long, device=device).expand(rows, -1)
            x = (decoder.token_embedding(initial) + decoder.positional_embedding[:n_initial]).to(self.dtype)
            for layer, block in enumerate(decoder.blocks):
                # one layer's cross-attention keys and values at a time: all layers' for a large
                # admission would take tens of GB beside the caches they are copied into
                cross_keys, cross_values = block.cross_attn.key(features), block.cross_attn.value(features)
                self.cross.store(layer, index, cross_keys, cross_values)
                attention = block.attn
                h = block.attn_ln(x)
                keys, values = attention.key(h), attention.value(h)
                self.self_keys[layer, :, :n_initial].index_copy_(0, index, keys)
                self.self_values[layer, :, :n_initial].index_copy_(0, index, values)
                attended = attend(attention.query(h), keys, values, self.n_head, causal=n_initial > 1)
                x = x + attention.out(attended)
                x = cross_attention_and_mlp(block, x, cross_keys, cross_values)
                del cross_keys, cross_values
            logits = (decoder.ln(x) @ self.embedding_t).float()
            no_speech = torch.full((rows,), math.nan, device=device)
            if plan.no_speech is not None:
                no_speech = logits[:, plan.sot_index].float().softmax(dim=-1)[:, plan.no_speech]
            logits = logits[:, -1]
            if plan.suppress_first:
                logits.index_fill_(1, torch.tensor(plan.suppress_first, device=device), NEG_INF)
            if self.suppress is not None:
                logits.index_fill_(1, self.suppress, NEG_INF)
            first_token_rules(logits, shared, self.vocabulary)
            chosen = logits.argmax(dim=-1)
            logprob = F.log_softmax(logits.float(), dim=-1).gather(1, chosen[:, None]).squeeze(1)
            is_timestamp = chosen >= shared.timestamp_begin
            limit = torch.tensor(list(limits), dtype=torch.long, device=device).clamp(max=plan.max_tokens)
            state = {
                self.next_token: chosen,
                self.n_initial: torch.full((rows,), n_initial, device=device),
                self.n_sampled: torch.ones(rows, dtype=torch.long, device=device),
                self.limit: limit,
                self.sum_logprobs: logprob,
                self.no_speech: no_speech.float(),
                self.last_is_timestamp: is_timestamp,
                # whisper treats a missing penultimate token as a timestamp
                self.penultimate_is_timestamp: torch.ones(rows, dtype=torch.bool, device=device),
                self.last_timestamp: torch.where(is_timestamp, chosen, -1),
                self.done: (chosen == shared.eot) | (limit <= 1),
                self.lengths: torch.full((rows,), n_initial + 1, dtype=torch.int32, device=device),
            }
            for buffer, values in state.items():
                buffer.index_copy_(0, index, values.to(buffer.dtype))
            self.tokens[:, 0].index_copy_(0, index, chosen)
        for slot in slots:
            self.occupant[slot] = True
            self.host_lengths[slot] = n_initial + 1
            self.admitted_at[slot] = self.steps + 1

    def _configure(self, plan: GreedyPlan) -> None:
        shared = shared_plan(plan)
        if shared == self._plan:
            return
        device = self.model.device
        self._plan = shared
        # kept alive: captured graphs read it in place
        self.suppress = torch.tensor(plan.suppress, dtype=torch.long, device=device) if plan.suppress else None
        self.graphs.clear()

    # -- steps --------------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> None:
        """Advance every occupied slot by one token (slots that ended stay as they are)."""
        rows = self.rows()
        with self.on_device():
            if self.varlen:
                self.graphs.runner(("step", rows), lambda: self._whole_step(rows))()
            else:
                self._embed_runner(rows)()
                groups = self._length_groups(rows)
                for layer in range(self.n_layers):
                    self._grouped_attention(layer, rows, groups)
                    self._layer_runner(rows, layer)()
            for slot in range(rows):
                if self.occupant[slot]:
                    self.host_lengths[slot] = min(self.host_lengths[slot] + 1, self.n_ctx)
            self.steps += 1
            self.snapshots[self.steps % 2].take(self, rows, self.steps)

    @torch.inference_mode()
    def finished(self) -> list[SlotResult]:
        """Free the slots whose windows had ended by the step before the last one queued (on the CPU,
        by the last one) and return their results; waits only for that earlier step."""
        seen = self.steps - 1 if self.use_graphs else self.steps
        snapshot = self.snapshots[seen % 2]
        if seen < 1 or snapshot.step != seen:
            return []
        if snapshot.event is not None:
            snapshot.event.synchronize()
        done = snapshot.done[: snapshot.rows].tolist()
        ended = [
            slot for slot, ended in enumerate(done) if ended and self.occupant[slot] and self.admitted_at[slot] <= seen
        ]
        results = []
        eot = self.plan.eot
        for slot in ended:
            sequence = snapshot.tokens[slot, : int(snapshot.n_sampled[slot])].tolist()
            if eot in sequence:
                sequence = sequence[: sequence.index(eot)]
            results.append(
                SlotResult(slot, sequence, float(snapshot.sum_logprobs[slot]), float(snapshot.no_speech[slot]))
            )
            self.occupant[slot] = False
        return results

    def release_all(self) -> None:
        """Forget every window (after a failed step): the slots are free and done."""
        self.done.fill_(True)
        self.occupant = [False] * self.capacity
        for snapshot in self.snapshots:
            snapshot.step = -1

    def prepare(self, plan: GreedyPlan) -> int:
        """Capture the step graphs of every bucket now, before any request waits; returns how many."""
        if not self.use_graphs:
            return 0
        self._configure(plan)
        before = len(self.graphs)
        with self.on_device(), torch.inference_mode():
            for rows in sorted({bucket(n, self.capacity) for n in range(1, self.capacity + 1)}):
                # every slot is free (done): the replays change nothing that a later window reads
                if self.varlen:
                    self.graphs.runner(("step", rows), partial(self._whole_step, rows))()
                else:
                    self._embed_runner(rows)()
                    for layer in range(self.n_layers):
                        self._layer_runner(rows, layer)()
            torch.cuda.synchronize()
        return len(self.graphs) - before

    def _whole_step(self, rows: int) -> None:
        self._embed(rows)
        for layer in range(self.n_layers):
            keys = self.self_keys[layer, :rows].view(rows * self.n_ctx, self.n_head, -1)
            values = self.self_values[layer, :rows].view(rows * self.n_ctx, self.n_head, -1)
            query = self.query[:rows].view(rows, self.n_head, -1)
            attended = varlen_attention(query, keys, values, self.lengths[:rows], self.offsets)
            self.attended[:rows].view(rows, self.n_head, -1).copy_(attended)
            self._finish_layer(rows, layer)

    def _embed_runner(self, rows: int) -> Callable[[], None]:
        return self.graphs.runner(("embed", rows), lambda: self._embed(rows))

    def _layer_runner(self, rows: int, layer: int) -> Callable[[], None]:
        return self.graphs.runner(("layer", rows, layer), lambda: self._finish_layer(rows, layer))

    def _length_groups(self, rows: int) -> dict[int, list[int]]:
        groups: dict[int, list[int]] = defaultdict(list)
        for slot in range(rows):
            if self.occupant[slot]:
                groups[self.host_lengths[slot]].append(slot)
        return groups

    def _grouped_attention(self, layer: int, rows: int, groups: dict[int, list[int]]) -> None:
        """Rows of equal length attended together by whisper's own dense call (exact anywhere)."""
        device = self.model.device
        for length, slots in groups.items():
            index = torch.tensor(slots, device=device)
            query = self._heads(self.query.index_select(0, index))
            keys = self._heads(self.self_keys[layer].index_select(0, index)[:, :length])
            values = self._heads(self.self_values[layer].index_select(0, index)[:, :length])
            attended = dense_attention(query, keys, values).permute(0, 2, 1, 3).flatten(start_dim=2)
            self.attended.index_copy_(0, index, attended)

    # -- the model's arithmetic, as whisper does it ---------------------------------------------------

    def _heads(self, x: Tensor) -> Tensor:
        return split_heads(x, self.n_head)

    def _position(self, rows: int) -> Tensor:
        """Where each row's fed token sits."""
        return self.n_initial[:rows] + self.n_sampled[:rows] - 1

    def _embed(self, rows: int) -> None:
        decoder = self.model.decoder
        position = self._position(rows)
        x = decoder.token_embedding(self.next_token[:rows, None]) + decoder.positional_embedding[position][:, None]
        self.hidden[:rows] = x.to(self.dtype)
        self._project(0, rows, position)

    def _project(self, layer: int, rows: int, position: Tensor) -> None:
        attention = self.model.decoder.blocks[layer].attn
        x = self.model.decoder.blocks[layer].attn_ln(self.hidden[:rows])
        self.query[:rows] = attention.query(x)
        row = self.slot_index[:rows]
        self.self_keys[layer].index_put_((row, position), attention.key(x)[:, 0])
        self.self_values[layer].index_put_((row, position), attention.value(x)[:, 0])

    def _finish_layer(self, rows: int, layer: int) -> None:
        block = self.model.decoder.blocks[layer]
        x = self.hidden[:rows] + block.attn.out(self.attended[:rows])
        # the step's cross-attention reads every slot's cached keys and values: the kernel at bandwidth
        query = block.cross_attn.query(block.cross_attn_ln(x))
        x = x + block.cross_attn.out(self.cross.attend(layer, rows, query))
        x = x + block.mlp(block.mlp_ln(x))
        if layer + 1 < self.n_layers:
            self.hidden[:rows] = x
            self._project(layer + 1, rows, self._position(rows))
            return
        plan = self.plan
        logits = (self.model.decoder.ln(x) @ self.embedding_t).float()[:, -1]
        if self.suppress is not None:
            logits.index_fill_(1, self.suppress, NEG_INF)
        if plan.timestamps:
            self._timestamp_rules(logits, rows)
        chosen = logits.argmax(dim=-1)
        current = F.log_softmax(logits.float(), dim=-1).gather(1, chosen[:, None]).squeeze(1)
        done = self.done[:rows]
        advancing = ~done
        self.sum_logprobs[:rows] += current * advancing
        is_timestamp = chosen >= plan.timestamp_begin
        # rows that ended keep their state: only advancing rows take the new token
        self.penultimate_is_timestamp[:rows] = torch.where(
            advancing, self.last_is_timestamp[:rows], self.penultimate_is_timestamp[:rows]
        )
        new_last_timestamp = torch.where(is_timestamp, chosen, self.last_timestamp[:rows])
        self.last_timestamp[:rows] = torch.where(advancing, new_last_timestamp, self.last_timestamp[:rows])
        self.last_is_timestamp[:rows] = torch.where(advancing, is_timestamp, self.last_is_timestamp[:rows])
        n_sampled = self.n_sampled[:rows]
        written = torch.where(
            advancing, chosen, self.tokens[self.slot_index[:rows], n_sampled.clamp(max=self.n_ctx - 1)]
        )
        self.tokens.index_put_((self.slot_index[:rows], n_sampled.clamp(max=self.n_ctx - 1)), written)
        self.next_token[:rows] = torch.where(advancing, chosen, self.next_token[:rows])
        n_sampled += advancing
        self.lengths[:rows] = (self.n_initial[:rows] + n_sampled).to(torch.int32)
        self.done[:rows] = done | (chosen == plan.eot) | (n_sampled >= self.limit[:rows])

    def _timestamp_rules(self, logits: Tensor, rows: int) -> None:
        timestamp_rules(
            logits, self.plan, self.vocabulary, self.last_is_timestamp[:rows], self.penultimate_is_timestamp[:rows],
            self.last_timestamp[:rows],
        )  # fmt: skip
