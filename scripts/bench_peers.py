"""Our engine beside the libraries anyone would reach for, on one GPU, in one run, on the same windows.

Usage: python -m scripts.bench_peers --clips DIR --output peers.json [--batch 256] [--engine auto,sdpa,...]
The benchmark clips (scripts/bench_clips.py's clips.json: lengths and the speech rate) sent --repeat
times in bench_continuous's order, each cut into windows of at most 30 s (the last one of a clip
shorter); every window decodes exactly the tokens its length carries at the clips' speech rate
(end-of-text forbidden before that count, forced at it), on random weights of the --shape:

- transformers: WhisperForConditionalGeneration, float16, sdpa attention, GenerationMixin.generate in
  batches of --batch windows in clip order (dynamic cache); then, where it compiles, its static
  cache with torch.compile on the first batch.
- ctranslate2: faster-whisper's engine, on the same random weights converted by its own converter,
  float16, greedy, batches of --batch windows; a batch runs to its longest window's count (its
  generate takes one length per batch: the extra tokens are reported).
- engine: our slot decoder (the CUDA decoder of the service), all windows through --slots slots,
  once per cross-attention variant of --engine.

Windows are random noise of each window's length: with random weights and a fixed token count the
content changes no work (every encoder pass is a full 30 s window), and no peer needs ffmpeg.
Each figure is audio seconds / wall seconds of encoder + decoder (log-mel features are made once,
outside the timings, the same for every peer). Results are written after each peer.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import glob
import json
import math
import os
import site
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from whisper.audio import SAMPLE_RATE
from whisper.decoding import DecodingOptions
from whisper.tokenizer import LANGUAGES

from app.worker import precision, synthetic
from app.worker.decoding import cross_attention
from app.worker.decoding.cross_attention import CrossAttentionOptions
from app.worker.decoding.memory import ENCODER_WINDOWS
from app.worker.decoding.plan import greedy_plan
from app.worker.decoding.slots import SlotDecoder
from app.worker.engine import log_mel_batch
from app.worker.loading import avoid_cudnn_attention
from scripts.bench_clips import load_clips, tokens_per_second

WINDOW_SECONDS = 30.0
# whisper's multilingual special tokens
EOT, SOT, ENGLISH, TRANSCRIBE = 50257, 50258, 50259, 50359
PROMPT = (SOT, ENGLISH, TRANSCRIBE)


@dataclass(frozen=True)
class Windows:
    """The windows every peer decodes: their audio, log-mel features (on the GPU) and token counts."""

    seconds: list[float]
    tokens: list[int]
    features: Tensor

    @property
    def audio_seconds(self) -> float:
        return sum(self.seconds)


def cut_windows(clips_dir: Path, repeat: int, n_mels: int, device: torch.device) -> Windows:
    clips, _ = load_clips(clips_dir)
    rate = tokens_per_second(clips)
    order = np.random.default_rng(0).permutation(len(clips) * repeat) % len(clips)
    seconds: list[float] = []
    for index in order:
        remaining = clips[index].seconds
        while remaining > 0:
            seconds.append(min(WINDOW_SECONDS, remaining))
            remaining -= WINDOW_SECONDS
    noise = np.random.default_rng(1)
    waveforms = [(0.05 * noise.standard_normal(int(s * SAMPLE_RATE))).astype(np.float32) for s in seconds]
    tokens = [max(1, min(224, round(rate * len(w) / SAMPLE_RATE))) for w in waveforms]
    features = torch.cat([log_mel_batch(waveforms[i : i + 64], n_mels, device) for i in range(0, len(waveforms), 64)])
    return Windows(seconds, tokens, features.half() if device.type == "cuda" else features)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(run: Callable[[], object]) -> tuple[float, object]:
    sync()
    started = time.perf_counter()
    result = run()
    sync()
    return time.perf_counter() - started, result


def figures(windows: Windows, seconds: float, decoded: int) -> dict[str, float | int]:
    return {
        "seconds": round(seconds, 3),
        "realtime": round(windows.audio_seconds / seconds, 1),
        "tokens_decoded": decoded,
        "tokens_required": sum(windows.tokens),
    }


def batches(n: int, size: int) -> Iterator[slice]:
    for first in range(0, n, size):
        yield slice(first, min(n, first + size))


# -- our engine ---------------------------------------------------------------------------------------


def engine(model: torch.nn.Module, windows: Windows, slots: int, variant: str) -> dict[str, object]:
    """Every window through the slot decoder: admitted as slots free up, encoded ENCODER_WINDOWS at a time."""
    backend, _, precision_name = variant.partition("+")
    cross_attention.configure(CrossAttentionOptions(backend, fp8=precision_name == "fp8"))  # type: ignore[arg-type]
    options = DecodingOptions(language="en", fp16=True, **synthetic.decoding_overrides(model))
    prepared = greedy_plan(model, options)
    assert prepared is not None
    plan, initial, _ = prepared
    started = time.perf_counter()
    decoder = SlotDecoder(model, slots)
    decoder.prepare(plan)
    startup = time.perf_counter() - started

    def run() -> tuple[int, int]:
        waiting = list(range(len(windows.tokens)))
        decoded = steps = 0
        while waiting or decoder.occupied:
            free = decoder.free_slots()
            # admit in encoder-sized groups, or whatever is left: a prefill per step would cost more than it gains
            while waiting and len(free) >= min(ENCODER_WINDOWS, len(waiting)):
                taken, waiting = waiting[:ENCODER_WINDOWS], waiting[ENCODER_WINDOWS:]
                slots_taken, free = free[: len(taken)], free[len(taken) :]
                with torch.inference_mode():
                    features = model.encoder(windows.features[taken])
                decoder.admit(slots_taken, features, plan, initial, [windows.tokens[i] for i in taken])
            decoder.step()
            steps += 1
            decoded += sum(len(result.tokens) for result in decoder.finished())
        return decoded, steps

    timed(run)  # warm-up: the allocator and cuDNN plans settle
    seconds, (decoded, steps) = timed(run)
    result: dict[str, object] = {**figures(windows, seconds, decoded), "steps": steps, "slots": slots}
    result |= {"ms_per_step": round(1000 * seconds / steps, 2), "startup_seconds": round(startup, 1),
               "backend": decoder.cross.backend, "fp8": decoder.cross.fp8}  # fmt: skip
    return result


# -- transformers ---------------------------------------------------------------------------------------


def hf_model(shape: str, device: str) -> torch.nn.Module:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    dims = synthetic.SHAPES[shape]
    config = WhisperConfig(
        vocab_size=dims.n_vocab, num_mel_bins=dims.n_mels, d_model=dims.n_audio_state,
        encoder_layers=dims.n_audio_layer, decoder_layers=dims.n_text_layer,
        encoder_attention_heads=dims.n_audio_head, decoder_attention_heads=dims.n_text_head,
        encoder_ffn_dim=4 * dims.n_audio_state, decoder_ffn_dim=4 * dims.n_text_state,
        max_source_positions=dims.n_audio_ctx, max_target_positions=dims.n_text_ctx,
        decoder_start_token_id=SOT, eos_token_id=EOT, pad_token_id=EOT, bos_token_id=EOT,
        suppress_tokens=[], begin_suppress_tokens=[],
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = WhisperForConditionalGeneration(config)
    model = (model.half() if device == "cuda" else model).eval()
    model.generation_config.suppress_tokens = []
    model.generation_config.begin_suppress_tokens = []
    return model


def exact_counts(counts: Tensor, prompt_length: int) -> object:
    """A logits processor: end-of-text forbidden before each row's count, forced at it."""
    from transformers import LogitsProcessor

    class ExactCount(LogitsProcessor):  # type: ignore[misc]
        def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
            generated = input_ids.shape[1] - prompt_length
            ended = (generated >= counts)[:, None]
            forced = torch.full_like(scores, -math.inf)
            forced[:, EOT] = 0
            scores[:, EOT] = -math.inf
            return torch.where(ended, forced, scores)

    return ExactCount()


