"""The text fields of every upload route as typed models: validation, defaults and OpenAPI from one class each.

A field at fault raises RequestError naming it, so both wire protocols report bad options alike; the
audio part itself is streamed by app/web/uploads.py, never held here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any, ClassVar, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)

from app.contract import (
    LANGUAGES,
    TASKS,
    TO_LANGUAGE_CODE,
    DiarizationOptions,
    LanguageDetection,
    Reason,
    TranscriptionOptions,
    VadParameters,
    Work,
    english_only_refusal,
)
from app.web.errors import RequestError
from app.web.formats import RESPONSE_FORMATS, TRANSCRIPTION_JSON
from app.web.speaker_references import check_known_speakers
from app.web.uploads import Upload

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("", "0", "false", "no", "off")
# the name OpenAI clients send; any of them maps to the one model this service has loaded
OPENAI_MODEL_NAME = "whisper-1"
GRANULARITIES = ("segment", "word")
# the validation context key holding the ServedModel a request is checked against
SERVED = "served"
# the longest server_vad prefix_padding_ms and silence_duration_ms: a minute is past any window (30 s)
MAX_VAD_MILLISECONDS = 60_000


@dataclass(frozen=True)
class ServedModel:
    """The one model this service has loaded, as forms check requests against it."""

    # the names a client may ask for: OpenAI's alias and the loaded model's own name
    names: tuple[str, ...] = ()
    # an English-only model (tiny.en, ...) refuses other languages and translation at once, on every route
    english_only: bool = False

    @property
    def name(self) -> str:
        return self.names[-1] if self.names else "the loaded model"


# the most speakers a request may ask diarization for
MAX_SPEAKERS = 32


def bad_option(param: str, message: str) -> RequestError:
    return RequestError(Reason.BAD_OPTION, message, param=param)


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def _language(value: object, info: ValidationInfo) -> str | None:
    """An ISO code ("en") or English name ("english"); empty means detect."""
    name = _text(value).lower()
    if not name:
        return None
    code = TO_LANGUAGE_CODE.get(name, name)
    if code not in LANGUAGES:
        field = str(info.field_name)
        raise bad_option(field, f"{field} must be an ISO-639-1 code such as 'en', not {name!r}")
    return code


def _temperature(value: object, info: ValidationInfo) -> float | None:
    text = _text(value)
    if not text:
        return None
    refusal = bad_option("temperature", f"temperature must be a number from 0 to 1, not {text[:40]!r}")
    try:
        temperature = float(text)
    except (ValueError, OverflowError):
        raise refusal from None
    # NaN fails every comparison, so the range is asked the way round that refuses it
    if not 0.0 <= temperature <= 1.0:
        raise refusal
    return temperature


def _boolean(value: object, info: ValidationInfo) -> bool:
    word = _text(value).lower()
    if word not in TRUE_WORDS + FALSE_WORDS:
        raise bad_option(str(info.field_name), f"{info.field_name} must be true or false, not {word!r}")
    return word in TRUE_WORDS


def _optional_boolean(value: object, info: ValidationInfo) -> bool | None:
    """true or false; empty leaves the decision to the service's default."""
    return _boolean(value, info) if _text(value) else None


def _chunking_strategy(value: object) -> VadParameters | None:
    """OpenAI's chunking_strategy: "auto", or a server_vad object (JSON) whose fields tune our VAD.

    Absent means the service's default (WHISPER_VAD); either given form turns VAD on for the request.
    """
    if isinstance(value, dict):
        strategy: object = value
    else:
        text = _text(value)
        if not text:
            return None
        if text == "auto":
            return VadParameters()
        try:
            strategy = json.loads(text)
        except json.JSONDecodeError:
            strategy = None
    if not isinstance(strategy, dict) or strategy.get("type") != "server_vad":
        raise bad_option("chunking_strategy", 'chunking_strategy must be "auto" or {"type": "server_vad", ...}')
    defaults = VadParameters()
    threshold = _server_vad_number(strategy, "threshold", defaults.threshold, whole=False)
    padding = _server_vad_number(strategy, "prefix_padding_ms", defaults.speech_pad_ms, whole=True)
    silence = _server_vad_number(strategy, "silence_duration_ms", defaults.min_silence_ms, whole=True)
    return replace(defaults, threshold=threshold, speech_pad_ms=int(padding), min_silence_ms=int(silence))


