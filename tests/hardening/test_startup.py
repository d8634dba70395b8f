"""Start-up refuses what would run silently wrong: a blank API key, a CUDA device that is not there.

Also the converted-model cache, whose key is the model's content: every clone and venv reuses one conversion.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from app.worker.loading import _cache_path
from harness.service import free_port

pytestmark = pytest.mark.integration

EXIT_SECONDS = 60


def start_up(tmp_path: Path, **env: str) -> tuple[int, str]:
    """Run `python -m app` with `env` until it exits, as it must with these settings: (status, output)."""
    environment = {**os.environ, "WHISPER_TMP_DIR": str(tmp_path / "uploads"), "WHISPER_PORT": str(free_port()), **env}
    service = subprocess.Popen(
        [sys.executable, "-m", "app"],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = service.communicate(timeout=EXIT_SECONDS)
    except subprocess.TimeoutExpired:
        # it started serving instead: stop it and everything it started
        os.killpg(service.pid, signal.SIGKILL)
        output, _ = service.communicate()
        return -1, output
    return service.returncode, output


@pytest.mark.parametrize("key", ["", "   "], ids=["empty", "spaces"])
def test_a_blank_api_key_stops_start_up_with_a_message(tmp_path: Path, key: str) -> None:
    status, output = start_up(tmp_path, WHISPER_API_KEY=key, WHISPER_DEVICE="cpu")
    assert status > 0, "it exited on its own, with a failure"
    assert "WHISPER_API_KEY is set but blank" in output, output[-2000:]


@pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import torch; assert not torch.cuda.is_available()"]).returncode != 0,
    reason="this host has a GPU",
)
def test_cuda_without_a_gpu_stops_start_up_naming_the_fix(tmp_path: Path) -> None:
    status, message = start_up(tmp_path, WHISPER_DEVICE="cuda")
    assert status > 0, "it exited on its own, with a failure"
    assert "WHISPER_DEVICE=cuda, but torch finds no working GPU" in message, message[-2000:]
    assert "nvidia-smi" in message and "WHISPER_DEVICE=auto or cpu" in message
    assert "num_api_servers" not in message


def model_folder(parent: Path, content: bytes, mtime: int) -> Path:
    folder = parent / "model"
    folder.mkdir(parents=True)
    (folder / "model.bin").write_bytes(content)
    os.utime(folder / "model.bin", (mtime, mtime))
    return folder


def test_the_conversion_cache_is_keyed_on_the_model_not_where_it_lies(tmp_path: Path) -> None:
    weights = os.urandom(3 * 2**20)
    cache = tmp_path / "cache"
    first = _cache_path(model_folder(tmp_path / "clone-a" / ".venv", weights, 1_700_000_000), cache)
    second = _cache_path(model_folder(tmp_path / "clone-b" / ".venv", weights, 1_800_000_000), cache)
    changed = _cache_path(
        model_folder(tmp_path / "clone-c", weights[:-1] + bytes([weights[-1] ^ 1]), 1_700_000_000), cache
    )
    assert first == second, "the same weights in another clone, copied at another time, reuse the conversion"
    assert changed != first, "other weights convert anew"
