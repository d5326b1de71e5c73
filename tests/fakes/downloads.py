"""A small real HTTP server on 127.0.0.1 that serves files and can be told to misbehave.

Stands in for the release download sites (get.helm.sh, dl.k8s.io) and for any
other plain GET endpoint: each path answers with its bytes, after the failures
scripted for it (`fail(path, 503, times=2)` answers 503 twice, then the file).
A path can require a bearer token, as Grafana's API does.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler

from tests.fakes.loopback import LoopbackServer


class FileServer:
    """`with FileServer() as server:` serves `server.add(path, body)` at `server.url + path`."""

    def __init__(self) -> None:
        self._files: dict[str, tuple[bytes, str | None]] = {}
        self._failures: dict[str, deque[int]] = {}
        self._retry_after: dict[str, int] = {}
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._http: LoopbackServer | None = None

    @property
    def url(self) -> str:
        if self._http is None:
            raise RuntimeError("the file server is not running; use it in a `with` block")
        return self._http.url

    def add(self, path: str, body: bytes, *, token: str | None = None) -> str:
        """Serve `body` at `path` (only with `Authorization: Bearer token`, if given)."""
        with self._lock:
            self._files[path] = (body, token)
        return self.url + path

    def fail(self, path: str, status: int, times: int = 1, retry_after: int | None = None) -> None:
        """Answer `status` to the next `times` requests for `path` (with `Retry-After`)."""
        with self._lock:
            self._failures.setdefault(path, deque()).extend([status] * times)
            if retry_after is not None:
                self._retry_after[path] = retry_after

    def __enter__(self) -> FileServer:
        files = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = files._answer(self.path, self.headers.get("Authorization"))
                self.send_response(status)
                wait = files._retry_after.get(self.path.split("?", 1)[0])
                if status >= 400 and wait is not None:
                    self.send_header("Retry-After", str(wait))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            # A POST gets the same scripted answers, for the tests of what is sent again.
            do_POST = do_GET

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._http = LoopbackServer(Handler, "file server")
        self._http.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._http is not None:
            self._http.stop()

    def _answer(self, raw_path: str, authorization: str | None) -> tuple[int, bytes]:
        path = raw_path.split("?", 1)[0]
        with self._lock:
            self.hits[path] += 1
            scripted = self._failures.get(path)
            if scripted:
                return scripted.popleft(), b"scripted failure\n"
            if path not in self._files:
                return 404, b"not found\n"
            body, token = self._files[path]
        if token is not None and authorization != f"Bearer {token}":
            return 401, b'{"message": "Unauthorized"}'
        return 200, body
