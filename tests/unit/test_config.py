"""Settings: defaults, environment overrides, and start-up errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import ConfigurationError, Settings, litserve_devices, load_settings


def test_defaults_are_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WHISPER_PORT", "WHISPER_MAX_BATCH_SIZE", "WHISPER_TMP_DIR", "WHISPER_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.port == 8000
    assert settings.device == "auto"
    assert settings.max_batch_size >= 1
    assert settings.batch_timeout < settings.request_timeout
    assert settings.tmp_dir.name == "whisper-uploads"


def test_tmp_dir_defaults_to_tmpfs_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WHISPER_TMP_DIR", raising=False)
    if not Path("/dev/shm").is_dir():
        pytest.fail("this check needs /dev/shm, which every Linux CI machine has")
    assert load_settings().tmp_dir == Path("/dev/shm/whisper-uploads")


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WHISPER_PORT", "9123")
    monkeypatch.setenv("WHISPER_MAX_BATCH_SIZE", "32")
    monkeypatch.setenv("WHISPER_BATCH_TIMEOUT", "0.2")
    monkeypatch.setenv("WHISPER_TMP_DIR", str(tmp_path))
    monkeypatch.setenv("WHISPER_DEVICE", "cpu")
    monkeypatch.setenv("WHISPER_MODEL", "tiny")
    settings = load_settings()
    assert (settings.port, settings.max_batch_size, settings.batch_timeout) == (9123, 32, 0.2)
    assert settings.tmp_dir == tmp_path
    assert (settings.device, settings.model) == ("cpu", "tiny")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("WHISPER_PORT", "70000"),
        ("WHISPER_PORT", "eighty"),
        ("WHISPER_DEVICE", "tpu"),
        ("WHISPER_MAX_BATCH_SIZE", "0"),
        ("WHISPER_BATCH_TIMEOUT", "-1"),
        ("WHISPER_WORKERS_PER_DEVICE", "0"),
        ("WHISPER_REQUEST_TIMEOUT", "0"),
        ("WHISPER_DEVICES", "gpu0"),
    ],
)
def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert variable in str(raised.value)
    assert value in str(raised.value)


def test_batch_timeout_must_stay_below_request_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WHISPER_BATCH_TIMEOUT", "5")
    monkeypatch.setenv("WHISPER_REQUEST_TIMEOUT", "2")
    with pytest.raises(ConfigurationError, match=r"WHISPER_BATCH_TIMEOUT.*WHISPER_REQUEST_TIMEOUT"):
        load_settings()


def test_bad_value_stops_the_real_entry_point(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin", "WHISPER_PORT": "not-a-port", "HOME": str(tmp_path)}
    finished = subprocess.run([sys.executable, "-m", "app"], env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode != 0
    assert "WHISPER_PORT" in finished.stderr


@pytest.mark.parametrize(
    ("value", "expected"), [("auto", "auto"), ("2", 2), ("0", [0]), ("0,2", [0, 2]), ("1,3", [1, 3])]
)
def test_devices_map_onto_litserve(value: str, expected: object) -> None:
    assert litserve_devices(Settings(devices=value).devices) == expected
