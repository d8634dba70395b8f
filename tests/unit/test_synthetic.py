"""Synthetic models: spec handling, seeded weights, and exactly N decoded tokens per window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from whisper.audio import N_SAMPLES
from whisper.decoding import DecodingOptions

from app.config import ConfigurationError, load_settings
from app.worker import loading as models
from app.worker import synthetic
from app.worker.engine import Transcriber
from app.worker.loading import ModelLoadError, SpecKind

TOKENS = 6


@pytest.fixture(scope="module")
def tiny() -> synthetic.SyntheticWhisper:
    return synthetic.build_model("tiny", "cpu", tokens_per_window=TOKENS)


def test_specs_are_classified_without_loading() -> None:
    assert models.classify_spec("synthetic:medium") is SpecKind.SYNTHETIC
    with pytest.raises(ModelLoadError, match="unknown synthetic shape 'huge'"):
        models.classify_spec("synthetic:huge")


def test_load_model_builds_the_shape_with_the_configured_length(tmp_path: Path) -> None:
    model = models.load_model("synthetic:tiny", "cpu", tmp_path, synthetic_tokens=17)
    assert isinstance(model, synthetic.SyntheticWhisper)
    assert model.dims == synthetic.SHAPES["tiny"]
    assert synthetic.decoding_overrides(model)["sample_len"] == 17
    assert list(tmp_path.iterdir()) == []  # nothing downloaded or cached


def test_token_count_is_bounded_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WHISPER_SYNTHETIC_TOKENS", str(synthetic.MAX_TOKENS_PER_WINDOW + 1))
    with pytest.raises(ConfigurationError, match="WHISPER_SYNTHETIC_TOKENS"):
        load_settings()
    monkeypatch.setenv("WHISPER_SYNTHETIC_TOKENS", "17")
    assert load_settings().synthetic_tokens == 17


def test_large_v3_has_its_own_mels_and_vocabulary() -> None:
    dims = synthetic.SHAPES["large-v3"]
    assert (dims.n_mels, dims.n_vocab, dims.n_text_layer) == (128, 51866, 32)


def test_weights_are_seeded_and_leave_the_callers_random_stream_alone(tiny: synthetic.SyntheticWhisper) -> None:
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    again = synthetic.build_model("tiny", "cpu", tokens_per_window=TOKENS)
    assert torch.equal(torch.rand(3), expected)
    for (name, weight), (_, other) in zip(tiny.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(weight, other), name
    assert torch.isfinite(tiny.decoder.positional_embedding).all()


def test_real_models_get_no_overrides(tiny_en_model: torch.nn.Module) -> None:
    assert synthetic.decoding_overrides(tiny_en_model) == {}


def test_every_window_decodes_exactly_n_tokens_without_fallback(tiny: synthetic.SyntheticWhisper) -> None:
    rng = np.random.default_rng(0)
    engine = Transcriber(tiny, max_windows_per_pass=4, budget=synthetic.token_budget(tiny))
    waveforms = [(0.1 * rng.standard_normal(N_SAMPLES)).astype(np.float32), np.zeros(N_SAMPLES // 3, np.float32)]
    features = engine.encode(waveforms)
    options = DecodingOptions(language="en", fp16=False, **tiny.decoding_overrides())
    results = engine.decode_with_fallback(features, options)
    assert [len(r.tokens) for r in results] == [TOKENS, TOKENS]
    # the quality checks pass, so no window is decoded a second time at a higher temperature
    assert [r.temperature for r in results] == [0.0, 0.0]
