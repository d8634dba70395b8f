"""Turning an uploaded file into a 16 kHz mono float32 waveform with ffmpeg, and reading it back.

ffprobe first decides from the content (never the filename) what the upload is and how long it lasts;
only accepted audio is decoded, by asyncio subprocesses in the HTTP process, in parallel across uploads.
Both may open the upload alone: any other demuxer and any protocol but the local file are refused unopened.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import ffmpeg
import numpy as np

from app.contract import SAMPLE_RATE, WAVEFORM_DTYPE, Reason
from app.web.errors import RequestError

BYTES_PER_SAMPLE = np.dtype(WAVEFORM_DTYPE).itemsize
# ffmpeg's wording when the container holds no audio stream to decode
NO_AUDIO_MARKERS = ("does not contain any stream", "matches no streams", "no audio")
# demuxers of self-contained audio and video files; playlists, concat scripts, images and the like, which
# can make ffmpeg open other files, are refused by ffmpeg itself before they read a line (FFMPEG_INPUT_GUARDS)
ACCEPTED_FORMATS = frozenset(
    {
        "wav", "w64", "mp3", "flac", "ogg", "matroska", "webm", "mov", "mp4", "m4a", "3gp", "aac", "aiff",
        "amr", "asf", "caf", "au", "wv", "ape", "mpeg", "mpegts", "avi", "flv", "ac3", "eac3", "dts", "tta",
    }
)  # fmt: skip
# input options that keep ffprobe and ffmpeg to the upload itself: only our demuxers, only the file protocol (so a
# demuxer that names another file or a URL finds it refused); the upload is named "file:<path>" to match
FFMPEG_INPUT_GUARDS = {"format_whitelist": ",".join(sorted(ACCEPTED_FORMATS)), "protocol_whitelist": "file"}
# ffmpeg's words when a guard refused the demuxer it detected
NOT_ON_WHITELIST = b"not on whitelist"
# DXD's 384 kHz with headroom; a header claiming more is lying or hostile
MAX_SAMPLE_RATE = 768_000
# OpenAI's minimum: less than this holds no word to transcribe
MIN_AUDIO_SECONDS = 0.1
# ffmpeg's output is copied to the waveform file in pieces of this size
PIPE_CHUNK_BYTES = 1 << 20
# 60 dB above full scale: float recordings overshoot 1.0 a little, never by this much; past it the log-mel
# overflows float32 and the model fails on the request
MAX_SAMPLE_MAGNITUDE = 1000.0
# samples checked at once when a decoded waveform is scanned (4 MB)
SCAN_SAMPLES = 1 << 20


@dataclass(frozen=True)
class Probe:
    """What ffprobe read from an upload's content."""

    format_name: str  # the demuxer's names, such as "mov,mp4,m4a,3gp,3g2,mj2"
    duration: float | None  # seconds, where the container or its audio stream states it


def ffmpeg_decode_command(source: Path) -> list[str]:
    """The ffmpeg command line that writes `source`'s first audio stream to stdout as raw float32 samples.

    We write the file ourselves: ffmpeg exits 0 when the tmpfs fills up under it, with the waveform cut short.
    """
    stream = ffmpeg.input(f"file:{source}", **FFMPEG_INPUT_GUARDS).output(
        "pipe:1",
        format="f32le",
        acodec="pcm_f32le",
        ac=1,
        ar=SAMPLE_RATE,
        vn=None,
        sn=None,
        dn=None,
    )
    return stream.global_args("-nostdin", "-hide_banner", "-loglevel", "error").compile()


def ffprobe_command(source: Path) -> list[str]:
    entries = "format=format_name,duration:stream=codec_type,channels,sample_rate,duration"
    guards = [argument for name, value in FFMPEG_INPUT_GUARDS.items() for argument in (f"-{name}", value)]
    return [
        "ffprobe",
        "-v",
        "error",
        "-hide_banner",
        *guards,
        "-show_entries",
        entries,
        "-of",
        "json",
        f"file:{source}",
    ]


def _ffmpeg_problem(stderr: bytes, source: Path) -> str:
    """ffmpeg's own complaint, without our temp path (the client never sees server paths)."""
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    detail = lines[-1] if lines else "ffmpeg could not decode it"
    return detail.replace(f"file:{source}", "upload").replace(str(source), "upload")


@asynccontextmanager
async def running(command: list[str]) -> AsyncIterator[asyncio.subprocess.Process]:
    """ffmpeg or ffprobe, killed if it is still running when the block ends (timeout, cancellation, error)."""
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def too_slow(timeout: float) -> RequestError:
    return RequestError(Reason.UNREADABLE_AUDIO, f"reading the upload took longer than {timeout:g} s")


