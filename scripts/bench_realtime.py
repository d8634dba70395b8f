"""Live sessions at real-time pace: speech-end to `completed` latency, alone or beside file clients.

Against a running service (one audio file, streamed by every session, with 2 s of silence after each pass):

    python -m scripts.bench_realtime --audio speech.wav --url ws://localhost:8000 --sessions 1 --duration 40

Or a service it starts itself, measuring file throughput alone and then beside the live sessions (the audio:
the clips of scripts/bench_clips.py up to 30 s, 1 s of silence after each; see benchmarks/README.md):

    python -m scripts.bench_realtime --service --clips DIR --model synthetic:medium --sessions 200 --clients 64

Latency is measured per utterance from `input_audio_buffer.speech_stopped` (the server has decided the speech
ended) to its `completed` event, at the client.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import websockets

RATE, FRAME_SECONDS = 24_000, 0.1
FRAME_BYTES = int(RATE * FRAME_SECONDS) * 2
# how long the last utterances may take to come back once the sessions stop sending
DRAIN_SECONDS = 60.0


def pcm16(path: Path, silence_after: float) -> bytes:
    command = ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(path),
               "-f", "s16le", "-ac", "1", "-ar", str(RATE), "-"]  # fmt: skip
    return subprocess.run(command, check=True, capture_output=True).stdout + bytes(int(RATE * silence_after) * 2)


async def session(audio: bytes, url: str, headers: dict[str, str], seconds: float, offset: float) -> list[float]:
    """Stream `audio` (looped, starting `offset` of the way in) at real-time pace for `seconds`."""
    latencies: list[float] = []
    stopped: dict[str, float] = {}
    start = int(len(audio) * offset) // FRAME_BYTES * FRAME_BYTES
    looped = audio[start:] + audio[:start]
    async with websockets.connect(f"{url}/v1/realtime?intent=transcription", additional_headers=headers) as socket:
        update = {"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "transcription": {"language": "en"}}}}}  # fmt: skip
        await socket.send(json.dumps(update))

        async def send_audio() -> None:
            began = time.monotonic()
            for index in range(int(seconds / FRAME_SECONDS)):
                position = index * FRAME_BYTES % len(looped)
                chunk = base64.b64encode(looped[position : position + FRAME_BYTES]).decode()
                await socket.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
                await asyncio.sleep(max(0.0, began + (index + 1) * FRAME_SECONDS - time.monotonic()))

        sender = asyncio.create_task(send_audio())
        deadline = None
        while not sender.done() or len(latencies) < len(stopped):
            if sender.done() and deadline is None:
                deadline = time.monotonic() + DRAIN_SECONDS
            try:
                event = json.loads(await asyncio.wait_for(socket.recv(), 5))
            except TimeoutError:
                if deadline is not None and time.monotonic() > deadline:
                    break
                continue
            if event["type"] == "input_audio_buffer.speech_stopped":
                stopped[event["item_id"]] = time.monotonic()
            elif (
                event["type"] == "conversation.item.input_audio_transcription.completed" and event["item_id"] in stopped
            ):
                latencies.append(time.monotonic() - stopped[event["item_id"]])
        await sender
    return latencies


async def live(audio: bytes, url: str, headers: dict[str, str], sessions: int, seconds: float) -> list[list[float]]:
    async def one(index: int) -> list[float]:
        # sessions join over two seconds, each at its own place in the audio, so their speech ends spread out
        await asyncio.sleep(2 * index / sessions)
        return await session(audio, url, headers, seconds, index / sessions)

    return list(await asyncio.gather(*(one(index) for index in range(sessions))))


def percentile(values: list[float], share: float) -> float | None:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 3) if ordered else None


def summary(per_session: list[list[float]]) -> dict[str, object]:
    latencies = [value for values in per_session for value in values]
    return {
        "utterances": len(latencies),
        "p50_seconds": round(statistics.median(latencies), 3) if latencies else None,
        "p95_seconds": percentile(latencies, 0.95),
        "max_seconds": round(max(latencies), 3) if latencies else None,
    }


def against_service(arguments: argparse.Namespace) -> dict[str, object]:
    from app.config import load_settings
    from harness.service import ServiceProcess
    from scripts.bench import closed_loop
    from scripts.bench_clips import load_clips

    clips, _ = load_clips(arguments.clips)
    payloads = {clip.file: (arguments.clips / clip.file).read_bytes() for clip in clips}
    short = [clip for clip in clips if clip.seconds <= 30][: arguments.live_clips]
    audio = b"".join(pcm16(arguments.clips / clip.file, 1.0) for clip in short)
    env = {
        "WHISPER_MODEL": arguments.model,
        "WHISPER_SYNTHETIC_TOKENS_PER_SECOND": str(arguments.tokens_per_second),
        "WHISPER_DEVICE": arguments.device,
        "WHISPER_HTTP_PROCESSES": str(arguments.http_processes),
        "WHISPER_MAX_QUEUE": str(4 * (arguments.clients + arguments.sessions)),
        "WHISPER_REALTIME_MAX_SESSIONS": str(2 * arguments.sessions),
        "WHISPER_LOG_LEVEL": "warning",
        "WHISPER_REALTIME_INTERIM_SECONDS": str(arguments.interim_seconds),
    }
    workdir = Path(tempfile.mkdtemp(prefix="bench-realtime-"))
    with ServiceProcess(workdir, load_settings().model_cache_dir, 600.0, **env) as service:
        url = f"ws://127.0.0.1:{service.port}"
        closed_loop(service.url, clips, payloads, arguments.clients, arguments.warmup)
        alone = closed_loop(service.url, clips, payloads, arguments.clients, arguments.duration)
        results: list[list[list[float]]] = []
        seconds = arguments.duration + 6
        runner = threading.Thread(
            target=lambda: results.append(asyncio.run(live(audio, url, {}, arguments.sessions, seconds)))
        )
        runner.start()
        time.sleep(4)  # the sessions have joined and speak
        beside = closed_loop(service.url, clips, payloads, arguments.clients, arguments.duration)
        runner.join()
        opened = service.metric_total("whisper_realtime_sessions_ended_total")
    rtf_alone = alone.audio_seconds / alone.wall_seconds
    rtf_beside = beside.audio_seconds / beside.wall_seconds
    return {
        "sessions": arguments.sessions,
        "file_clients": arguments.clients,
        "interim_seconds": arguments.interim_seconds,
        "live": summary(results[0]),
        "sessions_ended": opened,
        "file_rtf_alone": round(rtf_alone, 1),
        "file_rtf_beside_live": round(rtf_beside, 1),
        "file_throughput_share": round(rtf_beside / rtf_alone, 3),
        "file_errors": {**alone.errors, **beside.errors},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audio", type=Path, help="stream this file against --url")
    parser.add_argument("--url", default="ws://localhost:8000")
    parser.add_argument("--key", default=os.environ.get("WHISPER_API_KEY"))
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--duration", type=float, default=40.0, help="seconds each session streams (measured run)")
    parser.add_argument("--service", action="store_true", help="start the service, with file clients beside")
    parser.add_argument("--clips", type=Path, help="scripts/bench_clips.py output (--service)")
    parser.add_argument("--live-clips", type=int, default=8, help="clips up to 30 s that the sessions speak")
    parser.add_argument("--model", default="synthetic:medium")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tokens-per-second", type=float, default=3.654)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--http-processes", type=int, default=4)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument(
        "--interim-seconds", type=float, default=0.0, help="WHISPER_REALTIME_INTERIM_SECONDS (--service)"
    )
    parser.add_argument("--output", type=Path)
    arguments = parser.parse_args()
    if arguments.service:
        report = against_service(arguments)
    else:
        headers = {"Authorization": f"Bearer {arguments.key}"} if arguments.key else {}
        audio = pcm16(arguments.audio, 2.0)
        report = summary(asyncio.run(live(audio, arguments.url, headers, arguments.sessions, arguments.duration)))
        report["sessions"] = arguments.sessions
    report["command"] = "python -m scripts.bench_realtime " + " ".join(sys.argv[1:])
    report["load_average"] = os.getloadavg()
    print(json.dumps(report, indent=2), flush=True)
    if arguments.output:
        arguments.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