def transformers_generate(
    model: torch.nn.Module, windows: Windows, batch: int, static_cache: bool = False, only_first: bool = False
) -> dict[str, object]:
    from transformers import GenerationMixin, LogitsProcessorList

    def run() -> int:
        decoded = 0
        for part in batches(len(windows.tokens), batch):
            features = windows.features[part]
            counts = torch.tensor(windows.tokens[part], device=features.device)
            prompt = torch.tensor([PROMPT], device=features.device).expand(len(counts), -1)
            extra = {"cache_implementation": "static"} if static_cache else {}
            with torch.inference_mode():
                out = GenerationMixin.generate(
                    model, input_features=features, decoder_input_ids=prompt, do_sample=False, num_beams=1,
                    max_new_tokens=int(counts.max()) + 1, eos_token_id=EOT, pad_token_id=EOT,
                    logits_processor=LogitsProcessorList([exact_counts(counts, len(PROMPT))]), **extra,
                )  # fmt: skip
            decoded += int((out[:, len(PROMPT) :] != EOT).sum())
            if only_first:
                break
        return decoded

    warm_seconds, _ = timed(run)
    seconds, decoded = timed(run)
    if only_first:
        first = Windows(windows.seconds[:batch], windows.tokens[:batch], windows.features[:batch])
        return {**figures(first, seconds, int(decoded)), "windows": len(first.tokens),  # type: ignore[call-overload]
                "first_run_seconds": round(warm_seconds, 1)}  # fmt: skip
    return {**figures(windows, seconds, int(decoded)), "batch": batch,  # type: ignore[call-overload]
            "first_run_seconds": round(warm_seconds, 1)}  # fmt: skip


