"""What a visitor reaches in front of BinderHub, for the cases a live one cannot give.

The smoke suite's BinderHub checks run against a live BinderHub
(tests/testbed/binderhub.py). This stand-in serves only:

    a load balancer dropping   its first `dropped_requests` connections are closed
                               with no answer, as a load balancer resetting them
    a proxy still warming up   its next `warming_requests` answers are 503, as a
                               proxy whose routes are not registered yet answers
                               right after a deploy; then /health answers as
                               BinderHub does (200, {"ok": true, "checks": [...]})
    GET /active_hosts          the federation redirector's list of members: the
                               redirector is mybinder.org's own service, not
                               BinderHub, and does not run here
    GET /user/<name>/...       what mybinder.org's proxy-patches answer for a user
                               with no server: 503 and a "Binder not found" page

`requests` counts the requests it was sent, so that a test can tell how often
the suite tried.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.loopback import LoopbackServer


@dataclass
class BinderFront:
    """`with BinderFront(warming_requests=3) as front:` serves on `front.url` until the end."""

    warming_requests: int = 0
    dropped_requests: int = 0
    requests: int = 0
    _http: LoopbackServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._http is not None, "use BinderFront as a context manager"
        return self._http.url

    def __enter__(self) -> BinderFront:
        self._http = LoopbackServer(_handler_for(self), "BinderHub's front")
        self._http.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._http is not None
        self._http.stop()

    def next_answer(self) -> str:
        """How to meet the next request: "drop", "warming" or "serve"."""
        with self._lock:
            self.requests += 1
            if self.dropped_requests > 0:
                self.dropped_requests -= 1
                return "drop"
            if self.warming_requests > 0:
                self.warming_requests -= 1
                return "warming"
            return "serve"


BINDER_NOT_FOUND_PAGE = """<!DOCTYPE html>
<html><head><title>Binder not found</title></head>
<body><h1>Binder not found</h1>
<p>This Binder session does not exist or has ended. Launch it again from its repository.</p>
</body></html>
"""


def _handler_for(front: BinderFront) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            answer = front.next_answer()
            if answer == "drop":
                # Closed after the request, before any answer: the client sees a reset.
                self.close_connection = True
            elif answer == "warming":
                self._send(503, "text/plain", "Service Unavailable")
            elif self.path == "/health":
                checks = [{"service": "JupyterHub API", "ok": True}]
                self._send(200, "application/json", json.dumps({"ok": True, "checks": checks}))
            elif self.path == "/active_hosts":
                hosts = {"active_hosts": [front.url]}
                self._send(200, "application/json", json.dumps(hosts))
            elif self.path.startswith("/user/"):
                self._send(503, "text/html", BINDER_NOT_FOUND_PAGE)
            else:
                self._send(404, "text/plain", "Not Found")

        def _send(self, status: int, content_type: str, body: str) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
