"""OpenAI's realtime transcription protocol: the session configuration, its two update dialects, and the events.

Both dialects are read: the GA `session.update` with `session.type: "transcription"` (answered with
`session.updated`) and the beta `transcription_session.update` (answered with `transcription_session.updated`);
each answer shows the whole effective configuration in the dialect it was asked in.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from app.contract import LANGUAGES, TO_LANGUAGE_CODE

Event = dict[str, Any]

# input formats by their GA names, with the beta names that mean the same
PCM16 = "audio/pcm"
ULAW = "audio/pcmu"
ALAW = "audio/pcma"
BETA_FORMATS = {"pcm16": PCM16, "g711_ulaw": ULAW, "g711_alaw": ALAW}
# OpenAI's PCM is 24 kHz only; G.711 is 8 kHz by definition
PCM16_RATE = 24_000
# ranges a server_vad setting may take (OpenAI states none for the durations; these keep a session sane)
MAX_PADDING_MS = 10_000
MAX_SILENCE_MS = 10_000


class ProtocolError(Exception):
    """A client event this server cannot honour: answered with an `error` event, and the session lives on."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


@dataclass(frozen=True)
class ServerVad:
    """OpenAI's `server_vad` turn detection, with its defaults."""

    # speech probability (Silero's) from which a 32 ms chunk is speech
    threshold: float = 0.5
    # audio kept before the detected start of speech
    prefix_padding_ms: int = 300
    # silence that ends an utterance
    silence_duration_ms: int = 500