# -- CTranslate2 ----------------------------------------------------------------------------------------


def preload_cublas12() -> list[str]:
    """CTranslate2's wheel is built for CUDA 12 and opens libcublas.so.12 at run time: load one by its path
    where some package of this environment ships it (dlopen then finds it by name)."""
    found = []
    roots = [*site.getsitepackages(), *sys.path, "/usr/local/cuda/lib64", "/usr/lib/x86_64-linux-gnu"]
    for root in roots:
        for path in sorted(glob.glob(os.path.join(root, "**", "libcublas*.so.12*"), recursive=True)):
            with contextlib.suppress(OSError):
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                found.append(path)
    return found


class _Vocabulary:
    """What CTranslate2's Whisper converter asks of a tokenizer: whisper's multilingual vocabulary, by id."""

    def __init__(self) -> None:
        specials = ["<|endoftext|>", "<|startoftranscript|>", *(f"<|{code}|>" for code in LANGUAGES),
                    "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
                    "<|notimestamps|>"]  # fmt: skip
        self.vocab = {f"t{i}": i for i in range(EOT)} | {token: EOT + i for i, token in enumerate(specials)}
        languages = [f"<|{code}|>" for code in LANGUAGES]
        self.additional_special_tokens = languages
        self.additional_special_tokens_ids = [self.vocab[t] for t in languages]

    def get_vocab(self) -> dict[str, int]:
        return self.vocab

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.vocab[token]


def ctranslate2_convert(model: torch.nn.Module, directory: Path) -> Path:
    from ctranslate2.converters import TransformersConverter

    source, target = directory / "hf", directory / "ct2"
    model.config.save_pretrained(source)
    cpu_model = model.to("cpu")

    class InMemory(TransformersConverter):  # type: ignore[misc]
        def load_model(self, model_class: object, name: str, **kwargs: object) -> torch.nn.Module:
            return cpu_model

        def load_tokenizer(self, tokenizer_class: object, name: str, **kwargs: object) -> _Vocabulary:
            return _Vocabulary()

    InMemory(str(source), load_as_float16=True).convert(str(target), quantization="float16", force=True)
    return target


def ctranslate2_generate(path: Path, windows: Windows, batch: int) -> dict[str, object]:
    import ctranslate2

    device = windows.features.device.type
    compute_type = "float16" if device == "cuda" else "float32"
    model = ctranslate2.models.Whisper(str(path), device=device, compute_type=compute_type)

    def run() -> int:
        decoded = 0
        for part in batches(len(windows.tokens), batch):
            counts = windows.tokens[part]
            features = windows.features[part].float().contiguous()
            features = ctranslate2.StorageView.from_array(features if device == "cuda" else features.numpy())
            results = model.generate(
                features, [list(PROMPT)] * len(counts), beam_size=1, max_length=len(PROMPT) + max(counts),
                suppress_tokens=[EOT], suppress_blank=False,
            )  # fmt: skip
            decoded += sum(len(r.sequences_ids[0]) for r in results)
        return decoded

    warm_seconds, _ = timed(run)
    seconds, decoded = timed(run)
    return {**figures(windows, seconds, int(decoded)), "batch": batch,  # type: ignore[call-overload]
            "first_run_seconds": round(warm_seconds, 1)}  # fmt: skip


# -- the run --------------------------------------------------------------------------------------------


def attempt(report: dict[str, object], name: str, measure: Callable[[], dict[str, object]]) -> None:
    """One peer's figures into the report, or the exception that stopped it (the others still run)."""
    try:
        report[name] = measure()
    except Exception as exc:
        report[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000], "trace": traceback.format_exc()[-3000:]}
    print(json.dumps({name: report[name]}, indent=1), flush=True)
    gc.collect()
    torch.cuda.empty_cache()


