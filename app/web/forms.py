"""Form fields shared by every upload route, and the `Plan` each route hands to the upload lifecycle.

Each parser raises RequestError naming the field, so both wire protocols report bad options alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from fastapi import Response
from whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE

from app.errors import ItemError, Reason, RequestError
from app.worker.engine import LanguageDetection, LanguageGuess, TranscriptionOptions
from app.worker.segments import Transcript

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class Plan:
    """What a route asks of the model worker, and how it turns the worker's answer into a response."""

    work: TranscriptionOptions | LanguageDetection
    render: Callable[[Transcript | LanguageGuess], Response]


ErrorRenderer = Callable[[ItemError], Response]


def bad_option(param: str, message: str) -> RequestError:
    return RequestError(Reason.BAD_OPTION, message, param=param)


def language_field(fields: Mapping[str, str], name: str = "language") -> str | None:
    """An ISO code ("en") or English name ("english"); empty means detect."""
    value = (fields.get(name) or "").strip().lower()
    if not value:
        return None
    code = TO_LANGUAGE_CODE.get(value, value)
    if code not in LANGUAGES:
        raise bad_option(name, f"{name} must be an ISO-639-1 code such as 'en', not {value!r}")
    return code


def temperature_field(fields: Mapping[str, str], name: str = "temperature") -> float | None:
    value = (fields.get(name) or "").strip()
    if not value:
        return None
    try:
        temperature = float(value)
    except ValueError:
        raise bad_option(name, f"{name} must be a number between 0 and 1, not {value!r}") from None
    if not 0.0 <= temperature <= 1.0:
        raise bad_option(name, f"{name} must be between 0 and 1, not {temperature:g}")
    return temperature


def boolean_field(fields: Mapping[str, str], name: str) -> bool:
    value = (fields.get(name) or "").strip().lower()
    if value not in TRUE_WORDS + FALSE_WORDS:
        raise bad_option(name, f"{name} must be true or false, not {value!r}")
    return value in TRUE_WORDS


def choice_field(fields: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = (fields.get(name) or "").strip() or default
    if value not in choices:
        raise bad_option(name, f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def prompt_field(fields: Mapping[str, str], *names: str) -> str | None:
    """The first non-empty of `names` (routes accept historical aliases such as initial_prompt)."""
    for name in names:
        if value := (fields.get(name) or "").strip():
            return value
    return None
