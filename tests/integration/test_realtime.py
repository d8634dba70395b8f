"""Live transcription over a real WebSocket (/v1/realtime) on the real server, with the official SDK's client too.

Audio is streamed faster than real time: the server's VAD hears stream time, not wall time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from openai import OpenAI
from websockets.asyncio.client import ClientConnection

from harness.service import ServiceProcess, wait_until
from harness.speech import SENTENCES, long_speech, speak

KEY = "realtime-test-key"
MAX_SESSIONS = 3
IDLE_SECONDS = 8
RATE = 24_000
FRAME_BYTES = RATE // 10 * 2  # 100 ms of pcm16
# generous: the 2-core CI machine transcribes with tiny.en beside other tests' load
EVENT_SECONDS = 300.0
COMPLETED = "conversation.item.input_audio_transcription.completed"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path) -> Iterator[ServiceProcess]:
    with ServiceProcess(
        tmp_path_factory.mktemp("realtime"),
        model_cache_dir,
        WHISPER_API_KEY=KEY,
        WHISPER_REALTIME_MAX_SESSIONS=str(MAX_SESSIONS),
        WHISPER_REALTIME_IDLE_TIMEOUT=str(IDLE_SECONDS),
        # interim passes (off by default) every 2 s of speech, so deltas before `completed` are exercised
        WHISPER_REALTIME_INTERIM_SECONDS="2",
    ) as process:
        yield process


def pcm16(path: Path) -> bytes:
    command = [
        "ffmpeg",
        "-nostdin",
        "-loglevel",
        "error",
        "-i",
        str(path),
        "-f",
        "s16le",
        "-ac",
        "1",
        "-ar",
        str(RATE),
        "-",
    ]
    return subprocess.run(command, check=True, capture_output=True).stdout


def frames(pcm: bytes, trailing_silence: float = 1.5) -> Iterator[str]:
    padded = pcm + bytes(int(RATE * trailing_silence) * 2)
    for start in range(0, len(padded), FRAME_BYTES):
        yield json.dumps(
            {
                "type": "input_audio_buffer.append",
                "audio": base64.b64encode(padded[start : start + FRAME_BYTES]).decode(),
            }
        )


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def url(service: ServiceProcess) -> str:
    return f"ws://127.0.0.1:{service.port}/v1/realtime?intent=transcription"


def connect(service: ServiceProcess, **options: Any) -> websockets.asyncio.client.connect:
    options.setdefault("additional_headers", {"Authorization": f"Bearer {KEY}"})
    return websockets.connect(url(service), **options)


async def next_event(socket: ClientConnection, kind: str | None = None) -> dict[str, Any]:
    """The next event (of `kind`, skipping others)."""
    while True:
        event = json.loads(await asyncio.wait_for(socket.recv(), EVENT_SECONDS))
        if kind is None or event["type"] == kind:
            return event


@pytest.fixture(scope="module")
def two_sentences(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two sentences with 1.5 s of silence between them: two utterances for server VAD."""
    folder = tmp_path_factory.mktemp("two")
    first = speak(SENTENCES[0], folder / "first.wav", gap_seconds=1.5)
    second = speak(SENTENCES[1], folder / "second.wav")
    joined = folder / "two.wav"
    listing = folder / "list.txt"
    listing.write_text(f"file '{first}'\nfile '{second}'\n")
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "concat", "-safe", "0", "-i", str(listing), str(joined)],
        check=True,
    )
    return joined


def test_the_official_sdk_streams_a_recording_and_gets_each_utterance_in_order(
    live: ServiceProcess, two_sentences: Path
) -> None:
    client = OpenAI(base_url=f"{live.url}/v1", api_key=KEY)
    with client.realtime.connect(extra_query={"intent": "transcription"}) as connection:
        assert connection.recv().type == "session.created"
        for frame in frames(pcm16(two_sentences)):
            connection.send(json.loads(frame))
        turns: list[str] = []
        committed: list[str] = []
        completed: list[str] = []
        transcripts: list[str] = []
        while len(transcripts) < 2:
            event = connection.recv()
            if event.type.startswith("input_audio_buffer."):
                turns.append(event.type)
            if event.type == "input_audio_buffer.committed":
                committed.append(event.item_id)
            if event.type == COMPLETED:
                completed.append(event.item_id)
                transcripts.append(event.transcript)
    # streamed faster than real time, the second utterance may be heard before the first is transcribed
    assert turns == ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                     "input_audio_buffer.committed"] * 2  # fmt: skip
    assert completed == committed
    spoken = words(" ".join(transcripts))
    uploaded = live.transcribe(two_sentences).json()["transcription"]
    expected = words(uploaded)
    missing = [word for word in expected if word not in spoken]
    # each utterance is decoded alone, the file as one window: tiny.en hears a few words differently either way
    # (measured: 3 of 23, with the live side nearer the script); at most one word in five may differ
    assert len(missing) <= len(expected) // 5, (transcripts, uploaded)
    assert words(transcripts[0])[:3] == ["the", "quick", "brown"]


