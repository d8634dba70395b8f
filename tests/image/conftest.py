"""Fixtures of the image tier: the images scripts/test-image.sh built, one long-lived service container, and
the figures the tier reports (time to healthy...), printed at the end of the run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.image.docker import ServiceContainer, docker, remove_leftovers

FIGURES: dict[str, str] = {}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("image figures")
        for name, value in FIGURES.items():
            terminalreporter.write_line(f"{name}: {value}")


def built_image(variable: str) -> str:
    """An image scripts/test-image.sh built and named in `variable`; missing, the tier fails (it never skips)."""
    name = os.environ.get(variable)
    assert name, f"{variable} is unset: run the image tier with scripts/test-image.sh"
    docker("image", "inspect", name)
    return name


@pytest.fixture(scope="session")
def image() -> str:
    remove_leftovers()
    return built_image("WHISPER_TEST_IMAGE")


@pytest.fixture(scope="session")
def prometheus_image() -> str:
    return built_image("WHISPER_TEST_PROMETHEUS_IMAGE")


@pytest.fixture(scope="session")
def service(image: str) -> Iterator[ServiceContainer]:
    """The CPU image run as docker-compose.yml runs it, with the image's own defaults and HEALTHCHECK."""
    container = ServiceContainer(image, "service").start()
    FIGURES["seconds until /health answered 200"] = f"{container.wait_until_serving():.1f}"
    yield container
    container.remove()