@dataclass(frozen=True)
class SessionConfig:
    """What a live session does with its audio; changed by session updates, field by field."""

    input_format: str = PCM16
    # the name the client asked for ("whisper-1" or the served model's name)
    model: str = "whisper-1"
    language: str | None = None
    prompt: str | None = None
    # None: the client commits each utterance itself
    turn_detection: ServerVad | None = ServerVad()

    @property
    def input_rate(self) -> int:
        return PCM16_RATE if self.input_format == PCM16 else 8_000


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def _mapping(value: object, param: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ProtocolError("invalid_value", f"{param} must be an object", param)
    return value


def _language(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or TO_LANGUAGE_CODE.get(value.lower(), value.lower()) not in LANGUAGES:
        raise ProtocolError(
            "invalid_value", f"language must be an ISO-639-1 code such as 'en', not {value!r}", "language"
        )
    return TO_LANGUAGE_CODE.get(value.lower(), value.lower())


def _number(settings: Mapping[str, Any], name: str, low: float, high: float, default: float) -> float:
    value = settings.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ProtocolError("invalid_value", f"turn_detection.{name} must be a number from {low:g} to {high:g}", name)
    return float(value)


def _turn_detection(value: object, current: ServerVad | None) -> ServerVad | None:
    if value is None:
        return None
    settings = _mapping(value, "turn_detection")
    kind = settings.get("type", "server_vad")
    if kind != "server_vad":
        raise ProtocolError(
            "unsupported_turn_detection",
            f"turn_detection type {kind!r} is not offered here: use 'server_vad', or null to commit yourself",
            "turn_detection.type",
        )
    base = current or ServerVad()
    return ServerVad(
        threshold=_number(settings, "threshold", 0.0, 1.0, base.threshold),
        prefix_padding_ms=int(_number(settings, "prefix_padding_ms", 0, MAX_PADDING_MS, base.prefix_padding_ms)),
        silence_duration_ms=int(_number(settings, "silence_duration_ms", 0, MAX_SILENCE_MS, base.silence_duration_ms)),
    )


def _transcription(config: SessionConfig, value: object, served_models: tuple[str, ...]) -> SessionConfig:
    if value is None:
        raise ProtocolError(
            "invalid_value", "transcription cannot be turned off: this server only transcribes", "transcription"
        )
    settings = _mapping(value, "transcription")
    model = settings.get("model", config.model) or config.model
    if model not in served_models:
        raise ProtocolError(
            "unknown_model", f"model {model!r} is not served here; use one of: {', '.join(served_models)}", "model"
        )
    prompt = settings.get("prompt", config.prompt)
    if prompt is not None and not isinstance(prompt, str):
        raise ProtocolError("invalid_value", "prompt must be a string", "prompt")
    language = _language(settings["language"]) if "language" in settings else config.language
    return replace(config, model=model, language=language, prompt=prompt or None)


def _refuse_noise_reduction(value: object) -> None:
    if value is not None:
        raise ProtocolError(
            "unsupported_noise_reduction",
            "noise reduction is not offered here: leave it out or null",
            "noise_reduction",
        )


def apply_ga_update(config: SessionConfig, session: object, served_models: tuple[str, ...]) -> SessionConfig:
    """`session.update`'s session object (type "transcription") applied to `config`; raises ProtocolError."""
    session = _mapping(session, "session")
    kind = session.get("type", "transcription")
    if kind != "transcription":
        raise ProtocolError(
            "unsupported_session_type",
            f"session type {kind!r} is not offered here: this server has transcription sessions only",
            "session.type",
        )
    audio_input = _mapping(_mapping(session.get("audio", {}), "session.audio").get("input", {}), "session.audio.input")
    if "format" in audio_input:
        form = _mapping(audio_input["format"], "session.audio.input.format")
        name = form.get("type", PCM16)
        if name not in (PCM16, ULAW, ALAW):
            raise ProtocolError(
                "invalid_value", f"audio format {name!r} is not one of {PCM16}, {ULAW}, {ALAW}", "format"
            )
        if name == PCM16 and form.get("rate", PCM16_RATE) != PCM16_RATE:
            raise ProtocolError("invalid_value", f"{PCM16} is {PCM16_RATE} Hz only", "format.rate")
        config = replace(config, input_format=name)
    if "transcription" in audio_input:
        config = _transcription(config, audio_input["transcription"], served_models)
    if "turn_detection" in audio_input:
        config = replace(config, turn_detection=_turn_detection(audio_input["turn_detection"], config.turn_detection))
    _refuse_noise_reduction(audio_input.get("noise_reduction"))
    return config


def apply_beta_update(config: SessionConfig, session: object, served_models: tuple[str, ...]) -> SessionConfig:
    """`transcription_session.update`'s session object applied to `config`; raises ProtocolError."""
    session = _mapping(session, "session")
    if "input_audio_format" in session:
        name = session["input_audio_format"]
        if name not in BETA_FORMATS:
            raise ProtocolError(
                "invalid_value", f"input_audio_format must be one of {', '.join(BETA_FORMATS)}", "input_audio_format"
            )
        config = replace(config, input_format=BETA_FORMATS[name])
    if "input_audio_transcription" in session:
        config = _transcription(config, session["input_audio_transcription"], served_models)
    if "turn_detection" in session:
        config = replace(config, turn_detection=_turn_detection(session["turn_detection"], config.turn_detection))
    _refuse_noise_reduction(session.get("input_audio_noise_reduction"))
    return config


def _turn_detection_object(config: SessionConfig) -> dict[str, Any] | None:
    vad = config.turn_detection
    if vad is None:
        return None
    return {
        "type": "server_vad",
        "threshold": vad.threshold,
        "prefix_padding_ms": vad.prefix_padding_ms,
        "silence_duration_ms": vad.silence_duration_ms,
    }


def _transcription_object(config: SessionConfig) -> dict[str, Any]:
    return {"model": config.model, "language": config.language, "prompt": config.prompt or ""}


def ga_session(session_id: str, config: SessionConfig) -> dict[str, Any]:
    form: dict[str, Any] = {"type": config.input_format}
    if config.input_format == PCM16:
        form["rate"] = PCM16_RATE
    audio_input = {
        "format": form,
        "noise_reduction": None,
        "transcription": _transcription_object(config),
        "turn_detection": _turn_detection_object(config),
    }
    return {"id": session_id, "object": "realtime.transcription_session", "type": "transcription",
            "audio": {"input": audio_input}, "include": None}  # fmt: skip


def beta_session(session_id: str, config: SessionConfig) -> dict[str, Any]:
    beta_format = next(name for name, ga in BETA_FORMATS.items() if ga == config.input_format)
    return {"id": session_id, "object": "realtime.transcription_session", "modalities": ["text"],
            "input_audio_format": beta_format, "input_audio_transcription": _transcription_object(config),
            "turn_detection": _turn_detection_object(config), "input_audio_noise_reduction": None,
            "include": None}  # fmt: skip


def event(kind: str, **fields: Any) -> Event:
    return {"type": kind, "event_id": new_id("event"), **fields}


def error_event(error: ProtocolError, client_event_id: object = None) -> Event:
    details = {"type": "invalid_request_error", "code": error.code, "message": error.message, "param": error.param,
               "event_id": client_event_id if isinstance(client_event_id, str) else None}  # fmt: skip
    return event("error", error=details)


def completed_event(item_id: str, transcript: str, seconds: float) -> Event:
    return event(
        "conversation.item.input_audio_transcription.completed",
        item_id=item_id,
        content_index=0,
        transcript=transcript,
        usage={"type": "duration", "seconds": round(seconds, 3)},
    )


def failed_event(item_id: str, code: str, message: str) -> Event:
    return event(
        "conversation.item.input_audio_transcription.failed",
        item_id=item_id,
        content_index=0,
        error={"type": "transcription_error", "code": code, "message": message, "param": None},
    )


def delta_event(item_id: str, delta: str) -> Event:
    return event("conversation.item.input_audio_transcription.delta", item_id=item_id, content_index=0, delta=delta)
