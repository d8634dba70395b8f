"""The contract between the HTTP processes and the model worker: everything that crosses LitServe's queue.

Both sides import this module and nothing of each other's. What travels is a path to a waveform file
(never the upload's bytes) with the work asked of it; what comes back is an outcome with its timing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

# the waveform file the HTTP side writes and the worker reads: raw 16 kHz mono samples, no header
WAVEFORM_DTYPE = np.float32
# openai-whisper transcribe()'s tasks
TASKS = ("transcribe", "translate")
# the audio every waveform file holds, and the mel hop: whisper.audio's values, so the web side needs no whisper import
SAMPLE_RATE = 16000
HOP_LENGTH = 160
# the languages Whisper knows, code -> English name (whisper.tokenizer.LANGUAGES; a unit test keeps them equal)
LANGUAGES: dict[str, str] = {
    "en": "english",
    "zh": "chinese",
    "de": "german",
    "es": "spanish",
    "ru": "russian",
    "ko": "korean",
    "fr": "french",
    "ja": "japanese",
    "pt": "portuguese",
    "tr": "turkish",
    "pl": "polish",
    "ca": "catalan",
    "nl": "dutch",
    "ar": "arabic",
    "sv": "swedish",
    "it": "italian",
    "id": "indonesian",
    "hi": "hindi",
    "fi": "finnish",
    "vi": "vietnamese",
    "he": "hebrew",
    "uk": "ukrainian",
    "el": "greek",
    "ms": "malay",
    "cs": "czech",
    "ro": "romanian",
    "da": "danish",
    "hu": "hungarian",
    "ta": "tamil",
    "no": "norwegian",
    "th": "thai",
    "ur": "urdu",
    "hr": "croatian",
    "bg": "bulgarian",
    "lt": "lithuanian",
    "la": "latin",
    "mi": "maori",
    "ml": "malayalam",
    "cy": "welsh",
    "sk": "slovak",
    "te": "telugu",
    "fa": "persian",
    "lv": "latvian",
    "bn": "bengali",
    "sr": "serbian",
    "az": "azerbaijani",
    "sl": "slovenian",
    "kn": "kannada",
    "et": "estonian",
    "mk": "macedonian",
    "br": "breton",
    "eu": "basque",
    "is": "icelandic",
    "hy": "armenian",
    "ne": "nepali",
    "mn": "mongolian",
    "bs": "bosnian",
    "kk": "kazakh",
    "sq": "albanian",
    "sw": "swahili",
    "gl": "galician",
    "mr": "marathi",
    "pa": "punjabi",
    "si": "sinhala",
    "km": "khmer",
    "sn": "shona",
    "yo": "yoruba",
    "so": "somali",
    "af": "afrikaans",
    "oc": "occitan",
    "ka": "georgian",
    "be": "belarusian",
    "tg": "tajik",
    "sd": "sindhi",
    "gu": "gujarati",
    "am": "amharic",
    "yi": "yiddish",
    "lo": "lao",
    "uz": "uzbek",
    "fo": "faroese",
    "ht": "haitian creole",
    "ps": "pashto",
    "tk": "turkmen",
    "nn": "nynorsk",
    "mt": "maltese",
    "sa": "sanskrit",
    "lb": "luxembourgish",
    "my": "myanmar",
    "bo": "tibetan",
    "tl": "tagalog",
    "mg": "malagasy",
    "as": "assamese",
    "tt": "tatar",
    "haw": "hawaiian",
    "ln": "lingala",
    "ha": "hausa",
    "ba": "bashkir",
    "jw": "javanese",
    "su": "sundanese",
    "yue": "cantonese",
}
# a language's English name, or another name it goes by, -> its code (whisper.tokenizer.TO_LANGUAGE_CODE)
TO_LANGUAGE_CODE: dict[str, str] = {
    **{name: code for code, name in LANGUAGES.items()},
    "burmese": "my",
    "valencian": "ca",
    "flemish": "nl",
    "haitian": "ht",
    "letzeburgesch": "lb",
    "pushto": "ps",
    "panjabi": "pa",
    "moldavian": "ro",
    "moldovan": "ro",
    "sinhalese": "si",
    "castilian": "es",
    "mandarin": "zh",
}
# transcribe()'s temperature ladder: a window that fails its quality checks is decoded again, hotter
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


class Reason(str, Enum):
    """Why one request failed; the value is the `reason` clients and metrics see."""

    EMPTY_UPLOAD = "empty_upload"
    MISSING_FILE = "missing_file"
    BAD_FORM = "bad_form"
    UNREADABLE_AUDIO = "unreadable_audio"
    NO_AUDIO = "no_audio"
    UNSUPPORTED_FORMAT = "unsupported_format"
    AUDIO_TOO_SHORT = "audio_too_short"
    AUDIO_TOO_LONG = "audio_too_long"
    UPLOAD_TOO_LARGE = "upload_too_large"
    UNAUTHORIZED = "unauthorized"
    OVERLOADED = "overloaded"
    UNAVAILABLE = "unavailable"
    BAD_OPTION = "bad_option"
    UNKNOWN_MODEL = "unknown_model"
    TIMEOUT = "timeout"
    STORAGE_FULL = "storage_full"
    INFERENCE_FAILED = "inference_failed"
    INVALID_SAMPLES = "invalid_samples"
    UPLOAD_TOO_SLOW = "upload_too_slow"
    HEADERS_TOO_LARGE = "headers_too_large"
    BAD_REQUEST = "bad_request"
    # the jobs API's own answers (never from a worker): no such job for this key, no result yet
    JOB_NOT_FOUND = "job_not_found"
    JOB_NOT_DONE = "job_not_done"
    # the job store (WHISPER_JOBS_DB, WHISPER_JOBS_DIR) cannot be read or written
    STORE_UNAVAILABLE = "store_unavailable"


@dataclass(frozen=True)
class ItemError:
    """One request's failure, carried as a result so the rest of its batch is unaffected."""

    reason: Reason
    message: str
    # the request field at fault, where there is one (OpenAI's error shape reports it)
    param: str | None = None


