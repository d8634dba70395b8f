"""What the CUDA flavour's venv would hold, without a GPU or its base image: the resolution for the CUDA base's
Python and platform (uv, from the index's metadata, no wheel downloaded), and each wheel's size read over HTTP.
"""

from __future__ import annotations

import io
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

import requests
import tomllib
import uv
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

PYPI = "https://pypi.org/simple"
# dozens of small reads over a busy proxy: a dropped connection is retried, not taken for a broken wheel
HTTP = requests.Session()
HTTP.mount("https://", HTTPAdapter(max_retries=Retry(total=5, backoff_factor=1, status_forcelist=[502, 503, 504])))


@dataclass(frozen=True)
class Locked:
    """One package of the resolution: its wheel's URL and size, or none (an sdist or a local directory)."""

    name: str
    version: str
    wheel_url: str | None
    wheel_bytes: int


def resolve(
    requirements: list[str], python_version: str, platform: str, from_source: list[str], lock: Path
) -> list[Locked]:
    """The packages `requirements` resolve to from PyPI for that Python and platform (in uv's words, such as
    x86_64-manylinux_2_39): wheels only but for `from_source`, as the build's pip installs them. uv writes `lock`.
    """
    requirements_file = lock.with_name("requirements.in")
    requirements_file.write_text("\n".join(requirements) + "\n")
    sources = [argument for name in from_source for argument in ("--no-binary", name)]
    command = [
        uv.find_uv_bin(), "pip", "compile", "--quiet", "--no-config", "--no-cache", "--native-tls",
        "--python-version", python_version, "--python-platform", platform, "--only-binary", ":all:", *sources,
        "--index-url", PYPI, "--output-file", str(lock), str(requirements_file),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"uv pip compile exited {result.returncode}:\n{result.stderr}"
    packages = tomllib.loads(lock.read_text())["packages"]
    return [
        Locked(
            package["name"],
            package.get("version", ""),
            package["wheels"][0]["url"] if "wheels" in package else None,
            package["wheels"][0]["size"] if "wheels" in package else 0,
        )
        for package in packages
    ]


class RemoteFile(io.RawIOBase):
    """A file on an HTTP server, read with Range requests: enough for zipfile to list a wheel without fetching it."""

    def __init__(self, url: str, size: int) -> None:
        self.url = url
        self.size = size
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.position = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence] + offset
        return self.position

    def readinto(self, buffer: memoryview) -> int:
        end = min(self.position + len(buffer), self.size)
        if end <= self.position:
            return 0
        response = HTTP.get(self.url, headers={"Range": f"bytes={self.position}-{end - 1}"}, timeout=120)
        assert response.status_code == 206, f"{self.url} ignored the Range request ({response.status_code})"
        data = response.content
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)


def unpacked_bytes(package: Locked) -> int:
    """What a wheel takes once installed, from its zip directory: the end of the file, not all of it."""
    remote = RemoteFile(package.wheel_url, package.wheel_bytes)
    with zipfile.ZipFile(io.BufferedReader(remote, buffer_size=1 << 20)) as wheel:
        return sum(entry.file_size for entry in wheel.infolist())