def _server_vad_number(strategy: dict[str, object], key: str, default: float, *, whole: bool) -> float:
    """One number of a server_vad object: finite and in range (JSON allows Infinity, 1e999 and 400 digits)."""
    if whole:
        allowed = f"a whole number of milliseconds from 0 to {MAX_VAD_MILLISECONDS}"
    else:
        allowed = "a number between 0 and 1 (exclusive)"
    value = strategy.get(key, default)
    refusal = bad_option("chunking_strategy", f"chunking_strategy {key} must be {allowed}, not {str(value)[:40]!r}")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise refusal
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise refusal from None
    if not math.isfinite(number):
        raise refusal
    if whole and (number != int(number) or not 0 <= number <= MAX_VAD_MILLISECONDS):
        raise refusal
    if not whole and not 0.0 < number < 1.0:
        raise refusal
    return number


def _speaker_count(value: object, info: ValidationInfo) -> int | None:
    text = _text(value)
    if not text:
        return None
    if not text.isdigit() or not 1 <= int(text) <= MAX_SPEAKERS:
        raise bad_option(str(info.field_name), f"{info.field_name} must be a whole number from 1 to {MAX_SPEAKERS}")
    return int(text)


def _no_streaming(value: object, info: ValidationInfo) -> bool:
    if _boolean(value, info):
        message = (
            "stream=true is not supported: this service decodes every 30 s window of a file in one batched pass, "
            "so no text is ready before the whole transcript; send stream=false"
        )
        raise bad_option("stream", message)
    return False


def _optional_text(value: object) -> str | None:
    return _text(value) or None


def one_of(choices: Sequence[str], default: str) -> BeforeValidator:
    """A field that takes one of `choices` (empty means `default`), refused with a message that lists them."""

    def validate(value: object, info: ValidationInfo) -> str:
        chosen = _text(value) or default
        if chosen not in choices:
            field = str(info.field_name)
            raise bad_option(field, f"{field} must be one of {', '.join(choices)}, not {chosen!r}")
        return chosen

    return BeforeValidator(validate)


def enum_schema(choices: Sequence[str]) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "enum": list(choices)})


Language = Annotated[
    str | None,
    BeforeValidator(_language),
    WithJsonSchema({"type": "string", "description": "ISO-639-1 code such as 'en' or a name; empty detects it"}),
]
Prompt = Annotated[
    str | None,
    BeforeValidator(_optional_text),
    WithJsonSchema({"type": "string", "description": "text that sets the style or vocabulary of the transcript"}),
]
Temperature = Annotated[
    float | None,
    BeforeValidator(_temperature),
    WithJsonSchema({"type": "number", "minimum": 0, "maximum": 1, "description": "0 or empty: greedy with fallback"}),
]
Flag = Annotated[bool, BeforeValidator(_boolean), WithJsonSchema({"type": "boolean"})]
OptionalFlag = Annotated[
    bool | None,
    BeforeValidator(_optional_boolean),
    WithJsonSchema({"type": "boolean", "description": "empty: the service's default"}),
]
ChunkingStrategy = Annotated[
    VadParameters | None,
    BeforeValidator(_chunking_strategy),
    WithJsonSchema(
        {
            "type": "string",
            "description": '"auto" or a JSON object {"type": "server_vad", "threshold", "prefix_padding_ms", '
            '"silence_duration_ms"}: voice activity detection before transcription',
        }
    ),
]
SpeakerCount = Annotated[
    int | None,
    BeforeValidator(_speaker_count),
    WithJsonSchema({"type": "integer", "minimum": 1, "maximum": 32, "description": "empty: as the voices show"}),
]
NoStreaming = Annotated[
    bool,
    BeforeValidator(_no_streaming),
    WithJsonSchema({"type": "boolean", "description": "must be false: responses are not streamed"}),
]
NATIVE_FORMATS = (TRANSCRIPTION_JSON, *RESPONSE_FORMATS)
Task = Annotated[str, one_of(TASKS, "transcribe"), enum_schema(TASKS)]
NativeFormat = Annotated[str, one_of(NATIVE_FORMATS, TRANSCRIPTION_JSON), enum_schema(NATIVE_FORMATS)]
OpenAIFormat = Annotated[str, one_of(RESPONSE_FORMATS, "json"), enum_schema(RESPONSE_FORMATS)]