@dataclass(frozen=True)
class VadParameters:
    """How voice activity detection tells speech from silence (Silero's names; OpenAI's server_vad maps here)."""

    # probability above which a 32 ms chunk is speech (server_vad `threshold`)
    threshold: float = 0.5
    # silence shorter than this does not end speech (server_vad `silence_duration_ms`)
    min_silence_ms: int = 1000
    # audio kept before and after each stretch of speech (server_vad `prefix_padding_ms`)
    speech_pad_ms: int = 400
    # shorter bursts (clicks, coughs) are not speech
    min_speech_ms: int = 250


@dataclass(frozen=True)
class KnownSpeaker:
    """A name and a short clip of that voice (16 kHz mono float32 samples, as bytes so options stay hashable)."""

    name: str
    samples: bytes


@dataclass(frozen=True)
class DiarizationOptions:
    """Who spoke when: how many speakers to expect, and the voices to name."""

    # exactly this many speakers; None: as many as the voices show, within min/max
    speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    # clusters nearest these voices take their names; the others are A, B, ...
    known_speakers: tuple[KnownSpeaker, ...] = ()


@dataclass(frozen=True)
class TranscriptionOptions:
    """What one request asks of the model; requests with equal decoding options share one decode."""

    # ISO code such as "en"; None detects it from the first 30 s
    language: str | None = None
    # "transcribe" keeps the spoken language, "translate" produces English
    task: str = "transcribe"
    # text that conditions every window of the request (names, spelling, style)
    prompt: str | None = None
    # None or 0: greedy with transcribe()'s fallback ladder; above 0: sample at exactly that temperature
    temperature: float | None = None
    # time each word by cross-attention alignment (one extra decoder pass per window)
    word_timestamps: bool = False
    # voice activity detection before windowing: None follows the service's WHISPER_VAD, False skips it
    vad: bool | None = None
    # how VAD decides, where the request said (OpenAI's chunking_strategy); None: the defaults
    vad_parameters: VadParameters | None = None
    # label each segment with its speaker (segments split where the speaker changes); None: no diarization
    diarization: DiarizationOptions | None = None

    @property
    def temperatures(self) -> tuple[float, ...]:
        return (self.temperature,) if self.temperature else TEMPERATURES


