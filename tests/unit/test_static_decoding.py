"""Static passes through the slot decoder (every window admitted at once), run eagerly on the CPU,
against whisper.decode on the same weights.

Greedy decoding is deterministic, so the slots must choose exactly whisper's tokens; on the GPU the
same code is replayed as CUDA graphs (scripts/bench_engine.py checks it there).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import whisper
from whisper.audio import N_SAMPLES
from whisper.decoding import ApplyTimestampRules, DecodingOptions

from app.worker import synthetic
from app.worker.decoding import memory, static
from app.worker.decoding.plan import greedy_plan
from app.worker.decoding.rules import timestamp_rules
from app.worker.decoding.static import SlotPass

TOKENS = 6


@pytest.fixture(scope="module")
def tiny() -> synthetic.SyntheticWhisper:
    return synthetic.build_model("tiny", "cpu", tokens_per_window=TOKENS)


@pytest.fixture(scope="module")
def features(tiny: synthetic.SyntheticWhisper) -> torch.Tensor:
    """Encoder output of three different windows (noise, a tone, near silence)."""
    rng = np.random.default_rng(0)
    time = np.arange(N_SAMPLES) / 16000
    audio = np.stack(
        [
            0.1 * rng.standard_normal(N_SAMPLES),
            0.2 * np.sin(2 * np.pi * 440 * time),
            1e-4 * rng.standard_normal(N_SAMPLES),
        ]
    )
    with torch.inference_mode():
        return tiny.encoder(whisper.log_mel_spectrogram(torch.from_numpy(audio.astype(np.float32))))


def assert_same_results(expected: list, got: list) -> None:
    assert len(expected) == len(got)
    for reference, result in zip(expected, got, strict=True):
        assert result.tokens == reference.tokens
        assert result.text == reference.text
        assert result.compression_ratio == reference.compression_ratio
        # a masked static cache and padded batches change float32 rounding, not the tokens
        assert result.avg_logprob == pytest.approx(reference.avg_logprob, rel=1e-4, abs=1e-6)
        assert result.no_speech_prob == pytest.approx(reference.no_speech_prob, rel=1e-4, abs=1e-12)


GREEDY_OPTIONS = {
    "synthetic": DecodingOptions(language="en", fp16=False, sample_len=TOKENS, suppress_tokens="-1,50257"),
    "prompt": DecodingOptions(language="de", task="translate", fp16=False, sample_len=TOKENS, prompt="a short prompt"),
    "no-timestamps": DecodingOptions(language="en", fp16=False, sample_len=TOKENS, without_timestamps=True),
}


@pytest.fixture(scope="module", params=GREEDY_OPTIONS, ids=str)
def greedy_case(request: pytest.FixtureRequest, tiny: synthetic.SyntheticWhisper, features: torch.Tensor) -> tuple:
    """(options, whisper.decode's results), decoded once for every capacity below."""
    options = GREEDY_OPTIONS[request.param]
    with torch.inference_mode():
        return options, whisper.decode(tiny, features, options)


@pytest.mark.parametrize("capacity", [2, 4], ids=["chunked", "padded"])
def test_greedy_tokens_match_whisper_decode(
    tiny: synthetic.SyntheticWhisper, features: torch.Tensor, greedy_case: tuple, capacity: int
) -> None:
    options, expected = greedy_case
    with torch.inference_mode():
        got = SlotPass(tiny, capacity=capacity)(features, options)
    assert_same_results(expected, got)


def test_decoding_stops_when_every_window_has_ended(features: torch.Tensor) -> None:
    model = synthetic.build_model("tiny", "cpu", tokens_per_window=TOKENS)
    eot = greedy_plan(model, DecodingOptions(language="en"))[0].eot
    with torch.no_grad():
        # the final LayerNorm's bias points at end-of-text: every window ends after its opening timestamp
        model.decoder.ln.bias.copy_(10 * model.decoder.token_embedding.weight[eot])
    options = DecodingOptions(language="en", fp16=False)
    with torch.inference_mode():
        expected = whisper.decode(model, features, options)
        got = SlotPass(model, capacity=4)(features, options)
    assert [len(r.tokens) for r in expected] == [1, 1, 1]
    assert_same_results(expected, got)


def test_sampling_is_left_to_whisper(tiny: synthetic.SyntheticWhisper, features: torch.Tensor) -> None:
    options = DecodingOptions(language="en", fp16=False, sample_len=TOKENS, temperature=0.6)
    assert greedy_plan(tiny, options) is None
    with torch.inference_mode():
        torch.manual_seed(0)
        expected = whisper.decode(tiny, features, options)
        torch.manual_seed(0)
        got = SlotPass(tiny, capacity=4)(features, options)
    assert [r.tokens for r in got] == [r.tokens for r in expected]


@pytest.mark.parametrize("length", [1, 2, 3, 8])
def test_timestamp_rules_match_whisper_for_any_history(tiny: synthetic.SyntheticWhisper, length: int) -> None:
    rows = 16
    plan, initial, tokenizer = greedy_plan(tiny, DecodingOptions(language="en", fp16=False))
    generator = torch.Generator().manual_seed(length)
    begin = tokenizer.timestamp_begin
    timestamps = torch.randint(begin, begin + 1501, (rows, length), generator=generator)
    text = torch.randint(0, tokenizer.eot, (rows, length), generator=generator)
    history = torch.where(torch.rand(rows, length, generator=generator) < 0.5, timestamps, text)
    # what the slots remember of each row: a missing penultimate token counts as a timestamp
    is_timestamp = history >= begin
    last_is_timestamp = is_timestamp[:, -1]
    penultimate_is_timestamp = is_timestamp[:, -2] if length > 1 else torch.ones(rows, dtype=torch.bool)
    last_timestamp = torch.tensor([([-1] + [int(t) for t in row if t >= begin])[-1] for row in history])
    logits = 3 * torch.randn(rows, tiny.dims.n_vocab, generator=generator)
    # shift the timestamps up or down per row, so both outcomes of the "prefer timestamps" rule occur
    logits[:, begin:] += 6 * torch.rand(rows, 1, generator=generator) - 3
    expected = logits.clone()
    tokens = torch.cat([torch.tensor(initial).expand(rows, -1), history], dim=1)
    ApplyTimestampRules(tokenizer, len(initial), plan.max_initial_timestamp_index).apply(expected, tokens)
    vocabulary = torch.arange(tiny.dims.n_vocab)
    timestamp_rules(logits, plan, vocabulary, last_is_timestamp, penultimate_is_timestamp, last_timestamp)
    assert torch.equal(logits, expected)


def test_windows_per_pass_are_capped_by_free_memory(
    tiny: synthetic.SyntheticWhisper, monkeypatch: pytest.MonkeyPatch
) -> None:
    per_window = memory.bytes_per_window(tiny)
    free = int((10.5 * per_window + memory.encoder_workspace(tiny)) / memory.MEMORY_FRACTION)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free, 2 * free))
    assert memory.windows_that_fit(tiny, 64) == 10
    assert memory.windows_that_fit(tiny, 4) == 4


