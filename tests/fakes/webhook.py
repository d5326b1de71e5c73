"""A chat's incoming webhook (Slack's, or Zulip's Slack-compatible one), over real HTTP.

It listens on 127.0.0.1 on a free port for a `with WebhookReceiver() as hook:` block,
records every POST it receives, and answers 200 `ok` as Slack does, or what it is told:
another status, or an answer too slow to wait for.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.loopback import LoopbackServer


class WebhookReceiver:
    def __init__(self) -> None:
        self.received: list[tuple[str, Any]] = []  # (path, JSON body)
        self.status = 200
        self.delay = 0.0
        self._lock = threading.Lock()
        self._http = LoopbackServer(_handler_for(self), "webhook receiver")

    @property
    def url(self) -> str:
        return self._http.url

    def __enter__(self) -> WebhookReceiver:
        self._http.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.stop()


def _handler_for(receiver: WebhookReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            with receiver._lock:
                receiver.received.append((self.path, parsed))
            time.sleep(receiver.delay)
            answer = b"ok" if receiver.status == 200 else b"internal error"
            try:
                self.send_response(receiver.status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
            except OSError:
                pass  # the client gave up waiting

        def log_message(self, *args: object) -> None:
            pass

    return Handler
