"""One real service process for the integration tests, and the audio they send it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service import ServiceProcess
from tests.speech import SENTENCES, convert, long_speech, speak

# long enough for requests sent together to meet in one batch on a slow CI machine
TEST_BATCH_TIMEOUT = "1.0"


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess(
        tmp_path_factory.mktemp("service"),
        model_cache_dir,
        WHISPER_MAX_BATCH_SIZE="8",
        WHISPER_BATCH_TIMEOUT=TEST_BATCH_TIMEOUT,
    ).start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audio")


@pytest.fixture(scope="session")
def fox_wav(audio_dir: Path) -> Path:
    return speak(SENTENCES[0], audio_dir / "fox.wav")


@pytest.fixture(scope="session")
def five_second_clips(audio_dir: Path) -> list[Path]:
    """Eight different spoken clips of about five seconds each."""
    return [speak(sentence, audio_dir / f"clip{i}.wav") for i, sentence in enumerate(SENTENCES)]


@pytest.fixture(scope="session")
def minute_long_wav(audio_dir: Path) -> Path:
    folder = audio_dir / "long"
    folder.mkdir()
    return long_speech(folder / "long.wav", minimum_seconds=65)


@pytest.fixture(scope="session")
def fox_mp3(fox_wav: Path) -> Path:
    return convert(fox_wav, fox_wav.with_suffix(".mp3"))


@pytest.fixture(scope="session")
def fox_ogg(fox_wav: Path) -> Path:
    return convert(fox_wav, fox_wav.with_suffix(".ogg"), "-c:a", "libvorbis")
