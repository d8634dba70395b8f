"""Greedy decoding of whole passes with a static KV cache, replayed as CUDA graphs.

whisper.decode launches every layer of every token step from Python (about 30 kernels a layer), grows
its KV cache by concatenation and applies the timestamp rules row by row with a host sync per row: at
the batch sizes a service sees, that loop is bound by the CPU, not by the GPU. Here a token step runs
as captured CUDA graphs, one per stretch between two self-attentions, with logit filters and greedy
choice on the device; only the self-attention itself is launched from Python, because its length
grows each step and whisper's exact kernel (no mask) must see exactly the keys written so far. The
tokens are therefore whisper's, bit for bit. whisper.decode still serves what this path does not
cover (sampling, beam search).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import torch
import torch.nn.functional as F
import whisper
from torch import Tensor
from whisper.decoding import DecodingOptions, DecodingResult
from whisper.model import MultiHeadAttention, ResidualAttentionBlock, Whisper
from whisper.utils import compression_ratio

from app.worker.decoding.attention import attend, cross_attention_and_mlp, split_heads
from app.worker.decoding.graphs import GraphCache, bucket
from app.worker.decoding.memory import windows_that_fit
from app.worker.decoding.plan import GreedyPlan, greedy_plan
from app.worker.decoding.rules import NEG_INF, first_token_rules, timestamp_rules

log = logging.getLogger(__name__)

# steps between two checks whether every row has ended (each check waits for the GPU)
FINISHED_CHECK_STEPS = 4


class BatchDecoder(Protocol):
    """Decodes encoder features of at most `capacity` windows per pass, like whisper.decode."""

    capacity: int

    def __call__(
        self, features: Tensor, options: DecodingOptions, limits: Sequence[int] | None = None
    ) -> list[DecodingResult]: ...

    def prepare(self, options: DecodingOptions) -> int:
        """Do the one-time work for `options` at every batch size now; returns how many graphs it made."""
        ...


class WhisperDecoder:
    """whisper.decode itself: the path on the CPU, and the reference the graphed path must match."""

    def __init__(self, model: Whisper, capacity: int) -> None:
        self.model = model
        self.capacity = capacity

    def __call__(
        self, features: Tensor, options: DecodingOptions, limits: Sequence[int] | None = None
    ) -> list[DecodingResult]:
        # per-window limits (the synthetic model's realistic lengths) are the graphed decoders' only
        return whisper.decode(self.model, features, options)

    def prepare(self, options: DecodingOptions) -> int:
        return 0


@dataclass(frozen=True)
class _PlanTensors:
    """A plan's device-side constants, kept alive because captured graphs read them in place."""

    initial: Tensor
    suppress: Tensor | None
    suppress_first: Tensor | None


