"""The typed forms of every upload route: validation, defaults, aliases, and the OpenAPI they describe."""

from __future__ import annotations

import pytest

from app.contract import LanguageDetection, Reason, TranscriptionOptions, VadParameters
from app.web.errors import RequestError
from app.web.forms import (
    DetectLanguageForm,
    NativeTranscribeForm,
    OpenAITranscriptionForm,
    OpenAITranslationForm,
    ServedModel,
    UploadForm,
)
from app.web.schema import form_schema
from app.web.uploads import Upload

SERVED = ServedModel(("whisper-1", "tiny.en"))
ENGLISH_ONLY = ServedModel(("whisper-1", "tiny.en"), english_only=True)


def form(kind: type[UploadForm], lists: dict[str, list[str]] | None = None, **fields: str) -> UploadForm:
    return kind.from_upload(Upload(fields=fields, lists=lists or {}), SERVED)


def refusal(kind: type[UploadForm], lists: dict[str, list[str]] | None = None, **fields: str) -> RequestError:
    with pytest.raises(RequestError) as raised:
        form(kind, lists, **fields)
    return raised.value


def test_native_defaults_transcribe_with_the_fallback_ladder() -> None:
    native = form(NativeTranscribeForm)
    assert native.work == TranscriptionOptions()
    assert native.response_format == "transcription_json" and not native.include_words


def test_native_fields_become_options() -> None:
    native = form(
        NativeTranscribeForm,
        language=" English ",
        task="translate",
        initial_prompt="Names: Ada",
        temperature="0.4",
        word_timestamps="yes",
        output="srt",
    )
    assert native.work == TranscriptionOptions("en", "translate", "Names: Ada", 0.4, True)
    assert native.response_format == "srt" and native.include_words


def test_prompt_wins_over_its_alias_and_response_format_over_output() -> None:
    native = form(NativeTranscribeForm, prompt="first", initial_prompt="second", response_format="vtt", output="srt")
    assert isinstance(native.work, TranscriptionOptions) and native.work.prompt == "first"
    assert native.response_format == "vtt"


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"language": "klingon"}, "language", "ISO-639-1"),
        ({"task": "summarise"}, "task", "task must be one of transcribe, translate"),
        ({"temperature": "hot"}, "temperature", "a number from 0 to 1"),
        ({"temperature": "1.5"}, "temperature", "a number from 0 to 1"),
        ({"word_timestamps": "maybe"}, "word_timestamps", "true or false"),
        ({"response_format": "docx"}, "response_format", "must be one of"),
    ],
)
def test_native_refusals_name_the_field(fields: dict[str, str], param: str, words: str) -> None:
    error = refusal(NativeTranscribeForm, **fields).error
    assert (error.reason, error.param) == (Reason.BAD_OPTION, param)
    assert words in error.message


def test_detect_language_takes_the_file_alone() -> None:
    assert form(DetectLanguageForm, language="fr").work == LanguageDetection()


def test_openai_model_is_required_and_must_be_served() -> None:
    missing = refusal(OpenAITranscriptionForm).error
    assert (missing.reason, missing.param, missing.message) == (
        Reason.BAD_OPTION,
        "model",
        "you must provide a model parameter",
    )
    unknown = refusal(OpenAITranscriptionForm, model="gpt-4o").error
    assert unknown.reason is Reason.UNKNOWN_MODEL and "whisper-1, tiny.en" in unknown.message


def test_openai_word_granularity_needs_verbose_json() -> None:
    lists = {"timestamp_granularities": ["word"]}
    error = refusal(OpenAITranscriptionForm, lists, model="whisper-1").error
    assert error.param == "timestamp_granularities"
    words = form(OpenAITranscriptionForm, lists, model="tiny.en", response_format="verbose_json")
    assert words.include_words and isinstance(words.work, TranscriptionOptions) and words.work.word_timestamps


def test_openai_unknown_granularity_is_refused() -> None:
    error = refusal(OpenAITranscriptionForm, {"timestamp_granularities": ["phoneme"]}, model="whisper-1").error
    assert error.param == "timestamp_granularities" and "phoneme" in error.message


def test_translations_ignore_language_and_translate() -> None:
    translation = form(OpenAITranslationForm, model="whisper-1", language="de")
    assert translation.work == TranscriptionOptions(task="translate")
    assert translation.response_format == "json"


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        (NativeTranscribeForm, {"language", "task", "prompt", "initial_prompt", "temperature", "word_timestamps",
                                "vad", "response_format", "output", "diarize", "speakers", "min_speakers",
                                "max_speakers"}),
        (DetectLanguageForm, set()),
        (OpenAITranscriptionForm, {"model", "language", "prompt", "response_format", "temperature",
                                   "timestamp_granularities[]", "chunking_strategy", "stream",
                                   "known_speaker_names[]", "known_speaker_references[]"}),
        (OpenAITranslationForm, {"model", "prompt", "response_format", "temperature", "chunking_strategy", "stream"}),
    ],
)  # fmt: skip
def test_the_openapi_form_is_the_models_fields_and_the_file(kind: type[UploadForm], fields: set[str]) -> None:
    schema = form_schema(kind)
    assert set(schema["properties"]) == fields | {"file"}
    assert schema["required"] == ["file"] and schema["properties"]["file"]["format"] == "binary"
    assert all("type" in field for field in schema["properties"].values())