def ratios(report: dict[str, object]) -> dict[str, float]:
    """Each engine variant's realtime factor over each peer's."""
    engines = {k: v for k, v in report.items() if k.startswith("engine ") and isinstance(v, dict) and "realtime" in v}
    peers = {
        k: v for k, v in report.items()
        if k.startswith(("transformers", "ctranslate2")) and isinstance(v, dict) and "realtime" in v
    }  # fmt: skip
    return {
        f"{engine} / {peer}": round(e["realtime"] / p["realtime"], 2)
        for engine, e in engines.items()
        for peer, p in peers.items()
    }


def engines(report: dict[str, object], args: argparse.Namespace, write: Callable[[], None]) -> Windows:
    """Our engine once per cross-attention variant; returns the windows, for the peers."""
    model = synthetic.build_model(args.shape, args.device)
    if args.device == "cuda":
        precision.cast_to_fp16(model)
        # as the service runs: cuDNN out of attention but for the step's cross-attention (load_model does this)
        avoid_cudnn_attention()
    windows = cut_windows(args.clips, args.repeat, model.dims.n_mels, model.device)
    report["windows"] = {"count": len(windows.tokens), "audio_seconds": round(windows.audio_seconds, 1),
                         "tokens": sum(windows.tokens), "windows_per_audio_minute": round(
                             60 * len(windows.tokens) / windows.audio_seconds, 2)}  # fmt: skip
    # a fixed sample_len (the most whisper decodes): each window stops at its own count by its limit
    model.tokens_per_window = 224
    for variant in args.engine.split(","):
        attempt(report, f"engine {variant}", lambda v=variant: engine(model, windows, args.slots, v))  # type: ignore[misc]
        write()
    return windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=Path, required=True, help="a folder with scripts/bench_clips.py's clips.json")
    parser.add_argument("--shape", default="medium", choices=sorted(synthetic.SHAPES))
    parser.add_argument("--repeat", type=int, default=4, help="times the clip set is sent")
    parser.add_argument("--batch", type=int, default=256, help="windows per generate call of the peers")
    parser.add_argument("--slots", type=int, default=256)
    parser.add_argument("--engine", default="sdpa,auto", help="cross-attention: sdpa, cudnn, triton, triton+fp8, auto")
    # transformers-compile (static cache + torch.compile) is opt-in: it killed the process (SIGSEGV) on the H200 run
    parser.add_argument("--peers", default="transformers,ctranslate2", help="also: transformers-compile")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run of the script itself, no figures")
    args = parser.parse_args()
    report: dict[str, object] = {
        "command": "python -m scripts.bench_peers " + " ".join(sys.argv[1:]),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "shape": args.shape,
    }

    def write() -> None:
        report["ratios"] = ratios(report)
        args.output.write_text(json.dumps(report, indent=1) + "\n")

    windows = engines(report, args, write)
    # the libraries run with torch's own defaults, cuDNN's attention included
    torch.backends.cuda.enable_cudnn_sdp(True)
    peers = args.peers.split(",")
    hf = None
    if "transformers" in peers or "transformers-compile" in peers or "ctranslate2" in peers:
        hf = hf_model(args.shape, args.device)
    if "transformers" in peers:
        for size in sorted({args.batch, 64}, reverse=True):
            attempt(report, f"transformers batch {size}", lambda s=size: transformers_generate(hf, windows, s))  # type: ignore[misc]
            write()
    if "ctranslate2" in peers:
        import importlib.util

        report["ctranslate2_environment"] = {
            "installed": importlib.util.find_spec("ctranslate2") is not None,
            "libcublas.so.12 preloaded from": preload_cublas12(),
        }
        with tempfile.TemporaryDirectory() as directory:

            def convert_and_run() -> dict[str, object]:
                import ctranslate2

                started = time.perf_counter()
                path = ctranslate2_convert(hf, Path(directory))
                hf.to(args.device)  # type: ignore[union-attr]
                converted = time.perf_counter() - started
                return {"version": ctranslate2.__version__, "cuda_devices": ctranslate2.get_cuda_device_count(),
                        "conversion_seconds": round(converted, 1),
                        **ctranslate2_generate(path, windows, args.batch)}  # fmt: skip

            attempt(report, f"ctranslate2 batch {args.batch}", convert_and_run)
        write()
    if "transformers-compile" in peers and hf is not None:
        hf.to(args.device)

        def compiled() -> dict[str, object]:
            hf.forward = torch.compile(hf.forward, mode="reduce-overhead", fullgraph=True)
            return transformers_generate(hf, windows, args.batch, static_cache=True, only_first=True)

        attempt(report, f"transformers static cache + torch.compile, first batch of {args.batch}", compiled)
        write()
    write()
    print(json.dumps(report["ratios"], indent=1))


if __name__ == "__main__":
    main()