def _seconds(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None  # ffprobe writes "N/A", or leaves the entry out, where it cannot tell


def unreadable(stderr: bytes, source: Path) -> RequestError:
    problem = _ffmpeg_problem(stderr, source)
    reason = Reason.NO_AUDIO if any(m in problem.lower() for m in NO_AUDIO_MARKERS) else Reason.UNREADABLE_AUDIO
    return RequestError(reason, f"the upload is not decodable audio: {problem}")


async def probe_upload(source: Path, timeout: float) -> Probe:
    """Identify the upload from its bytes; raises RequestError unless it is an accepted format with audio."""
    async with running(ffprobe_command(source)) as process:
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
        except asyncio.TimeoutError:
            raise too_slow(timeout) from None
    if NOT_ON_WHITELIST in stderr:
        raise RequestError(
            Reason.UNSUPPORTED_FORMAT,
            "the upload's content is not an audio format this server accepts (playlists, concat scripts, "
            "images and the like are refused unopened)",
        )
    if process.returncode != 0:
        raise unreadable(stderr, source)
    report = json.loads(stdout or b"{}")
    container = report.get("format", {})
    format_name = container.get("format_name", "unknown")
    if not ACCEPTED_FORMATS.intersection(format_name.split(",")):
        raise RequestError(
            Reason.UNSUPPORTED_FORMAT,
            f"the upload's content is {format_name!r}, which is not an audio format this server accepts",
        )
    audio = [stream for stream in report.get("streams", []) if stream.get("codec_type") == "audio"]
    if not audio:
        raise RequestError(Reason.NO_AUDIO, "the upload has no audio stream")
    channels, rate = audio[0].get("channels", 0), int(audio[0].get("sample_rate") or 0)
    if channels < 1 or not 0 < rate <= MAX_SAMPLE_RATE:
        raise RequestError(
            Reason.UNREADABLE_AUDIO,
            f"the upload's audio claims {channels} channels at {rate} Hz, which is not real audio",
        )
    return Probe(format_name, _seconds(container.get("duration")) or _seconds(audio[0].get("duration")))


def too_long(seconds: float, max_seconds: float, bound: str = "") -> RequestError:
    return RequestError(
        Reason.AUDIO_TOO_LONG,
        f"the audio is {bound}{seconds:.1f} s long; this server accepts at most {max_seconds:g} s",
    )


async def copy_to_file(stream: asyncio.StreamReader, destination: Path, max_bytes: float) -> int:
    """Write `stream` to `destination` until it ends or passes `max_bytes`; the bytes it had, at least."""
    written = 0
    with destination.open("wb") as waveform:
        while written <= max_bytes and (chunk := await stream.read(PIPE_CHUNK_BYTES)):
            waveform.write(chunk)
            written += len(chunk)
    return written


async def decode_upload(source: Path, destination: Path, timeout: float, max_seconds: float = float("inf")) -> float:
    """Probe, then decode `source` into `destination` (raw float32, 16 kHz mono); return its duration in seconds.

    Raises RequestError naming the problem: empty, unknown or unaccepted content, no audio stream, audio
    shorter than MIN_AUDIO_SECONDS or longer than `max_seconds` (told by the probe before any decoding, or
    by the decoder when the container understated it), and OSError(ENOSPC) when the tmpfs is full.
    """
    if source.stat().st_size == 0:
        raise RequestError(Reason.EMPTY_UPLOAD, "the uploaded file is empty")
    probe = await probe_upload(source, timeout)
    if probe.duration is not None and probe.duration > max_seconds:
        raise too_long(probe.duration, max_seconds)
    max_bytes = max_seconds * SAMPLE_RATE * BYTES_PER_SAMPLE
    async with running(ffmpeg_decode_command(source)) as process:
        # both pipes exist: running() asks for them
        assert process.stdout is not None and process.stderr is not None
        complaints = asyncio.ensure_future(process.stderr.read())
        try:
            written = await asyncio.wait_for(copy_to_file(process.stdout, destination, max_bytes), timeout)
        except asyncio.TimeoutError:
            raise too_slow(timeout) from None
        if written > max_bytes:
            # the container understated its length; what was decoded so far is a lower bound
            raise too_long(written / BYTES_PER_SAMPLE / SAMPLE_RATE, max_seconds, bound="more than ")
        await process.wait()
    if process.returncode != 0:
        raise unreadable(await complaints, source)
    seconds = written // BYTES_PER_SAMPLE / SAMPLE_RATE
    if seconds == 0:
        raise RequestError(Reason.NO_AUDIO, "the upload decoded to zero audio samples")
    if seconds < MIN_AUDIO_SECONDS:
        raise RequestError(
            Reason.AUDIO_TOO_SHORT,
            f"the audio is {seconds:.3f} s long; the shortest this server transcribes is {MIN_AUDIO_SECONDS:g} s",
        )
    check_samples(destination)
    return seconds


def check_samples(path: Path) -> None:
    """Refuse a waveform holding NaN, infinities or magnitudes past MAX_SAMPLE_MAGNITUDE, naming what it holds.

    Float formats (WAV, CAF, ...) carry such values through ffmpeg untouched, and the model fails on them.
    """
    waveform = np.memmap(path, dtype=WAVEFORM_DTYPE, mode="r")
    not_finite = too_loud = 0
    for start in range(0, len(waveform), SCAN_SAMPLES):
        block = np.asarray(waveform[start : start + SCAN_SAMPLES])
        finite = np.isfinite(block)
        not_finite += int(block.size - np.count_nonzero(finite))
        too_loud += int(np.count_nonzero(np.abs(block[finite]) > MAX_SAMPLE_MAGNITUDE))
    del waveform
    if not_finite:
        raise RequestError(
            Reason.INVALID_SAMPLES, f"the audio holds {not_finite} NaN or infinite samples; no recording does"
        )
    if too_loud:
        raise RequestError(
            Reason.INVALID_SAMPLES,
            f"the audio holds {too_loud} samples of magnitude over {MAX_SAMPLE_MAGNITUDE:g} (full scale is 1.0)",
        )
