"""A new user's first run, as the README tells it: the order of the quick start, what it installs, what it shows.

The answer the README prints for its curl example is the one the CPU default really gives.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import requests

from harness.service import ServiceProcess

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def quick_start() -> str:
    return README.split("## Quick start", 1)[1].split("\n## ", 1)[0]


def test_the_quick_start_runs_the_tests_before_the_server_that_blocks() -> None:
    commands = re.findall(r"^scripts/(\w+)\.sh", quick_start(), re.MULTILINE)
    assert commands == ["test", "serve"]


def test_setup_installs_what_a_stock_debian_python_lacks() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "python3-venv" in setup and "import ensurepip" in setup


def test_the_openai_snippet_says_how_to_get_its_client() -> None:
    openai_section = README.split("### OpenAI-compatible API", 1)[1].split("```python", 1)[0]
    assert "pip install openai" in openai_section


def test_every_table_row_belongs_to_a_table() -> None:
    lines = README.splitlines()
    for number, line in enumerate(lines):
        if line.startswith("|"):
            above = lines[number - 1]
            assert above.startswith("|") or lines[number + 1].startswith("| ---"), f"line {number + 1}: {line}"


def test_the_curl_example_shows_what_the_default_model_answers(hardened: ServiceProcess, tmp_path: Path) -> None:
    [command] = re.findall(r'^(espeak-ng -w hello\.wav "[^"]+")', quick_start(), re.MULTILINE)
    text = command.split('"')[1]
    subprocess.run(["espeak-ng", "-w", str(tmp_path / "hello.wav"), text], check=True)
    [shown] = re.findall(r"```json\n(.*?)\n```", quick_start(), re.DOTALL)
    with (tmp_path / "hello.wav").open("rb") as audio:
        answer = requests.post(
            f"{hardened.url}/transcribe", files={"file": audio}, headers=hardened.auth_headers, timeout=300
        )
    assert answer.status_code == 200
    assert json.loads(shown) == answer.json()
