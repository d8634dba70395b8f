"""No upload makes ffprobe or ffmpeg open anything but the upload itself.

Playlists, concat scripts and nested references name canaries: FIFOs, whose writer end learns when anything
opens them for reading, and a listener on 127.0.0.1 that learns when anything connects. None may fire.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.service import ServiceProcess
from tests.hardening.conftest import Part, multipart, post

pytestmark = pytest.mark.integration


@dataclass
class FifoCanary:
    """A FIFO whose writer waits in a thread; `opened` is set once something opens the FIFO to read it."""

    path: Path
    opened: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        os.mkfifo(self.path)
        threading.Thread(target=self._wait_for_a_reader, daemon=True).start()

    def _wait_for_a_reader(self) -> None:
        descriptor = os.open(self.path, os.O_WRONLY)  # blocks until a reader opens the FIFO
        self.opened.set()
        os.close(descriptor)  # the reader sees an empty file

    def release(self) -> None:
        """Unblock the writer (a non-blocking reader opens at once), then remove the FIFO."""
        os.close(os.open(self.path, os.O_RDONLY | os.O_NONBLOCK))
        self.path.unlink()


class ListenerCanary:
    """A TCP listener on 127.0.0.1 that counts the connections it accepts."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.socket.settimeout(0.2)
        self.port = self.socket.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.socket.accept()
            except TimeoutError:
                continue
            self.connections += 1
            connection.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.socket.close()


@pytest.fixture
def canaries(tmp_path: Path, hardened: ServiceProcess) -> Iterator[tuple[dict[str, FifoCanary], ListenerCanary]]:
    fifos = {
        "absolute": FifoCanary(tmp_path / "canary.ts"),
        # beside the uploads, reachable by a relative name from an upload's own directory
        "relative": FifoCanary(hardened.upload_dir / "canary.wav"),
    }
    listener = ListenerCanary()
    yield fifos, listener
    listener.close()
    for fifo in fifos.values():
        fifo.release()


def uploads(fifos: dict[str, FifoCanary], port: int, nested: Path) -> dict[str, bytes]:
    fifo, relative, url = fifos["absolute"].path, fifos["relative"].path.name, f"http://127.0.0.1:{port}/a.ts"
    playlist = "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:10.0,\n{}\n#EXT-X-ENDLIST\n"
    nested.write_text(playlist.format(fifo))
    cases = {
        "HLS playlist naming a FIFO": playlist.format(fifo),
        "HLS playlist naming a file:// URL": playlist.format(f"file://{fifo}"),
        "HLS playlist naming a relative path": playlist.format(relative),
        "HLS playlist naming http on 127.0.0.1": playlist.format(url),
        "HLS playlist naming the concat protocol": playlist.format(f"concat:{fifo}|{fifo}"),
        "HLS master playlist naming a playlist that names a FIFO": (
            f"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=64000\n{nested}\n"
        ),
        "HLS master playlist naming a playlist over http": f"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=64000\n{url}\n",
        "ffconcat naming a FIFO": f"ffconcat version 1.0\nfile {fifo}\n",
        "ffconcat naming a relative path": f"ffconcat version 1.0\nfile {relative}\n",
        "ffconcat naming http on 127.0.0.1": f"ffconcat version 1.0\nfile {url}\n",
        "ffconcat naming the subfile protocol": f"ffconcat version 1.0\nfile 'subfile,,start,0,end,0,,:{fifo}'\n",
    }
    return {label: text.encode() for label, text in cases.items()}


def test_playlists_and_scripts_open_nothing_but_the_upload(
    hardened: ServiceProcess, canaries: tuple[dict[str, FifoCanary], ListenerCanary], tmp_path: Path
) -> None:
    fifos, listener = canaries
    answers = {}
    for label, content in uploads(fifos, listener.port, tmp_path / "nested.m3u8").items():
        response = post(hardened, multipart(Part(b"file", content, b"list.m3u8")))
        answers[label] = response.status_code
        print(f"{response.status_code} {label}: {response.text[:110]}")
        opened = [name for name, fifo in fifos.items() if fifo.opened.is_set()]
        assert not opened and not listener.connections, f"{label}: opened {opened}, {listener.connections} connections"
    assert set(answers.values()) == {415}, answers
    assert [p for p in hardened.upload_dir.iterdir() if p.name != "canary.wav"] == []
