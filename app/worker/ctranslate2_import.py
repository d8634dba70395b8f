"""Offline import of CTranslate2 (faster-whisper format) Whisper folders.

Owns parsing model.bin and mapping its variables onto an openai-whisper checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import struct
import uuid
from pathlib import Path
from typing import Any, BinaryIO

import torch

MODEL_FILE = "model.bin"
CONFIG_FILE = "config.json"
WHISPER_SPEC_NAME = "WhisperSpec"
# Layout written by ctranslate2/specs/model_spec.py (`ModelSpec._serialize`).
SUPPORTED_BINARY_VERSION = 6
# Index is the on-disk type id (ctranslate2 `_dtype_to_type_id`).
DTYPE_BY_ID: tuple[torch.dtype, ...] = (
    torch.float32,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.float16,
    torch.bfloat16,
)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Every released Whisper size uses 64-dim attention heads.
WHISPER_HEAD_DIM = 64
# Hugging Face config keys, present when a folder also ships the original HF config.
CONFIG_HEAD_KEYS = {
    "encoder": "encoder_attention_heads",
    "decoder": "decoder_attention_heads",
}

StateDict = dict[str, torch.Tensor]


class CTranslate2ImportError(ValueError):
    """Not a float CTranslate2 Whisper model that maps onto openai-whisper."""


def is_ctranslate2_folder(path: Path) -> bool:
    """True when `path` looks like a CTranslate2 model (model.bin + config.json)."""
    return (path / MODEL_FILE).is_file() and (path / CONFIG_FILE).is_file()


def _read(fp: BinaryIO, fmt: str) -> Any:
    # CTranslate2 writes native byte order: little-endian wherever it ships.
    size = struct.calcsize("<" + fmt)
    return struct.unpack("<" + fmt, fp.read(size))[0]


def _read_string(fp: BinaryIO) -> str:
    length = _read(fp, "H")  # counts the trailing NUL
    return fp.read(length)[:-1].decode("utf-8")


def _read_variables(fp: BinaryIO, path: Path) -> StateDict:
    version = _read(fp, "I")
    if version != SUPPORTED_BINARY_VERSION:
        raise CTranslate2ImportError(
            f"{path}: binary version {version} is not supported "
            f"(this importer reads version {SUPPORTED_BINARY_VERSION})"
        )
    spec_name = _read_string(fp)
    if spec_name != WHISPER_SPEC_NAME:
        raise CTranslate2ImportError(f"{path}: model spec is {spec_name!r}, expected {WHISPER_SPEC_NAME!r}")
    _read(fp, "I")  # spec revision: the names used below are stable across revisions
    variables: StateDict = {}
    for _ in range(_read(fp, "I")):
        name = _read_string(fp)
        shape = [_read(fp, "I") for _ in range(_read(fp, "B"))]
        dtype_id = _read(fp, "B")
        data = bytearray(fp.read(_read(fp, "I")))  # writable copy for torch.frombuffer
        if dtype_id >= len(DTYPE_BY_ID):
            raise CTranslate2ImportError(f"{path}: {name} has unknown dtype id {dtype_id}")
        dtype = DTYPE_BY_ID[dtype_id]
        variables[name] = torch.frombuffer(data, dtype=dtype).reshape(shape)
    for _ in range(_read(fp, "I")):
        alias, target = _read_string(fp), _read_string(fp)
        variables[alias] = variables[target]
    return variables


def read_model_bin(path: Path) -> StateDict:
    """Read every variable of a CTranslate2 model.bin; aliases map to their targets."""
    with path.open("rb") as fp:
        try:
            return _read_variables(fp, path)
        except CTranslate2ImportError:
            raise
        except (struct.error, KeyError, RuntimeError, ValueError) as exc:
            raise CTranslate2ImportError(f"{path} is truncated or corrupt: {exc}") from exc


class _Mapper:
    """Builds openai-whisper state-dict entries from CTranslate2 variable scopes."""

    def __init__(self, variables: StateDict) -> None:
        self.variables = variables

    def tensor(self, name: str) -> torch.Tensor:
        if name not in self.variables:
            raise CTranslate2ImportError(f"model.bin has no {name!r}; not a Whisper model?")
        tensor = self.variables[name]
        if tensor.dtype not in FLOAT_DTYPES:
            raise CTranslate2ImportError(
                f"variable {name!r} has dtype {tensor.dtype} (quantized model); "
                "re-convert it with ct2-transformers-converter --quantization float16"
            )
        return tensor

    def linear(self, src: str, dst: str) -> StateDict:
        return {
            f"{dst}.weight": self.tensor(f"{src}/weight"),
            f"{dst}.bias": self.tensor(f"{src}/bias"),
        }

    def layer_norm(self, src: str, dst: str) -> StateDict:
        return {
            f"{dst}.weight": self.tensor(f"{src}/gamma"),
            f"{dst}.bias": self.tensor(f"{src}/beta"),
        }

    def fused(self, src: str, dst: str, parts: tuple[str, ...]) -> StateDict:
        """Split a fused projection into openai-whisper's query/key/value Linears.

        openai-whisper's key has no bias (CTranslate2 stores zeros); a non-zero one
        would only shift all scores of a query equally, which softmax ignores.
        """
        weights = self.tensor(f"{src}/weight").chunk(len(parts))
        biases = self.tensor(f"{src}/bias").chunk(len(parts))
        out: StateDict = {}
        for part, weight, bias in zip(parts, weights, biases, strict=True):
            out[f"{dst}.{part}.weight"] = weight
            if part != "key":
                out[f"{dst}.{part}.bias"] = bias
        return out

    def block(self, src: str, dst: str, cross: bool) -> StateDict:
        self_attn = f"{src}/self_attention"
        sd = self.fused(f"{self_attn}/linear_0", f"{dst}.attn", ("query", "key", "value"))
        sd |= self.linear(f"{self_attn}/linear_1", f"{dst}.attn.out")
        sd |= self.layer_norm(f"{self_attn}/layer_norm", f"{dst}.attn_ln")
        if cross:
            sd |= self.linear(f"{src}/attention/linear_0", f"{dst}.cross_attn.query")
            sd |= self.fused(f"{src}/attention/linear_1", f"{dst}.cross_attn", ("key", "value"))
            sd |= self.linear(f"{src}/attention/linear_2", f"{dst}.cross_attn.out")
            sd |= self.layer_norm(f"{src}/attention/layer_norm", f"{dst}.cross_attn_ln")
        sd |= self.linear(f"{src}/ffn/linear_0", f"{dst}.mlp.0")
        sd |= self.linear(f"{src}/ffn/linear_1", f"{dst}.mlp.2")
        sd |= self.layer_norm(f"{src}/ffn/layer_norm", f"{dst}.mlp_ln")
        return sd

    def num_layers(self, stack: str) -> int:
        pattern = re.compile(rf"^{stack}/layer_(\d+)/")
        found = {int(m.group(1)) for name in self.variables if (m := pattern.match(name))}
        return max(found) + 1 if found else 0

    def num_heads(self, config: dict[str, Any], stack: str, d_model: int) -> int:
        if CONFIG_HEAD_KEYS[stack] in config:
            return int(config[CONFIG_HEAD_KEYS[stack]])
        if f"{stack}/num_heads" in self.variables:
            return int(self.variables[f"{stack}/num_heads"].item())
        return d_model // WHISPER_HEAD_DIM

    def dims(self, config: dict[str, Any]) -> dict[str, int]:
        audio_state, n_mels, _kernel = self.tensor("encoder/conv1/weight").shape
        n_vocab, text_state = self.tensor("decoder/embeddings/weight").shape
        return {
            "n_mels": n_mels,
            "n_audio_ctx": self.tensor("encoder/position_encodings/encodings").shape[0],
            "n_audio_state": audio_state,
            "n_audio_head": self.num_heads(config, "encoder", audio_state),
            "n_audio_layer": self.num_layers("encoder"),
            "n_vocab": n_vocab,
            "n_text_ctx": self.tensor("decoder/position_encodings/encodings").shape[0],
            "n_text_state": text_state,
            "n_text_head": self.num_heads(config, "decoder", text_state),
            "n_text_layer": self.num_layers("decoder"),
        }

    def check_tied_projection(self) -> None:
        """openai-whisper reuses the token embedding as output layer, without a bias."""
        embeddings = self.tensor("decoder/embeddings/weight")
        projection = self.variables.get("decoder/projection/weight", embeddings)
        bias = self.variables.get("decoder/projection/bias")
        if projection is not embeddings and not torch.equal(projection, embeddings):
            raise CTranslate2ImportError("decoder/projection/weight is not the embedding")
        if bias is not None and bool(bias.any()):
            raise CTranslate2ImportError("decoder/projection/bias is non-zero")

    def state_dict(self, dims: dict[str, int]) -> StateDict:
        sd = self.linear("encoder/conv1", "encoder.conv1")
        sd |= self.linear("encoder/conv2", "encoder.conv2")
        sd["encoder.positional_embedding"] = self.tensor("encoder/position_encodings/encodings")
        for i in range(dims["n_audio_layer"]):
            sd |= self.block(f"encoder/layer_{i}", f"encoder.blocks.{i}", cross=False)
        sd |= self.layer_norm("encoder/layer_norm", "encoder.ln_post")
        sd["decoder.token_embedding.weight"] = self.tensor("decoder/embeddings/weight")
        sd["decoder.positional_embedding"] = self.tensor("decoder/position_encodings/encodings")
        for i in range(dims["n_text_layer"]):
            sd |= self.block(f"decoder/layer_{i}", f"decoder.blocks.{i}", cross=True)
        sd |= self.layer_norm("decoder/layer_norm", "decoder.ln")
        # Chunks are views of the fused tensors; saving a view saves its whole base.
        return {name: tensor.contiguous() for name, tensor in sd.items()}


def _read_config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))


def alignment_heads_mask(config: dict[str, Any], n_text_layer: int, n_text_head: int) -> torch.Tensor:
    """Bool (layer, head) mask of the cross-attention heads used for word timestamps.

    Without `alignment_heads` in the config it is the last half of the layers, the
    default of both openai-whisper and the CTranslate2 converter.
    """
    mask = torch.zeros(n_text_layer, n_text_head, dtype=torch.bool)
    pairs = config.get("alignment_heads")
    if pairs is None:
        mask[n_text_layer // 2 :] = True
        return mask
    for layer, head in pairs:
        if not (0 <= layer < n_text_layer and 0 <= head < n_text_head):
            raise CTranslate2ImportError(
                f"alignment head ({layer}, {head}) is outside the {n_text_layer} x {n_text_head} decoder heads"
            )
        mask[layer, head] = True
    return mask


def read_alignment_heads(folder: Path, n_text_layer: int, n_text_head: int) -> torch.Tensor:
    """Alignment-head mask from the folder's config.json (model.bin is not read)."""
    return alignment_heads_mask(_read_config(folder), n_text_layer, n_text_head)