def test_workers_sharing_a_gpu_each_size_to_their_share(
    tiny: synthetic.SyntheticWhisper, monkeypatch: pytest.MonkeyPatch
) -> None:
    per_window = memory.bytes_per_window(tiny)
    workspace = memory.encoder_workspace(tiny)
    # the card is all free when both workers start; each may plan for half of it
    total = int(2 * (20.5 * per_window + workspace) / memory.MEMORY_FRACTION)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (total, total))
    assert memory.windows_that_fit(tiny, 64, gpu_share=0.5) == 20
    assert memory.windows_that_fit(tiny, 64) > 40
    # a worker that starts later finds less free than its share, and takes only that
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (total // 4, total))
    assert memory.windows_that_fit(tiny, 64, gpu_share=0.5) < 20


def test_the_cpu_keeps_whisper_decode(tiny: synthetic.SyntheticWhisper) -> None:
    decoder = static.batch_decoder(tiny, 32)
    assert isinstance(decoder, static.WhisperDecoder)
    assert decoder.capacity == 32


def test_decoding_outside_inference_mode_keeps_no_autograd_history(
    tiny: synthetic.SyntheticWhisper, features: torch.Tensor
) -> None:
    """Start-up captures every bucket outside inference mode; the weights require grad, and outputs
    written into the static buffers would otherwise chain every step's activations (a GPU OOM)."""
    decoder = SlotPass(tiny, capacity=4)
    options = DecodingOptions(language="en", fp16=False, **synthetic.decoding_overrides(tiny))
    decoder(features.clone(), options)
    slots = decoder.slots
    for buffer in (slots.hidden, slots.self_keys, slots.cross.keys, slots.sum_logprobs):
        assert not buffer.requires_grad


def test_rows_end_at_their_own_limits(tiny: synthetic.SyntheticWhisper, features: torch.Tensor) -> None:
    """The synthetic model's realistic lengths: each row stops at its limit, the others run on."""
    options = GREEDY_OPTIONS["synthetic"]
    with torch.inference_mode():
        expected = whisper.decode(tiny, features, options)
        got = SlotPass(tiny, capacity=4)(features, options, limits=[2, TOKENS, 4])
    assert [len(result.tokens) for result in got] == [2, TOKENS, 4]
    assert [result.tokens for result in got] == [
        reference.tokens[: len(r.tokens)] for reference, r in zip(expected, got, strict=True)
    ]


def test_realistic_window_lengths() -> None:
    model = synthetic.build_model("tiny", "cpu", tokens_per_window=TOKENS)
    assert synthetic.window_tokens(model, 160000) is None
    model.tokens_per_second = 3.654
    assert [synthetic.window_tokens(model, seconds * 16000) for seconds in (0, 10, 30, 120)] == [1, 37, 110, 224]
    assert model.decoding_overrides()["sample_len"] == synthetic.MAX_TOKENS_PER_WINDOW
