"""Tests for app.worker.ctranslate2_import and scripts/import_model.py.

The reference for "correct" is CTranslate2 itself running the same folder.
"""

from __future__ import annotations

import base64
import gzip
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import ctranslate2
import numpy as np
import pytest
import torch
import whisper
from whisper.model import Whisper

from app.worker import ctranslate2_import
from app.worker.ctranslate2_import import CTranslate2ImportError

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_EN_DIMS = {
    "n_mels": 80,
    "n_audio_ctx": 1500,
    "n_audio_state": 384,
    "n_audio_head": 6,
    "n_audio_layer": 4,
    "n_vocab": 51864,
    "n_text_ctx": 448,
    "n_text_state": 384,
    "n_text_head": 6,
    "n_text_layer": 4,
}
# Encoder outputs reach ~13 in magnitude; fp32 CTranslate2 vs torch differ by ~2e-5.
ENCODER_ATOL = 1e-3
LOGITS_ATOL = 1e-3
# CTranslate2 reports suppressed tokens with the lowest float32 instead of -inf.
SUPPRESSED_BELOW = -1e30


def _write_model_bin(
    path: Path,
    variables: dict[str, torch.Tensor],
    aliases: dict[str, str] | None = None,
    spec_name: str = ctranslate2_import.WHISPER_SPEC_NAME,
) -> None:
    """Minimal writer mirroring ctranslate2's ModelSpec._serialize, for hand-made files."""

    def string(value: str) -> bytes:
        return struct.pack("<H", len(value) + 1) + value.encode() + b"\0"

    out = struct.pack("<I", ctranslate2_import.SUPPORTED_BINARY_VERSION) + string(spec_name)
    out += struct.pack("<II", 1, len(variables))
    for name, tensor in variables.items():
        data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        out += string(name) + struct.pack("<B", tensor.dim())
        out += b"".join(struct.pack("<I", dim) for dim in tensor.shape)
        out += struct.pack("<BI", ctranslate2_import.DTYPE_BY_ID.index(tensor.dtype), len(data)) + data
    out += struct.pack("<I", len(aliases or {}))
    for alias, target in (aliases or {}).items():
        out += string(alias) + string(target)
    path.write_bytes(out)


def test_tiny_en_converts_with_tiny_en_dims_and_loads_strictly(tiny_en_checkpoint: dict[str, Any]) -> None:
    assert tiny_en_checkpoint["dims"] == TINY_EN_DIMS
    model = Whisper(whisper.model.ModelDimensions(**tiny_en_checkpoint["dims"]))
    model.load_state_dict(tiny_en_checkpoint["model_state_dict"], strict=True)


def test_alignment_heads_match_openai_tiny_en(tiny_en_checkpoint: dict[str, Any]) -> None:
    # openai-whisper ships the tiny.en heads as gzip+base85; the folder's config.json must agree.
    dump = whisper._ALIGNMENT_HEADS["tiny.en"]
    expected = np.frombuffer(gzip.decompress(base64.b85decode(dump)), dtype=bool).reshape(4, 6)
    assert np.array_equal(tiny_en_checkpoint["alignment_heads"].numpy(), expected)


def test_encoder_output_matches_ctranslate2(
    tiny_en_ct2_folder: Path, tiny_en_model: Whisper, speech_mel: torch.Tensor
) -> None:
    reference = ctranslate2.models.Whisper(str(tiny_en_ct2_folder), device="cpu", compute_type="float32")
    features = ctranslate2.StorageView.from_array(speech_mel.numpy()[None])
    expected = np.array(reference.encode(features, to_cpu=True))
    with torch.no_grad():
        actual = tiny_en_model.encoder(speech_mel[None]).numpy()
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=0, atol=ENCODER_ATOL)