def test_vad_events_come_in_order_and_deltas_add_up_to_the_transcript(
    live: ServiceProcess, two_sentences: Path
) -> None:
    async def run() -> list[dict[str, Any]]:
        async with connect(live) as socket:
            await next_event(socket, "session.created")
            for frame in frames(pcm16(two_sentences)):
                await socket.send(frame)
            events: list[dict[str, Any]] = []
            while sum(event["type"] == COMPLETED for event in events) < 2:
                events.append(await next_event(socket))
            return events

    events = asyncio.run(run())
    for item_id in dict.fromkeys(event["item_id"] for event in events if "item_id" in event):
        own = [event for event in events if event.get("item_id") == item_id]
        kinds = [event["type"] for event in own if not event["type"].endswith(".delta")]
        assert kinds == [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            COMPLETED,
        ]
        started, stopped = own[0]["audio_start_ms"], own[1]["audio_end_ms"]
        assert 0 <= started < stopped
        deltas = "".join(event["delta"] for event in own if event["type"].endswith(".delta"))
        assert deltas == own[-1]["transcript"]


def test_a_session_without_turn_detection_transcribes_what_the_client_commits(
    live: ServiceProcess, tmp_path: Path
) -> None:
    fox = speak(SENTENCES[0], tmp_path / "fox.wav")

    async def run() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
        async with connect(live) as socket:
            await next_event(socket, "session.created")
            update = {
                "type": "session.update",
                "session": {"type": "transcription", "audio": {"input": {"turn_detection": None}}},
            }
            await socket.send(json.dumps(update))
            updated = await next_event(socket)
            await socket.send(json.dumps({"type": "input_audio_buffer.commit"}))
            empty = await next_event(socket)
            for frame in frames(pcm16(fox), trailing_silence=0):
                await socket.send(frame)
            await socket.send(json.dumps({"type": "input_audio_buffer.commit"}))
            committed = await next_event(socket)
            return updated, empty, committed, await next_event(socket, COMPLETED)

    updated, empty, committed, completed = asyncio.run(run())
    assert updated["type"] == "session.updated"
    assert updated["session"]["audio"]["input"]["turn_detection"] is None
    assert empty["type"] == "error" and empty["error"]["code"] == "input_audio_buffer_commit_empty"
    assert committed["type"] == "input_audio_buffer.committed"
    assert completed["item_id"] == committed["item_id"]
    assert words(completed["transcript"])[:4] == ["the", "quick", "brown", "fox"]


def test_bad_frames_get_an_error_event_and_the_session_lives_on(live: ServiceProcess) -> None:
    async def run() -> list[dict[str, Any]]:
        async with connect(live) as socket:
            await next_event(socket, "session.created")
            answers = []
            for bad in (
                {"type": "input_audio_buffer.append", "audio": "not base64 at all!"},
                {"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\x01\x02\x03").decode()},
                {"type": "conversation.item.create"},
            ):
                await socket.send(json.dumps(bad))
                answers.append(await next_event(socket))
            await socket.send("{not json")
            answers.append(await next_event(socket))
            beta = {"type": "transcription_session.update", "session": {"input_audio_format": "g711_ulaw"}}
            await socket.send(json.dumps(beta))
            answers.append(await next_event(socket))
            return answers

    *errors, updated = asyncio.run(run())
    assert [error["type"] for error in errors] == ["error"] * 4
    assert [error["error"]["code"] for error in errors] == [
        "invalid_audio",
        "invalid_audio",
        "unknown_event",
        "invalid_json",
    ]
    assert "odd" in errors[1]["error"]["message"]
    assert updated["type"] == "transcription_session.updated"
    assert updated["session"]["input_audio_format"] == "g711_ulaw"