def convert_folder(folder: Path) -> dict[str, Any]:
    """Convert a CTranslate2 Whisper folder to an openai-whisper checkpoint dict."""
    if not is_ctranslate2_folder(folder):
        raise CTranslate2ImportError(f"{folder}: expected {MODEL_FILE} and {CONFIG_FILE}")
    config = _read_config(folder)
    mapper = _Mapper(read_model_bin(folder / MODEL_FILE))
    dims = mapper.dims(config)
    mapper.check_tied_projection()
    return {
        "dims": dims,
        "model_state_dict": mapper.state_dict(dims),
        "alignment_heads": alignment_heads_mask(config, dims["n_text_layer"], dims["n_text_head"]),
    }


def convert_to_file(folder: Path, output: Path) -> dict[str, int]:
    """Convert `folder`, write the checkpoint to `output` and return its dims.

    Writes a temporary file and renames it so that a concurrent reader (another worker
    starting up) never sees a half-written checkpoint.
    """
    checkpoint = convert_folder(folder)
    output.parent.mkdir(parents=True, exist_ok=True)
    # Unlike mkstemp's 0600 files, open() honours the umask: the cache may be shared.
    tmp = output.with_name(f".{output.name}.{uuid.uuid4().hex}.tmp")
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return checkpoint["dims"]
