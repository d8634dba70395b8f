"""Live sessions at real-time pace: speech-end to `completed` latency, from the client's side.

    python -m scripts.bench_realtime speech.wav --url ws://localhost:8000 --sessions 1 --rounds 3 --output x.json

Each session streams the file (then 2 s of silence) at real-time pace, `rounds` times; for each utterance the
time from `input_audio_buffer.speech_stopped` (the server decided speech ended) to its `completed` event.
Sessions start spread over one second. File clients beside them: run scripts/bench_service.py at the same time.
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
import time

import websockets

RATE, FRAME_SECONDS = 24_000, 0.1


async def session(pcm: bytes, url: str, headers: dict[str, str], rounds: int, delay: float) -> list[float]:
    await asyncio.sleep(delay)
    latencies: list[float] = []
    stopped: dict[str, float] = {}
    async with websockets.connect(f"{url}/v1/realtime?intent=transcription", additional_headers=headers) as socket:

        async def send_audio() -> None:
            step = int(RATE * FRAME_SECONDS) * 2
            audio = (pcm + bytes(2 * RATE * 2)) * rounds
            began = time.monotonic()
            for index, start in enumerate(range(0, len(audio), step)):
                chunk = base64.b64encode(audio[start : start + step]).decode()
                await socket.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
                await asyncio.sleep(max(0.0, began + (index + 1) * FRAME_SECONDS - time.monotonic()))

        sender = asyncio.create_task(send_audio())
        while not sender.done() or len(latencies) < len(stopped):
            try:
                event = json.loads(await asyncio.wait_for(socket.recv(), 30))
            except TimeoutError:
                break
            if event["type"] == "input_audio_buffer.speech_stopped":
                stopped[event["item_id"]] = time.monotonic()
            elif event["type"] == "conversation.item.input_audio_transcription.completed":
                latencies.append(time.monotonic() - stopped[event["item_id"]])
        await sender
    return latencies


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def main(arguments: argparse.Namespace) -> dict[str, object]:
    pcm = subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", arguments.audio,
         "-f", "s16le", "-ac", "1", "-ar", str(RATE), "-"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    headers = {"Authorization": f"Bearer {arguments.key}"} if arguments.key else {}
    spread = [index / arguments.sessions for index in range(arguments.sessions)]
    results = await asyncio.gather(*(session(pcm, arguments.url, headers, arguments.rounds, d) for d in spread))
    latencies = [value for result in results for value in result]
    return {
        "command": "python -m scripts.bench_realtime " + " ".join(sys.argv[1:]),
        "sessions": arguments.sessions,
        "utterances": len(latencies),
        "p50_seconds": round(statistics.median(latencies), 3),
        "p95_seconds": round(percentile(latencies, 0.95), 3),
        "max_seconds": round(max(latencies), 3),
        "load_average": os.getloadavg(),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio")
    parser.add_argument("--url", default="ws://localhost:8000")
    parser.add_argument("--key", default=os.environ.get("WHISPER_API_KEY"))
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output")
    arguments = parser.parse_args()
    report = asyncio.run(main(arguments))
    print(json.dumps(report, indent=2))
    if arguments.output:
        with open(arguments.output, "w") as output:
            json.dump(report, output, indent=2)
