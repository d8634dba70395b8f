"""Turning an uploaded file into a 16 kHz mono float32 waveform with ffmpeg, and reading it back.

Decoding runs as asyncio subprocesses in the HTTP process, so many uploads decode in parallel
while the model worker stays busy with the previous batch.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import ffmpeg
import numpy as np
from whisper.audio import SAMPLE_RATE

from app.errors import Reason, RequestError

WAVEFORM_DTYPE = np.float32
BYTES_PER_SAMPLE = np.dtype(WAVEFORM_DTYPE).itemsize
# ffmpeg's wording when the container holds no audio stream to decode
NO_AUDIO_MARKERS = ("does not contain any stream", "matches no streams", "no audio")


def ffmpeg_decode_command(source: Path, destination: Path) -> list[str]:
    """The ffmpeg command line that writes `source`'s first audio stream as raw float32 samples."""
    stream = ffmpeg.input(str(source)).output(
        str(destination),
        format="f32le",
        acodec="pcm_f32le",
        ac=1,
        ar=SAMPLE_RATE,
        vn=None,
        sn=None,
        dn=None,
    )
    return stream.global_args("-nostdin", "-hide_banner", "-loglevel", "error").overwrite_output().compile()


def _ffmpeg_problem(stderr: bytes, source: Path) -> str:
    """ffmpeg's own complaint, without our temp path (the client never sees server paths)."""
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    detail = lines[-1] if lines else "ffmpeg could not decode it"
    return detail.replace(str(source), "upload")


async def decode_upload(source: Path, destination: Path, timeout: float) -> float:
    """Decode `source` into `destination` (raw float32, 16 kHz mono); return its duration in seconds.

    Raises RequestError naming the problem: empty upload, unreadable data, or no audio stream.
    """
    if source.stat().st_size == 0:
        raise RequestError(Reason.EMPTY_UPLOAD, "the uploaded file is empty")
    process = await asyncio.create_subprocess_exec(
        *ffmpeg_decode_command(source, destination),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise RequestError(
            Reason.UNREADABLE_AUDIO,
            f"decoding the upload took longer than {timeout:g} s",
        ) from None
    except asyncio.CancelledError:
        process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        problem = _ffmpeg_problem(stderr, source)
        reason = Reason.NO_AUDIO if any(m in problem.lower() for m in NO_AUDIO_MARKERS) else Reason.UNREADABLE_AUDIO
        raise RequestError(reason, f"the upload is not decodable audio: {problem}")
    n_samples = destination.stat().st_size // BYTES_PER_SAMPLE if destination.exists() else 0
    if n_samples == 0:
        raise RequestError(Reason.NO_AUDIO, "the upload decoded to zero audio samples")
    return n_samples / SAMPLE_RATE


def load_waveform(path: Path) -> np.ndarray:
    """Read a waveform written by `decode_upload`."""
    return np.fromfile(path, dtype=WAVEFORM_DTYPE)