class GraphedGreedyDecoder:
    """Greedy decoding of up to `capacity` windows per pass, token-for-token what whisper.decode gives.

    >>> decode = GraphedGreedyDecoder(model, capacity=128)
    >>> results = decode(features, DecodingOptions(language="en", fp16=True))
    """

    def __init__(self, model: Whisper, capacity: int, use_graphs: bool | None = None) -> None:
        self.model = model
        self.capacity = capacity
        self.use_graphs = model.device.type == "cuda" if use_graphs is None else use_graphs
        self.dtype = torch.float16 if model.device.type == "cuda" else torch.float32
        dims = model.dims
        self.n_head = dims.n_text_head

        def zeros(*shape: int, dtype: torch.dtype = self.dtype) -> Tensor:
            return torch.zeros(*shape, dtype=dtype, device=model.device)

        layers, width = dims.n_text_layer, dims.n_text_state
        self.features = zeros(capacity, dims.n_audio_ctx, dims.n_audio_state)
        self.cross_keys = zeros(layers, capacity, dims.n_audio_ctx, width)
        self.cross_values = zeros(layers, capacity, dims.n_audio_ctx, width)
        # token-major like whisper's own keys: torch picks an attention kernel by shape and strides,
        # and the identity with whisper.decode (scripts/bench_engine.py) is measured with this layout
        self.self_keys = zeros(layers, capacity, dims.n_text_ctx, width)
        self.self_values = zeros(layers, capacity, dims.n_text_ctx, width)
        # whisper casts the float32 embedding for the output projection at every step; cast it once
        self.embedding_t = model.decoder.token_embedding.weight.to(self.dtype).t()
        self.positions = torch.arange(dims.n_text_ctx, device=model.device)
        self.vocabulary = torch.arange(dims.n_vocab, device=model.device)
        # per-row decoding state, updated in place so that every replay sees the same memory
        self.next_token = zeros(capacity, dtype=torch.long)
        self.sum_logprobs = zeros(capacity, dtype=torch.float32)
        self.no_speech = zeros(capacity, dtype=torch.float32)
        self.tokens = zeros(capacity, dims.n_text_ctx, dtype=torch.long)
        self.last_is_timestamp = zeros(capacity, dtype=torch.bool)
        self.penultimate_is_timestamp = zeros(capacity, dtype=torch.bool)
        self.last_timestamp = zeros(capacity, dtype=torch.long)
        self.padding = zeros(capacity, dtype=torch.bool)
        # the most tokens each row may decode before it is ended
        self.limits = torch.full((capacity,), dims.n_text_ctx, dtype=torch.long, device=model.device)
        # a step's activations between its graphs: the residual stream, a query, attended values
        self.hidden = zeros(capacity, 1, width)
        self.query = zeros(capacity, 1, width)
        self.attended = zeros(capacity, 1, width)
        # the same memory seen per head, as whisper's qkv_attention views its query and output
        self.query_heads = self._heads(self.query)
        self.attended_heads = self._heads(self.attended)
        self.sampled = zeros(1, dtype=torch.long)
        self.finished = torch.zeros((), dtype=torch.bool, device=model.device)
        self.plan_tensors: dict[GreedyPlan, _PlanTensors] = {}
        state = [
            self.next_token, self.sum_logprobs, self.tokens, self.last_is_timestamp,
            self.penultimate_is_timestamp, self.last_timestamp, self.sampled, self.finished,
            self.hidden, self.query, self.attended,
        ]  # fmt: skip
        self.graphs = GraphCache(model.device, self.use_graphs, state)

    def __call__(
        self, features: Tensor, options: DecodingOptions, limits: Sequence[int] | None = None
    ) -> list[DecodingResult]:
        """`limits`: the most tokens each window may decode (it then ends), as the synthetic model's
        realistic lengths ask; None lets every window run to end-of-text or the plan's limit."""
        prepared = greedy_plan(self.model, options) if features.dtype == self.dtype else None
        if prepared is None:
            return whisper.decode(self.model, features, options)
        plan, initial_tokens, tokenizer = prepared
        results = []
        for first in range(0, len(features), self.capacity):
            chunk = features[first : first + self.capacity]
            chunk_limits = None if limits is None else limits[first : first + self.capacity]
            with self.on_device():
                tokens, sum_logprobs, no_speech = self._decode_chunk(chunk, plan, initial_tokens, limits=chunk_limits)
            rows = zip(tokens, sum_logprobs, no_speech, strict=True)
            for row, (sequence, logprob, no_speech_prob) in enumerate(rows):
                if plan.eot in sequence:
                    sequence = sequence[: sequence.index(plan.eot)]
                text = tokenizer.decode(sequence).strip()
                results.append(
                    DecodingResult(
                        audio_features=chunk[row],
                        language=options.language,
                        tokens=sequence,
                        text=text,
                        avg_logprob=logprob / (len(sequence) + 1),
                        no_speech_prob=no_speech_prob if plan.no_speech is not None else math.nan,
                        temperature=options.temperature,
                        compression_ratio=compression_ratio(text),
                    )
                )
        return results

    def prepare(self, options: DecodingOptions) -> int:
        """Capture the graphs of `options`' plan for every batch size bucket, before any request waits.

        Captured lazily, the first pass at each new bucket paid for 26 captures (medium): seconds
        that a loaded service met at every batch size it had not seen yet. Decoding two tokens of
        zero features at each bucket runs every graph of that bucket once.
        """
        prepared = greedy_plan(self.model, options) if self.use_graphs else None
        if prepared is None:
            return 0
        plan, initial_tokens, _ = prepared
        before = len(self.graphs)
        dims = self.model.dims
        with self.on_device():
            for rows in self.buckets():
                shape = (rows, dims.n_audio_ctx, dims.n_audio_state)
                silence = torch.zeros(shape, dtype=self.dtype, device=self.model.device)
                self._decode_chunk(silence, plan, initial_tokens, max_tokens=2)
            torch.cuda.synchronize()
        return len(self.graphs) - before

    def on_device(self) -> contextlib.AbstractContextManager[object]:
        """The model's GPU as the current one: captures and replays use the current device's streams,
        and a worker on cuda:1 would otherwise capture on cuda:0's stream while its kernels run on 1."""
        return torch.cuda.device(self.model.device) if self.use_graphs else contextlib.nullcontext()

    def buckets(self) -> list[int]:
        """Every batch size a pass of 1 to `capacity` windows runs with."""
        return sorted({self.bucket(n) for n in range(1, self.capacity + 1)})

    def bucket(self, n_windows: int) -> int:
        """Rows a pass of `n_windows` runs with: the batch size of a graph, at most `capacity`."""
        return bucket(n_windows, self.capacity)

    # without it, a caller outside inference mode (start-up) would record every step for autograd:
    # the weights require grad, and their outputs written into the buffers would keep all activations
    @torch.inference_mode()
    def _decode_chunk(
        self,
        features: Tensor,
        plan: GreedyPlan,
        initial_tokens: tuple[int, ...],
        max_tokens: int | None = None,
        limits: Sequence[int] | None = None,
    ) -> tuple[list[list[int]], list[float], list[float]]:
        n_windows = len(features)
        rows = self.bucket(n_windows)
        constants = self._constants(plan)
        self.features[:n_windows].copy_(features)
        self.limits.fill_(self.model.dims.n_text_ctx)
        if limits is not None:
            self.limits[:n_windows].copy_(torch.tensor(list(limits), dtype=torch.long))
        constants.initial[:rows].copy_(torch.tensor(initial_tokens, device=features.device).expand(rows, -1))
        self.padding[:rows].copy_(torch.arange(rows, device=features.device) >= n_windows)
        self.graphs.runner(("prefill", plan, rows), lambda: self._prefill(plan, constants, rows))()
        # a step costs the CPU one eager attention and one replay per layer: everything else is
        # resolved here, once a chunk (hashing the plan alone took microseconds a call)
        embed = self.graphs.runner(("embed", plan, rows), lambda: self._embed(plan, rows))
        layers = [
            (
                self._heads(self.self_keys[layer, :rows]),
                self._heads(self.self_values[layer, :rows]),
                self.graphs.runner(
                    ("layer", plan, rows, layer), partial(self._finish_layer, plan, constants, rows, layer)
                ),
            )
            for layer in range(len(self.model.decoder.blocks))
        ]
        query, attended = self.query_heads[:rows], self.attended_heads[:rows]
        n_tokens = 1
        max_tokens = plan.max_tokens if max_tokens is None else min(max_tokens, plan.max_tokens)
        while n_tokens < max_tokens:
            # the host waits for the GPU only every few steps, so it can queue the next steps while
            # the GPU runs; steps after every row ended only append end-of-text, which is cut off
            if (n_tokens - 1) % FINISHED_CHECK_STEPS == 0 and self.finished.item():
                break
            n_keys = plan.n_initial + n_tokens
            embed()
            for keys, values, finish_layer in layers:
                # eager, between graphs: attention over exactly the cached positions, as whisper does
                attended.copy_(F.scaled_dot_product_attention(query, keys[:, :, :n_keys], values[:, :, :n_keys]))
                finish_layer()
            n_tokens += 1
        return (
            self.tokens[:n_windows, :n_tokens].tolist(),
            self.sum_logprobs[:n_windows].tolist(),
            self.no_speech[:n_windows].tolist(),
        )

    def _constants(self, plan: GreedyPlan) -> _PlanTensors:
        if plan not in self.plan_tensors:
            device = self.model.device

            def index(tokens: tuple[int, ...]) -> Tensor | None:
                return torch.tensor(tokens, dtype=torch.long, device=device) if tokens else None

            self.plan_tensors[plan] = _PlanTensors(
                initial=torch.zeros(self.capacity, plan.n_initial, dtype=torch.long, device=device),
                suppress=index(plan.suppress),
                suppress_first=index(plan.suppress_first),
            )
        return self.plan_tensors[plan]

    def _prefill(self, plan: GreedyPlan, constants: _PlanTensors, rows: int) -> None:
        """The first call of whisper's loop: cross-attention keys, the initial tokens, the first choice."""
        decoder = self.model.decoder
        features = self.features[:rows]
        for layer, block in enumerate(decoder.blocks):
            self.cross_keys[layer, :rows] = block.cross_attn.key(features)
            self.cross_values[layer, :rows] = block.cross_attn.value(features)
        n_initial = plan.n_initial

        def self_attention(layer: int, attention: MultiHeadAttention, x: Tensor) -> Tensor:
            keys, values = attention.key(x), attention.value(x)
            self.self_keys[layer, :rows, :n_initial] = keys
            self.self_values[layer, :rows, :n_initial] = values
            return attend(attention.query(x), keys, values, self.n_head, causal=n_initial > 1)

        x = (decoder.token_embedding(constants.initial[:rows]) + decoder.positional_embedding[:n_initial]).to(
            self.dtype
        )
        for layer, block in enumerate(decoder.blocks):
            x = x + block.attn.out(self_attention(layer, block.attn, block.attn_ln(x)))
            x = self._cross_attention_and_mlp(block, layer, rows, x)
        logits = (decoder.ln(x) @ self.embedding_t).float()
        if plan.no_speech is not None:
            self.no_speech[:rows] = logits[:, plan.sot_index].float().softmax(dim=-1)[:, plan.no_speech]
        logits = logits[:, -1]
        for suppressed in (constants.suppress_first, constants.suppress):
            if suppressed is not None:
                logits.index_fill_(1, suppressed, NEG_INF)
        first_token_rules(logits, plan, self.vocabulary)
        chosen = logits.argmax(dim=-1)
        self.sum_logprobs[:rows] = F.log_softmax(logits.float(), dim=-1).gather(1, chosen[:, None]).squeeze(1)
        # padding rows start finished, so they never hold the batch open
        chosen = torch.where(self.padding[:rows], plan.eot, chosen)
        self._record(plan, rows, chosen, first=True)

    def _cross_attention_and_mlp(self, block: ResidualAttentionBlock, layer: int, rows: int, x: Tensor) -> Tensor:
        return cross_attention_and_mlp(block, x, self.cross_keys[layer, :rows], self.cross_values[layer, :rows])

    def _position(self, plan: GreedyPlan) -> Tensor:
        """Where the fed token sits, as a device tensor that captured graphs read at replay."""
        return self.sampled + (plan.n_initial - 1)

    def _embed(self, plan: GreedyPlan, rows: int) -> None:
        """Graph: the last chosen token and its position into the residual stream, then layer 0's q, k, v."""
        decoder = self.model.decoder
        position = self._position(plan)
        x = decoder.token_embedding(self.next_token[:rows, None]) + decoder.positional_embedding.index_select(
            0, position
        )
        self.hidden[:rows] = x.to(self.dtype)
        self._project(0, rows, position)

    def _project(self, layer: int, rows: int, position: Tensor) -> None:
        """Self-attention inputs of `layer`: its query, and the fed token's key and value into the cache."""
        attention = self.model.decoder.blocks[layer].attn
        x = self.model.decoder.blocks[layer].attn_ln(self.hidden[:rows])
        self.query[:rows] = attention.query(x)
        self.self_keys[layer, :rows].index_copy_(1, position, attention.key(x))
        self.self_values[layer, :rows].index_copy_(1, position, attention.value(x))

    def _heads(self, x: Tensor) -> Tensor:
        return split_heads(x, self.n_head)

    def _finish_layer(self, plan: GreedyPlan, constants: _PlanTensors, rows: int, layer: int) -> None:
        """Graph: the rest of `layer`, then the next layer's q, k, v, or after the last the token choice."""
        block = self.model.decoder.blocks[layer]
        x = self.hidden[:rows] + block.attn.out(self.attended[:rows])
        x = self._cross_attention_and_mlp(block, layer, rows, x)
        if layer + 1 < len(self.model.decoder.blocks):
            self.hidden[:rows] = x
            self._project(layer + 1, rows, self._position(plan))
            return
        logits = (self.model.decoder.ln(x) @ self.embedding_t).float()[:, -1]
        if constants.suppress is not None:
            logits.index_fill_(1, constants.suppress, NEG_INF)
        if plan.timestamps:
            self._timestamp_rules(logits, plan, rows)
        chosen = logits.argmax(dim=-1)
        current = F.log_softmax(logits.float(), dim=-1).gather(1, chosen[:, None]).squeeze(1)
        previous = self.next_token[:rows]
        self.sum_logprobs[:rows] += current * (previous != plan.eot)
        chosen = torch.where(previous == plan.eot, plan.eot, chosen)
        self._record(plan, rows, chosen, first=False)

    def _timestamp_rules(self, logits: Tensor, plan: GreedyPlan, rows: int) -> None:
        timestamp_rules(
            logits, plan, self.vocabulary, self.last_is_timestamp[:rows], self.penultimate_is_timestamp[:rows],
            self.last_timestamp[:rows],
        )  # fmt: skip

    def _record(self, plan: GreedyPlan, rows: int, chosen: Tensor, first: bool) -> None:
        """Append the chosen tokens and update what the timestamp rules remember of each row."""
        if not first:
            # a row that reached its limit ends here, as if the model had chosen end-of-text
            chosen = torch.where(self.sampled >= self.limits[:rows], plan.eot, chosen)
        is_timestamp = chosen >= plan.timestamp_begin
        if first:
            # whisper treats a missing penultimate token as a timestamp
            self.penultimate_is_timestamp[:rows] = True
            self.last_timestamp[:rows] = torch.where(is_timestamp, chosen, -1)
            self.sampled.zero_()
        else:
            self.penultimate_is_timestamp[:rows] = self.last_is_timestamp[:rows]
            self.last_timestamp[:rows] = torch.where(is_timestamp, chosen, self.last_timestamp[:rows])
        self.last_is_timestamp[:rows] = is_timestamp
        self.tokens[:rows].index_copy_(1, self.sampled, chosen[:, None])
        self.next_token[:rows] = chosen
        self.sampled += 1
        self.finished.copy_((chosen == plan.eot).all())


def batch_decoder(model: Whisper, max_windows_per_pass: int, gpu_share: float = 1.0) -> BatchDecoder:
    """The graphed decoder on the GPU, sized to free memory; whisper.decode on the CPU."""
    if model.device.type != "cuda":
        return WhisperDecoder(model, max_windows_per_pass)
    decoder = GraphedGreedyDecoder(model, windows_that_fit(model, max_windows_per_pass, gpu_share))
    log.info("graphed greedy decoding of up to %d windows per pass", decoder.capacity)
    return decoder
