"""Half-precision weights for GPU inference, cast once at load instead of on every layer call.

openai-whisper keeps weights in float32 and, with fp16 decoding, casts each Linear and Conv1d weight to
float16 inside every forward call: for the decoder that is every layer of every token step.
"""

from __future__ import annotations

import torch
from torch import nn
from whisper.model import Whisper


def cast_to_fp16(model: Whisper) -> Whisper:
    """Store Linear and Conv1d weights in float16, in place; results are bit-identical.

    whisper's layers cast with `weight.to(x.dtype)`, which is a no-op on a float16 weight, so the same
    float16 values reach the same kernels. LayerNorm stays float32 (whisper normalises in float32), and
    so does the token embedding, whose float32 rows whisper adds to float32 positions before casting.
    """
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv1d):
            module.to(torch.float16)
    return model