class UploadForm(BaseModel):
    """The text fields of one route's multipart form; unknown fields are ignored, as OpenAI's API does."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    @classmethod
    def from_upload(cls, upload: Upload, served: ServedModel = ServedModel()) -> UploadForm:
        """Validate the form's text fields; raises RequestError naming the field at fault."""
        fields: dict[str, object] = {**upload.fields, **{f"{name}[]": values for name, values in upload.lists.items()}}
        try:
            return cls.model_validate(fields, context={SERVED: served})
        except ValidationError as error:
            problem = error.errors()[0]
            param = str(problem["loc"][0]) if problem["loc"] else None
            raise RequestError(Reason.BAD_OPTION, f"{param}: {problem['msg']}", param) from None

    @model_validator(mode="after")
    def _within_the_model(self, info: ValidationInfo) -> Self:
        served: ServedModel = (info.context or {}).get(SERVED, ServedModel())
        work = self.work
        refusal = english_only_refusal(work, served.name) if isinstance(work, TranscriptionOptions) else None
        if served.english_only and refusal is not None:
            raise RequestError(refusal.reason, refusal.message, refusal.param)
        return self

    @property
    def work(self) -> Work:
        return TranscriptionOptions()

    @property
    def include_words(self) -> bool:
        """Whether the response lists words (they are timed only when asked for)."""
        return False

    @property
    def output_format(self) -> str:
        """The response format a transcript is rendered in."""
        return TRANSCRIPTION_JSON

    @property
    def speaker_clips(self) -> tuple[tuple[str, bytes], ...]:
        """Known speakers' names and reference clips (still encoded), for diarization to name its clusters."""
        return ()


class NativeTranscribeForm(UploadForm):
    """POST /transcribe: this service's own fields, with the names whisper-asr-webservice clients send."""

    language: Language = None
    task: Task = "transcribe"
    prompt: Prompt = None
    initial_prompt: Prompt = Field(None, description="another name for prompt")
    temperature: Temperature = None
    word_timestamps: Flag = False
    vad: OptionalFlag = Field(None, description="voice activity detection: skip silence (default: WHISPER_VAD)")
    response_format: NativeFormat = TRANSCRIPTION_JSON
    output: Prompt = Field(None, description="another name for response_format")
    diarize: Flag = Field(False, description="label each segment with its speaker (split where the speaker changes)")
    speakers: SpeakerCount = Field(None, description="with diarize: exactly this many speakers")
    min_speakers: SpeakerCount = Field(None, description="with diarize: at least this many speakers")
    max_speakers: SpeakerCount = Field(None, description="with diarize: at most this many speakers")

    def model_post_init(self, context: Any) -> None:
        if self.min_speakers and self.max_speakers and self.min_speakers > self.max_speakers:
            raise bad_option("min_speakers", "min_speakers must not exceed max_speakers")

    @model_validator(mode="before")
    @classmethod
    def _output_alias(cls, fields: Any) -> Any:
        # "output" is whisper-asr-webservice's name for response_format; the first non-empty of the two wins
        if isinstance(fields, dict) and not _text(fields.get("response_format")) and _text(fields.get("output")):
            return {**fields, "response_format": fields["output"]}
        return fields

    @property
    def output_format(self) -> str:
        return self.response_format

    @property
    def work(self) -> Work:
        return TranscriptionOptions(
            language=self.language,
            task=self.task,
            prompt=self.prompt or self.initial_prompt,
            temperature=self.temperature,
            # speakers are assigned word by word, so diarization times the words
            word_timestamps=self.word_timestamps or self.diarize,
            vad=self.vad,
            diarization=DiarizationOptions(self.speakers, self.min_speakers, self.max_speakers)
            if self.diarize
            else None,
        )

    @property
    def include_words(self) -> bool:
        return self.word_timestamps


class DetectLanguageForm(UploadForm):
    """POST /detect-language: the file alone."""

    @property
    def work(self) -> Work:
        return LanguageDetection()


def _model_name(value: object, info: ValidationInfo) -> str:
    name = _text(value)
    if not name:
        raise bad_option("model", "you must provide a model parameter")
    served: tuple[str, ...] = (info.context or {}).get(SERVED, ServedModel()).names
    if name not in served:
        message = f"model {name!r} is not served here; use one of: {', '.join(served)}"
        raise RequestError(Reason.UNKNOWN_MODEL, message, "model")
    return name


