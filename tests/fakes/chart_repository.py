"""A chart repository on loopback, serving charts packaged by the real helm.

Scriptable the way real repositories misbehave: answer 5xx a few times,
serve an archive that does not match the index's digest. Records every
request so a test can prove that nothing was fetched.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from tests.fakes.loopback import LoopbackServer, send_file


def package_chart(helm: Path, source: Path, target: Path) -> None:
    subprocess.run(
        [str(helm), "package", str(source), "--destination", str(target)],
        check=True,
        capture_output=True,
    )
    subprocess.run([str(helm), "repo", "index", str(target)], check=True, capture_output=True)


class ChartRepository:
    """A real HTTP server over a folder made by `helm package` and `helm repo index`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.requests: list[str] = []
        self._failures: list[int] = []
        self._lock = threading.Lock()
        repository = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with repository._lock:
                    repository.requests.append(self.path)
                    status = repository._failures.pop(0) if repository._failures else None
                if status is not None:
                    self.send_response(status)
                    self.end_headers()
                    return
                send_file(self, repository.folder / self.path.lstrip("/"))

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._http = LoopbackServer(Handler, "chart repository")

    def fail_next(self, count: int, status: int = 503) -> None:
        with self._lock:
            self._failures.extend([status] * count)

    def replace_archive(self, name: str, content: bytes) -> None:
        (self.folder / name).write_bytes(content)

    @property
    def url(self) -> str:
        return self._http.url + "/"

    def __enter__(self) -> ChartRepository:
        self._http.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.stop()


def make_chart(folder: Path, name: str, version: str) -> Path:
    chart = folder / name
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(f"apiVersion: v2\nname: {name}\nversion: {version}\n")
    (chart / "values.yaml").write_text("{}\n")
    return chart


def copy_tree(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("charts"))
    return target