def test_greedy_decode_and_logits_match_ctranslate2(
    tiny_en_ct2_folder: Path, tiny_en_model: Whisper, speech_mel: torch.Tensor
) -> None:
    reference = ctranslate2.models.Whisper(str(tiny_en_ct2_folder), device="cpu", compute_type="float32")
    tokenizer = whisper.tokenizer.get_tokenizer(multilingual=False)
    prompt = list(tokenizer.sot_sequence_including_notimestamps)
    features = ctranslate2.StorageView.from_array(speech_mel.numpy()[None])
    expected = reference.generate(features, [prompt], beam_size=1, return_logits_vocab=True)[0]

    options = whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False)
    result = whisper.decode(tiny_en_model, speech_mel, options)
    assert result.tokens == expected.sequences_ids[0]
    assert result.text == tokenizer.decode(expected.sequences_ids[0]).strip()
    assert "hello" in result.text.lower()

    # Teacher-forced logits for every generated step (and the final end-of-text step).
    tokens = torch.tensor([prompt + expected.sequences_ids[0]])
    with torch.no_grad():
        logits = tiny_en_model.decoder(tokens, tiny_en_model.encoder(speech_mel[None]))[0, len(prompt) - 1 :]
    reference_logits = np.stack([np.array(step) for step in expected.logits[0]])
    kept = reference_logits > SUPPRESSED_BELOW
    assert reference_logits.shape == logits.shape
    np.testing.assert_allclose(logits.numpy()[kept], reference_logits[kept], rtol=0, atol=LOGITS_ATOL)


def test_reader_handles_float32_bfloat16_and_aliases(tmp_path: Path) -> None:
    variables = {
        "a/weight": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "b/weight": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
        "c/num_heads": torch.tensor(6, dtype=torch.int16),
    }
    _write_model_bin(tmp_path / "model.bin", variables, aliases={"d/weight": "a/weight"})
    read = ctranslate2_import.read_model_bin(tmp_path / "model.bin")
    for name, tensor in variables.items():
        assert read[name].dtype == tensor.dtype
        assert torch.equal(read[name], tensor)
    assert torch.equal(read["d/weight"], variables["a/weight"])


def test_quantized_variable_is_rejected_by_name(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    weight = torch.zeros(384, 80, 3, dtype=torch.int8)
    _write_model_bin(tmp_path / "model.bin", {"encoder/conv1/weight": weight})
    with pytest.raises(CTranslate2ImportError, match=r"'encoder/conv1/weight' has dtype torch\.int8"):
        ctranslate2_import.convert_folder(tmp_path)


def test_non_whisper_model_bin_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    _write_model_bin(tmp_path / "model.bin", {}, spec_name="TransformerSpec")
    with pytest.raises(CTranslate2ImportError, match="model spec is 'TransformerSpec'"):
        ctranslate2_import.convert_folder(tmp_path)


def test_truncated_model_bin_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.bin").write_bytes(struct.pack("<I", ctranslate2_import.SUPPORTED_BINARY_VERSION))
    with pytest.raises(CTranslate2ImportError, match="truncated or corrupt"):
        ctranslate2_import.convert_folder(tmp_path)


def test_alignment_heads_default_and_range_check() -> None:
    default = ctranslate2_import.alignment_heads_mask({}, n_text_layer=4, n_text_head=2)
    assert default.tolist() == [[False, False], [False, False], [True, True], [True, True]]
    with pytest.raises(CTranslate2ImportError, match=r"\(4, 0\) is outside"):
        ctranslate2_import.alignment_heads_mask({"alignment_heads": [[4, 0]]}, 4, 2)


def test_import_script_writes_a_loadable_checkpoint(tiny_en_ct2_folder: Path, tmp_path: Path) -> None:
    output = tmp_path / "tiny.en.pt"
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "import_model.py"), str(tiny_en_ct2_folder), str(output)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "n_vocab = 51864" in done.stdout
    model = whisper.load_model(str(output), device="cpu")
    assert model.dims == whisper.model.ModelDimensions(**TINY_EN_DIMS)


def test_import_script_fails_cleanly_on_a_non_model_folder(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "import_model.py"), str(tmp_path), str(tmp_path / "x.pt")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert "expected model.bin and config.json" in done.stderr