ModelName = Annotated[
    str,
    BeforeValidator(_model_name),
    WithJsonSchema({"type": "string", "description": f"'{OPENAI_MODEL_NAME}' or the served model's name"}),
]


def _granularities(value: object) -> tuple[str, ...]:
    asked = tuple(value) if isinstance(value, list | tuple) else ()
    if unknown := set(asked) - set(GRANULARITIES):
        raise bad_option(
            "timestamp_granularities", f"timestamp_granularities must be among segment, word, not {sorted(unknown)}"
        )
    return asked or ("segment",)


Granularities = Annotated[
    tuple[str, ...],
    BeforeValidator(_granularities),
    WithJsonSchema({"type": "array", "items": {"type": "string", "enum": list(GRANULARITIES)}}),
]


class OpenAITranslationForm(UploadForm):
    """POST /v1/audio/translations, as OpenAI's reference describes it."""

    TASK: ClassVar[str] = "translate"
    # validated even when absent, so a missing model gets OpenAI's own wording
    model: ModelName = Field("", validate_default=True)
    prompt: Prompt = None
    response_format: OpenAIFormat = "json"
    temperature: Temperature = None
    chunking_strategy: ChunkingStrategy = None
    stream: NoStreaming = False

    def model_post_init(self, context: Any) -> None:
        if self.response_format == "diarized_json" and self.TASK == "translate":
            raise bad_option("response_format", "diarized_json is for transcriptions, not translations")

    @model_validator(mode="before")
    @classmethod
    def _bracketed_chunking_strategy(cls, fields: Any) -> Any:
        # OpenAI's clients send an object field as chunking_strategy[type]=server_vad, chunking_strategy[threshold]=...
        prefix = "chunking_strategy["
        if not isinstance(fields, dict) or not any(str(name).startswith(prefix) for name in fields):
            return fields
        strategy = {name[len(prefix) : -1]: value for name, value in fields.items() if name.startswith(prefix)}
        return {**fields, "chunking_strategy": strategy}

    @property
    def output_format(self) -> str:
        return self.response_format

    @property
    def vad(self) -> bool | None:
        """chunking_strategy given: VAD on with its parameters; absent: the service's default."""
        return None if self.chunking_strategy is None else True

    @property
    def work(self) -> Work:
        return TranscriptionOptions(
            task=self.TASK,
            prompt=self.prompt,
            temperature=self.temperature,
            vad=self.vad,
            vad_parameters=self.chunking_strategy,
        )


class OpenAITranscriptionForm(OpenAITranslationForm):
    """POST /v1/audio/transcriptions, as OpenAI's reference describes it."""

    TASK: ClassVar[str] = "transcribe"
    language: Language = None
    timestamp_granularities: Granularities = Field(("segment",), alias="timestamp_granularities[]")
    known_speaker_names: tuple[str, ...] = Field((), alias="known_speaker_names[]")
    known_speaker_references: tuple[str, ...] = Field((), alias="known_speaker_references[]")

    def model_post_init(self, context: Any) -> None:
        super().model_post_init(context)
        if "word" in self.timestamp_granularities and self.response_format != "verbose_json":
            raise bad_option("timestamp_granularities", "timestamp_granularities requires response_format=verbose_json")
        if (self.known_speaker_names or self.known_speaker_references) and not self.diarized:
            raise bad_option("known_speaker_names", "known speakers need response_format=diarized_json")
        check_known_speakers(self.known_speaker_names, self.known_speaker_references)

    @property
    def speaker_clips(self) -> tuple[tuple[str, bytes], ...]:
        return check_known_speakers(self.known_speaker_names, self.known_speaker_references)

    @property
    def include_words(self) -> bool:
        return "word" in self.timestamp_granularities

    @property
    def work(self) -> Work:
        return TranscriptionOptions(
            language=self.language,
            task=self.TASK,
            prompt=self.prompt,
            temperature=self.temperature,
            word_timestamps=self.include_words or self.diarized,
            vad=self.vad,
            vad_parameters=self.chunking_strategy,
            diarization=DiarizationOptions() if self.diarized else None,
        )

    @property
    def diarized(self) -> bool:
        return self.response_format == "diarized_json"
