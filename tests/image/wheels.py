"""What the CUDA flavour's venv would hold, without a GPU or its base image: pip's resolution for the CUDA stage's
Python and platform, and the size of each wheel (downloaded and unpacked) read from its index over HTTP.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import requests

PYPI = "https://pypi.org/simple"
SYSTEM_CERTIFICATES = Path("/etc/ssl/certs/ca-certificates.crt")


def pip(*arguments: str) -> None:
    """pip as the image's build runs it: PyPI alone, none of this machine's pip configuration."""
    certificates = ["--cert", str(SYSTEM_CERTIFICATES)] if SYSTEM_CERTIFICATES.exists() else []
    command = [sys.executable, "-m", "pip", *arguments, "--isolated", "--disable-pip-version-check", *certificates]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"pip {' '.join(arguments)} exited {result.returncode}:\n{result.stderr}"


def glibc_platforms(newest_minor: int) -> list[str]:
    """pip's --platform names every manylinux tag a glibc 2.<newest_minor> x86-64 host accepts (pip does not)."""
    return [f"manylinux_2_{minor}_x86_64" for minor in range(5, newest_minor + 1)] + [
        "manylinux1_x86_64",
        "manylinux2010_x86_64",
        "manylinux2014_x86_64",
    ]


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    url: str


def resolve(requirements: list[str], python_version: str, glibc_minor: int, find_links: Path, report: Path) -> list[Wheel]:
    """The wheels pip would install for `requirements` on that Python and glibc, from PyPI and `find_links`."""
    platforms = [argument for platform in glibc_platforms(glibc_minor) for argument in ("--platform", platform)]
    pip(
        "install", "--dry-run", "--quiet", "--target", str(report.parent / "unused-target"), "--report", str(report),
        "--python-version", python_version, *platforms, "--only-binary=:all:",
        "--index-url", PYPI, "--find-links", str(find_links), *requirements,
    )  # fmt: skip
    installs = json.loads(report.read_text())["install"]
    return [Wheel(item["metadata"]["name"], item["metadata"]["version"], item["download_info"]["url"]) for item in installs]


class RemoteFile(io.RawIOBase):
    """A file on an HTTP server, read with Range requests: enough for zipfile to list a wheel without fetching it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.size = int(requests.head(url, allow_redirects=True, timeout=60).headers["Content-Length"])
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
        response = requests.get(self.url, headers={"Range": f"bytes={self.position}-{end - 1}"}, timeout=120)
        assert response.status_code == 206, f"{self.url} ignored the Range request ({response.status_code})"
        data = response.content
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)


def wheel_sizes(url: str) -> tuple[int, int]:
    """(download, unpacked) bytes of one wheel, from its zip directory: the end of the file, not all of it."""
    if url.startswith("file://"):
        local = Path(url.removeprefix("file://"))
        with zipfile.ZipFile(local) as wheel:
            return local.stat().st_size, sum(entry.file_size for entry in wheel.infolist())
    remote = RemoteFile(url)
    with zipfile.ZipFile(io.BufferedReader(remote, buffer_size=1 << 20)) as wheel:
        return remote.size, sum(entry.file_size for entry in wheel.infolist())
