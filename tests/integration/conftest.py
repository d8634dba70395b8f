"""One real service process for the integration tests, and the audio they send it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.service import ServiceProcess

# long enough for requests sent together to meet in one batch on a slow CI machine
TEST_BATCH_TIMEOUT = "1.0"


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path) -> Iterator[ServiceProcess]:
    with ServiceProcess(
        tmp_path_factory.mktemp("service"),
        model_cache_dir,
        WHISPER_MAX_BATCH_SIZE="8",
        WHISPER_BATCH_TIMEOUT=TEST_BATCH_TIMEOUT,
    ) as process:
        yield process
