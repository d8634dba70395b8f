"""Stream an audio file to /v1/realtime at real-time pace and print each transcript as it completes.

    python -m scripts.realtime_client speech.wav --url ws://localhost:8000 [--key KEY]

Needs ffmpeg (any format it reads) and `pip install websockets`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess

import websockets

RATE, FRAME_SECONDS = 24_000, 0.1


async def stream(path: str, url: str, key: str | None) -> None:
    pcm = subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", path, "-f", "s16le", "-ac", "1", "-ar", str(RATE), "-"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with websockets.connect(f"{url}/v1/realtime?intent=transcription", additional_headers=headers) as socket:

        async def send_audio() -> None:
            step = int(RATE * FRAME_SECONDS) * 2
            for start in range(0, len(pcm) + 2 * RATE * 2, step):  # then 2 s of silence, so the last turn ends
                audio = base64.b64encode(pcm[start : start + step] or bytes(step)).decode()
                await socket.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
                await asyncio.sleep(FRAME_SECONDS)

        sender = asyncio.create_task(send_audio())
        waiting: set[str] = set()  # utterances committed and not yet transcribed
        while not (sender.done() and not waiting):
            event = json.loads(await asyncio.wait_for(socket.recv(), 120))
            if event["type"] == "input_audio_buffer.committed":
                waiting.add(event["item_id"])
            elif event["type"] == "conversation.item.input_audio_transcription.completed":
                waiting.discard(event["item_id"])
                print(event["transcript"], flush=True)
            elif event["type"] == "error" or event["type"].endswith(".failed"):
                waiting.discard(event.get("item_id", ""))
                print("error:", event["error"]["message"], flush=True)
        await sender


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio")
    parser.add_argument("--url", default="ws://localhost:8000")
    parser.add_argument("--key", default=os.environ.get("WHISPER_API_KEY"))
    arguments = parser.parse_args()
    asyncio.run(stream(arguments.audio, arguments.url, arguments.key))