def test_speech_longer_than_a_window_is_cut_at_30_seconds(live: ServiceProcess, tmp_path: Path) -> None:
    speech = long_speech(tmp_path / "long.wav", 34)

    async def run() -> list[dict[str, Any]]:
        async with connect(live) as socket:
            await next_event(socket, "session.created")
            # pauses between sentences are 0.4 s: with 1 s of silence needed, the speech never stops by itself
            vad = {"type": "server_vad", "silence_duration_ms": 1000}
            await socket.send(
                json.dumps({"type": "session.update", "session": {"audio": {"input": {"turn_detection": vad}}}})
            )
            for frame in frames(pcm16(speech)):
                await socket.send(frame)
            events: list[dict[str, Any]] = []
            while sum(event["type"] == COMPLETED for event in events) < 2:
                events.append(await next_event(socket))
            return events

    events = asyncio.run(run())
    completed = [event for event in events if event["type"] == COMPLETED]
    assert completed[0]["usage"]["seconds"] == 30.0
    assert len(words(completed[0]["transcript"])) > 40
    starts = [event for event in events if event["type"] == "input_audio_buffer.speech_started"]
    assert len(starts) == 2 and starts[1]["audio_start_ms"] == starts[0]["audio_start_ms"] + 30_000


def test_sessions_past_the_cap_are_refused_until_one_closes(live: ServiceProcess) -> None:
    async def run() -> tuple[dict[str, Any], int | None, str]:
        held = [await connect(live).__aenter__() for _ in range(MAX_SESSIONS)]
        for socket in held:
            await next_event(socket, "session.created")
        async with connect(live) as refused:
            error = await next_event(refused)
            with pytest.raises(websockets.ConnectionClosed):
                await refused.recv()
            code = refused.close_code
        await held[0].close()
        wait = asyncio.get_running_loop().run_in_executor(
            None,
            lambda: wait_until(
                lambda: live.metric_total("whisper_realtime_sessions_open") < MAX_SESSIONS, 60, "a place"
            ),
        )
        await wait
        async with connect(live) as again:
            accepted = (await next_event(again))["type"]
        for socket in held[1:]:
            await socket.close()
        return error, code, accepted

    error, code, accepted = asyncio.run(run())
    assert error["error"]["code"] == "session_limit_reached"
    assert code == 1013
    assert accepted == "session.created"


def test_a_client_gone_mid_utterance_leaves_no_file_and_no_session(live: ServiceProcess, tmp_path: Path) -> None:
    speech = speak(SENTENCES[4], tmp_path / "long.wav")

    async def run() -> None:
        async with connect(live) as socket:
            await next_event(socket, "session.created")
            # 3 s of speech: an interim transcription (every 2 s of speech) is under way as the client vanishes
            for frame in list(frames(pcm16(speech), trailing_silence=0))[:30]:
                await socket.send(frame)
            await next_event(socket, "input_audio_buffer.speech_started")

    asyncio.run(run())
    wait_until(lambda: live.metric_total("whisper_realtime_sessions_open") == 0, 60, "the session to end")
    wait_until(lambda: not list(live.upload_dir.iterdir()), 60, "no file left on the tmpfs")


def test_the_key_is_required_as_a_header_or_a_subprotocol(live: ServiceProcess) -> None:
    async def run() -> tuple[int, str | None, str]:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with connect(live, additional_headers={}):
                pass
        async with websockets.connect(url(live), subprotocols=["realtime", f"openai-insecure-api-key.{KEY}"]) as socket:
            return refused.value.response.status_code, socket.subprotocol, (await next_event(socket))["type"]

    status, subprotocol, first = asyncio.run(run())
    assert status == 401
    assert subprotocol == "realtime"
    assert first == "session.created"


def test_an_idle_session_is_closed_with_an_error_event(live: ServiceProcess) -> None:
    async def run() -> tuple[dict[str, Any], int | None]:
        async with connect(live) as socket:
            await next_event(socket, "session.created")
            error = await next_event(socket)
            with pytest.raises(websockets.ConnectionClosed):
                await socket.recv()
            return error, socket.close_code

    error, code = asyncio.run(run())
    assert error["error"]["code"] == "idle_timeout"
    assert code == 1000