def english_only_refusal(options: TranscriptionOptions, model_name: str) -> ItemError | None:
    """What an English-only model cannot do (hear another language, translate), refused instead of guessed."""
    if options.task == "translate":
        message = f"model {model_name} is English-only: it cannot translate; serve a multilingual model"
        return ItemError(Reason.BAD_OPTION, message, "model")
    if options.language not in (None, "en"):
        message = (
            f"model {model_name} is English-only: language {options.language!r} is not supported; "
            "send language=en or none"
        )
        return ItemError(Reason.BAD_OPTION, message, "language")
    return None


@dataclass(frozen=True)
class LanguageDetection:
    """A request for the spoken language of the first 30 s, answered from the batch's encoder pass."""


@dataclass(frozen=True)
class SpeakerLabelling:
    """Speakers for a transcript made window by window (a job's): the whole file diarized at once, so one voice
    keeps one label across every window; the outcome is the transcript with its segments labelled."""

    transcript: Transcript
    diarization: DiarizationOptions


# what a request may ask of the worker
Work = TranscriptionOptions | LanguageDetection | SpeakerLabelling


# a QueuedRequest's priority: the worker admits higher first (live speech ahead of uploads and job windows)
NORMAL_PRIORITY = 0
LIVE_PRIORITY = 1


@dataclass(frozen=True)
class QueuedRequest:
    """What the HTTP process puts on the worker queue: a waveform file on the tmpfs and the work asked of it."""

    waveform_path: str
    work: Work
    submitted_at: float  # time.monotonic(), which is system-wide on Linux
    # someone waits on it live (a realtime session's utterance): its windows go ahead of those already waiting
    priority: int = NORMAL_PRIORITY


@dataclass(frozen=True)
class Word:
    """One word with its times (from cross-attention alignment) and the model's confidence."""

    word: str
    start: float
    end: float
    probability: float


@dataclass(frozen=True)
class Segment:
    """A stretch of speech with times relative to the start of the whole file."""

    start: float
    end: float
    text: str
    tokens: tuple[int, ...]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    # first mel frame of the window this segment came from, as transcribe() reports it
    seek: int = 0
    words: tuple[Word, ...] = ()
    # who said it, where the request asked for diarization: a letter (A, B, ...) or a known speaker's name
    speaker: str | None = None


@dataclass
class Transcript:
    """The stitched result of one request."""

    text: str
    language: str
    duration: float
    segments: list[Segment] = field(default_factory=list)


@dataclass(frozen=True)
class LanguageGuess:
    """The most likely language and the top candidates, as (code, probability) pairs."""

    language: str
    probability: float
    candidates: tuple[tuple[str, float], ...]


# what the worker answers for one request
Outcome = Transcript | LanguageGuess | ItemError


@dataclass(frozen=True)
class PassStatistics:
    """What one model pass did, returned by the engine with its results (never read back afterwards)."""

    # 30 s windows encoded: every window of every transcription, one per language detection
    windows: int = 0
    # seconds of audio in the pass's requests
    audio_seconds: float = 0.0

    def __add__(self, other: PassStatistics) -> PassStatistics:
        return PassStatistics(self.windows + other.windows, self.audio_seconds + other.audio_seconds)


@dataclass(frozen=True)
class WorkerTiming:
    """What only the model worker knows about one request's model pass, sent back beside its outcome."""

    started_at: float  # time.monotonic() as the pass began; system-wide on Linux, so comparable across processes
    inference_seconds: float
    batch_size: int


@dataclass(frozen=True)
class Reported:
    """A worker's outcome for one request, with the timing of the pass that produced it."""

    outcome: Outcome
    timing: WorkerTiming


def read_waveform(path: Path) -> np.ndarray:
    """The samples of a waveform file written by the HTTP side's decoder."""
    return np.fromfile(path, dtype=WAVEFORM_DTYPE)
