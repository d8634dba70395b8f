"""Known speakers' reference clips (OpenAI's known_speaker_references[]): data URLs checked, then decoded by ffmpeg.

A reference that is not a base64 data URL, is not audio, or lasts under 2 s or over 10 s (OpenAI's bounds) is a
400 naming which one; the decoded samples travel in the request's diarization options.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import replace
from pathlib import Path

import numpy as np

from app.contract import WAVEFORM_DTYPE, DiarizationOptions, KnownSpeaker, Reason, TranscriptionOptions
from app.web.audio import decode_upload
from app.web.errors import RequestError

PARAM = "known_speaker_references"
# OpenAI's bounds on a reference clip and on how many speakers may be named
MIN_REFERENCE_SECONDS = 2.0
MAX_REFERENCE_SECONDS = 10.0
MAX_KNOWN_SPEAKERS = 4


def bad_reference(index: int, problem: str) -> RequestError:
    return RequestError(Reason.BAD_OPTION, f"{PARAM}[{index}]: {problem}", PARAM)


def clip_bytes(index: int, reference: str) -> bytes:
    """The bytes inside a `data:<type>;base64,<payload>` URL."""
    header, comma, payload = reference.partition(",")
    if not header.startswith("data:") or not header.endswith(";base64") or not comma:
        raise bad_reference(index, "must be a data URL such as data:audio/wav;base64,<the clip in base64>")
    try:
        clip = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_reference(index, "the data URL's payload is not valid base64") from None
    if not clip:
        raise bad_reference(index, "the clip is empty")
    return clip


def check_known_speakers(names: tuple[str, ...], references: tuple[str, ...]) -> tuple[tuple[str, bytes], ...]:
    """Pairs of (name, clip bytes); raises RequestError saying which name or reference is wrong."""
    if len(names) != len(references):
        message = (
            f"known_speaker_names has {len(names)} names but {PARAM} has {len(references)} clips: "
            "give one reference clip per name"
        )
        raise RequestError(Reason.BAD_OPTION, message, "known_speaker_names" if names else PARAM)
    if len(names) > MAX_KNOWN_SPEAKERS:
        message = f"at most {MAX_KNOWN_SPEAKERS} known speakers, not {len(names)}"
        raise RequestError(Reason.BAD_OPTION, message, "known_speaker_names")
    if len({name.strip() for name in names}) != len(names) or not all(name.strip() for name in names):
        raise RequestError(
            Reason.BAD_OPTION, "known_speaker_names must be distinct and not blank", "known_speaker_names"
        )
    pairs = enumerate(zip(names, references, strict=True))
    return tuple((name.strip(), clip_bytes(index, reference)) for index, (name, reference) in pairs)


async def decode_known_speakers(
    options: TranscriptionOptions, clips: tuple[tuple[str, bytes], ...], folder: Path, stem: str, timeout: float
) -> TranscriptionOptions:
    """`options` with the clips decoded into its known speakers; the temp files are removed whatever happens."""
    if not clips:
        return options
    speakers = []
    for index, (name, clip) in enumerate(clips):
        source, waveform = folder / f"{stem}.reference{index}", folder / f"{stem}.reference{index}.f32"
        try:
            source.write_bytes(clip)
            try:
                seconds = await decode_upload(source, waveform, timeout, MAX_REFERENCE_SECONDS)
            except RequestError as error:
                raise bad_reference(index, f"not usable audio: {error.error.message}") from None
            if seconds < MIN_REFERENCE_SECONDS:
                raise bad_reference(index, f"the clip is {seconds:.2f} s long; a reference needs 2 to 10 s of speech")
            samples = np.fromfile(waveform, dtype=WAVEFORM_DTYPE).tobytes()
        finally:
            source.unlink(missing_ok=True)
            waveform.unlink(missing_ok=True)
        speakers.append(KnownSpeaker(name, samples))
    diarization = replace(options.diarization or DiarizationOptions(), known_speakers=tuple(speakers))
    return replace(options, diarization=diarization)
