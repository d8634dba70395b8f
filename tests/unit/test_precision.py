"""Casting weights to float16 once: which tensors change dtype, and that layer outputs do not."""

from __future__ import annotations

import torch

from app.worker import precision, synthetic


def test_cast_once_keeps_float32_where_whisper_computes_in_float32() -> None:
    model = synthetic.build_model("tiny", "cpu", tokens_per_window=4)
    block = model.decoder.blocks[0]
    torch.manual_seed(0)
    x = torch.randn(2, 3, model.dims.n_text_state).half()
    conv_input = torch.randn(1, 80, 8).half()
    with torch.inference_mode():
        before = (block.mlp(x), model.encoder.conv1(conv_input))
        precision.cast_to_fp16(model)
        after = (block.mlp(x), model.encoder.conv1(conv_input))
    assert block.mlp[0].weight.dtype == model.encoder.conv1.weight.dtype == torch.float16
    assert block.mlp_ln.weight.dtype == torch.float32
    assert model.decoder.token_embedding.weight.dtype == torch.float32
    # whisper casts each weight to the input's dtype per call: the same float16 values either way
    assert all(torch.equal(b, a) for b, a in zip(before, after, strict=True))
