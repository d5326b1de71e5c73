"""A fake Grafana that honours the documented annotations API, over real HTTP.

It listens on 127.0.0.1 on a free port, in a thread, for the duration of a
`with FakeGrafana() as grafana:` block. It records every request it receives
and can be told to misbehave the way a real Grafana or its network does:
answer 500 a few times, answer too slowly, or refuse the token with 403.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.loopback import LoopbackServer

_PATCH_PATH = re.compile(r"^/api/annotations/(\d+)$")
_FORBIDDEN = "You'll need additional permissions to perform this action."


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    json: Any  # None when the body was empty or not JSON

    def header(self, name: str) -> str | None:
        """A header by name, case-insensitively, as HTTP has it."""
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)


@dataclass(frozen=True)
class _Misbehaviour:
    status: int | None = None  # answer this instead of doing the work
    delay: float = 0.0  # seconds to wait before answering


class FakeGrafana:
    """The annotations part of Grafana's HTTP API, and nothing else."""

    def __init__(self, token: str = "glsa_fake_service_account_token_0123456789") -> None:
        self.token = token
        self.requests: list[ReceivedRequest] = []
        self.annotations: dict[int, dict[str, Any]] = {}
        self._next_id = 1
        self._script: deque[_Misbehaviour] = deque()
        self._always: _Misbehaviour | None = None
        self._lock = threading.Lock()
        self._http = LoopbackServer(_handler_for(self), "fake Grafana")

    @property
    def url(self) -> str:
        return self._http.url

    def fail_next(self, times: int, status: int = 500) -> None:
        """Answer the next `times` requests with `status`, doing nothing."""
        self._script.extend(_Misbehaviour(status=status) for _ in range(times))

    def delay_next(self, times: int, seconds: float) -> None:
        """Wait `seconds` before handling each of the next `times` requests."""
        self._script.extend(_Misbehaviour(delay=seconds) for _ in range(times))

    def delay_all(self, seconds: float) -> None:
        self._always = _Misbehaviour(delay=seconds)

    def forbid(self) -> None:
        """Refuse every request with 403, as for a token without annotation rights."""
        self._always = _Misbehaviour(status=403)

    def __enter__(self) -> FakeGrafana:
        self._http.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._http.stop()

    def handle(
        self, method: str, path: str, headers: dict[str, str], raw_body: bytes
    ) -> tuple[int, dict[str, Any]]:
        """One request's answer: status and JSON body."""
        try:
            body = json.loads(raw_body) if raw_body else None
        except ValueError:
            body = None
        with self._lock:
            self.requests.append(ReceivedRequest(method, path, headers, body))
            misbehaviour = self._script.popleft() if self._script else self._always
        if misbehaviour is not None:
            if misbehaviour.delay:
                time.sleep(misbehaviour.delay)
            if misbehaviour.status == 403:
                return 403, {"message": _FORBIDDEN}
            if misbehaviour.status is not None:
                return misbehaviour.status, {"message": "Internal Server Error"}
        authorization = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        if authorization != f"Bearer {self.token}":
            return 401, {"message": "Unauthorized"}
        if method == "POST" and path == "/api/annotations":
            return self._add(body)
        found = _PATCH_PATH.match(path)
        if method == "PATCH" and found:
            return self._patch(int(found.group(1)), body)
        return 404, {"message": "Not found"}

    def _add(self, body: Any) -> tuple[int, dict[str, Any]]:
        problem = _malformed(body, required=("time",))
        if problem:
            return 400, {"message": problem}
        with self._lock:
            annotation_id = self._next_id
            self._next_id += 1
            self.annotations[annotation_id] = dict(body)
        return 200, {"message": "Annotation added", "id": annotation_id}

    def _patch(self, annotation_id: int, body: Any) -> tuple[int, dict[str, Any]]:
        problem = _malformed(body, required=())
        if problem:
            return 400, {"message": problem}
        with self._lock:
            if annotation_id not in self.annotations:
                return 404, {"message": "Could not find annotation to update"}
            self.annotations[annotation_id].update(body)
        return 200, {"message": "Annotation patched"}


def _malformed(body: Any, required: tuple[str, ...]) -> str:
    if not isinstance(body, dict):
        return "bad request data"
    for key in required:
        if key not in body:
            return f"bad request data: {key} is required"
    for key in ("time", "timeEnd"):
        value = body.get(key)
        if key in body and (not isinstance(value, int) or isinstance(value, bool)):
            return f"bad request data: {key} must be an integer of epoch milliseconds"
    tags = body.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        return "bad request data: tags must be a list of strings"
    return ""


def _handler_for(grafana: FakeGrafana) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            status, payload = grafana.handle(
                self.command, self.path, dict(self.headers.items()), raw
            )
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting, as a timing-out client does

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the test reads `requests`, not a log on stderr

    return Handler