def test_vad_follows_the_service_unless_the_request_says() -> None:
    assert form(NativeTranscribeForm).work == TranscriptionOptions(vad=None)
    assert form(NativeTranscribeForm, vad="false").work == TranscriptionOptions(vad=False)
    assert form(NativeTranscribeForm, vad="true").work == TranscriptionOptions(vad=True)
    assert refusal(NativeTranscribeForm, vad="maybe").error.param == "vad"


def test_openai_chunking_strategy_maps_onto_vad() -> None:
    assert form(OpenAITranscriptionForm, model="whisper-1").work == TranscriptionOptions(vad=None)
    auto = form(OpenAITranscriptionForm, model="whisper-1", chunking_strategy="auto").work
    assert auto == TranscriptionOptions(vad=True, vad_parameters=VadParameters())
    server_vad = '{"type": "server_vad", "threshold": 0.6, "prefix_padding_ms": 200, "silence_duration_ms": 700}'
    tuned = form(OpenAITranscriptionForm, model="whisper-1", chunking_strategy=server_vad).work
    assert isinstance(tuned, TranscriptionOptions)
    assert tuned.vad and tuned.vad_parameters == VadParameters(threshold=0.6, speech_pad_ms=200, min_silence_ms=700)
    # OpenAI's clients send the object as bracketed fields
    bracketed = form(
        OpenAITranscriptionForm,
        model="whisper-1",
        **{"chunking_strategy[type]": "server_vad", "chunking_strategy[threshold]": "0.7"},
    ).work
    assert isinstance(bracketed, TranscriptionOptions) and bracketed.vad_parameters == VadParameters(threshold=0.7)
    for wrong in ("manual", '{"type": "semantic_vad"}', '{"type": "server_vad", "threshold": 2}', "{"):
        assert refusal(OpenAITranscriptionForm, model="whisper-1", chunking_strategy=wrong).error.param == (
            "chunking_strategy"
        )


def test_streaming_is_refused_in_words_not_ignored() -> None:
    assert form(OpenAITranscriptionForm, model="whisper-1", stream="false").stream is False
    error = refusal(OpenAITranscriptionForm, model="whisper-1", stream="true").error
    assert error.param == "stream" and "not supported" in error.message


NUMBERS_NO_RECORDING_NEEDS = ["Infinity", "-Infinity", "NaN", "1e999", "-1e999", "9" * 401, "-1"]


@pytest.mark.parametrize("number", NUMBERS_NO_RECORDING_NEEDS)
@pytest.mark.parametrize("key", ["threshold", "prefix_padding_ms", "silence_duration_ms"])
def test_server_vad_numbers_past_any_range_are_refused_naming_the_field(key: str, number: str) -> None:
    as_json = f'{{"type": "server_vad", "{key}": {number}}}'
    bracketed = {"chunking_strategy[type]": "server_vad", f"chunking_strategy[{key}]": number}
    for fields in ({"chunking_strategy": as_json}, bracketed):
        refused = refusal(OpenAITranscriptionForm, model="whisper-1", **fields)
        assert (refused.error.reason, refused.error.param) == (Reason.BAD_OPTION, "chunking_strategy")
        assert key in str(refused)


@pytest.mark.parametrize("number", NUMBERS_NO_RECORDING_NEEDS)
def test_temperatures_past_any_range_are_refused_naming_the_field(number: str) -> None:
    for kind, extra in ((NativeTranscribeForm, {}), (OpenAITranscriptionForm, {"model": "whisper-1"})):
        refused = refusal(kind, temperature=number, **extra)
        assert (refused.error.reason, refused.error.param) == (Reason.BAD_OPTION, "temperature")


def test_server_vad_takes_whole_milliseconds_up_to_a_minute() -> None:
    strategy = '{"type": "server_vad", "threshold": 0.25, "prefix_padding_ms": 0, "silence_duration_ms": 60000}'
    options = form(OpenAITranscriptionForm, model="whisper-1", chunking_strategy=strategy).work
    assert isinstance(options, TranscriptionOptions)
    assert options.vad_parameters == VadParameters(threshold=0.25, speech_pad_ms=0, min_silence_ms=60000)
    for wrong in ('"prefix_padding_ms": 1.5', '"silence_duration_ms": 60001', '"threshold": true'):
        strategy = f'{{"type": "server_vad", {wrong}}}'
        assert refusal(OpenAITranscriptionForm, model="whisper-1", chunking_strategy=strategy).error.param == (
            "chunking_strategy"
        )


@pytest.mark.parametrize(
    ("kind", "fields", "param"),
    [
        (NativeTranscribeForm, {"language": "fr"}, "language"),
        (NativeTranscribeForm, {"task": "translate"}, "model"),
        (OpenAITranscriptionForm, {"model": "whisper-1", "language": "de"}, "language"),
        (OpenAITranslationForm, {"model": "whisper-1"}, "model"),
    ],
)
def test_an_english_only_model_refuses_other_languages_and_translation_at_once(
    kind: type[UploadForm], fields: dict[str, str], param: str
) -> None:
    with pytest.raises(RequestError) as raised:
        kind.from_upload(Upload(fields=fields), ENGLISH_ONLY)
    assert (raised.value.error.reason, raised.value.error.param) == (Reason.BAD_OPTION, param)
    assert "tiny.en is English-only" in str(raised.value)
    english = {**fields, "language": "en"} if "language" in fields else None
    if english is not None:
        assert kind.from_upload(Upload(fields=english), ENGLISH_ONLY).work.language == "en"  # type: ignore[union-attr]
