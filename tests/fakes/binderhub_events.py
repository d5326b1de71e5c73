"""A fake BinderHub that speaks BinderHub's public HTTP interface, over real HTTP.

No BinderHub can run on this machine (it needs a cluster that builds images),
so this stands in for it with what a visitor sees:

    GET /                           the home page (it offers GitHub, among others)
    GET /health                     {"ok": ..., "checks": [...]}, 200 or 503
    GET /badge_logo.svg, /badge.svg the launch badges
    GET /v2/<provider>/<spec>       the launch page; 404 "Binder not found" for an
                                    unknown provider
    GET /build/<provider>/<spec>    the build's text/event-stream: `data: {json}`
                                    events (waiting, fetching, building, pushing,
                                    built, launching, ready with url and token),
                                    `:heartbeat` comments in between
    GET /user/<name>/api/status     the launched server's API, for its token only
    POST /user/<name>/api/shutdown  stops it; afterwards its URLs answer 424
    GET /active_hosts               the federation redirector's list of members

Behaviours a test chooses: `build` is "ok", "failed" (the build breaks in the
building phase, with a log) or "stall" (events stop after `building`, heartbeats
go on); `warming_requests` answers that many requests with 503 first, as a proxy
whose routes are not registered yet does; `healthy=False` fails /health; `delay`
holds every answer but the event stream back, as a hung backend does.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.loopback import LoopbackServer

PROVIDERS = ("gh", "gl", "git", "gist", "zenodo", "figshare", "hydroshare", "dataverse")
BADGE = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="109" height="20">'
    '<text x="5" y="14">launch binder</text></svg>'
)
HOME_PAGE = (
    "<!DOCTYPE html><html><head><title>Binder</title></head><body>"
    "<h1>Turn a Git repo into a collection of interactive notebooks</h1>"
    "<form><select><option>GitHub</option><option>GitLab.com</option>"
    "<option>Git repository</option><option>Zenodo DOI</option></select></form>"
    "</body></html>"
)
NOT_FOUND_PAGE = (
    "<!DOCTYPE html><html><head><title>Binder not found</title></head><body>"
    "<h1>404: Binder not found</h1></body></html>"
)
FAILED_BUILD_LOG = (
    "Step 4/9 : RUN pip install --no-cache-dir -r requirements.txt\n"
    "ERROR: Could not find a version that satisfies the requirement numpy==0.0.1\n"
    "ERROR: No matching distribution found for numpy==0.0.1\n"
)
_BUILD_PATH = re.compile(r"^/build/([^/]+)/(.+)$")
_USER_PATH = re.compile(r"^/user/([^/]+)/(.*)$")


@dataclass
class Server:
    """A server the fake launched: its token, and whether it still runs."""

    token: str
    running: bool = True


@dataclass
class FakeBinderHub:
    """`with FakeBinderHub(build="ok") as binder:` serves on `binder.url` until the block ends."""

    build: str = "ok"
    warming_requests: int = 0
    healthy: bool = True
    # Seconds every page but the event stream waits before answering: a hung backend.
    delay: float = 0
    # Seconds between events, and between heartbeats of a stalled stream.
    pace: float = 0.01
    heartbeat: float = 0.2
    builds: list[str] = field(default_factory=list)
    servers: dict[str, Server] = field(default_factory=dict)
    _http: LoopbackServer | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._http is not None, "use FakeBinderHub as a context manager"
        return self._http.url

    def __enter__(self) -> FakeBinderHub:
        self._http = LoopbackServer(_handler_for(self), "fake BinderHub")
        self._http.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        assert self._http is not None
        self._http.stop()

    def still_warming(self) -> bool:
        with self._lock:
            if self.warming_requests > 0:
                self.warming_requests -= 1
                return True
            return False

    def events(self, provider: str, spec: str) -> list[dict[str, Any]]:
        """The events a build of `spec` sends, up to where this fake's `build` ends it."""
        image = f"r2d-{secrets.token_hex(6)}"
        events: list[dict[str, Any]] = [
            {"phase": "waiting", "message": "Waiting for build to start...\n"},
            {"phase": "fetching", "message": f"Fetching {provider}/{spec}...\n"},
            {"phase": "building", "message": f"Building {image}\n"},
            {"phase": "building", "message": "Step 1/9 : FROM docker.io/library/buildpack-deps\n"},
        ]
        if self.build == "failed":
            events += [
                {"phase": "building", "message": line + "\n"}
                for line in FAILED_BUILD_LOG.splitlines()
            ]
            events.append({"phase": "failed", "message": "Error during build: exit status 1\n"})
            return events
        if self.build == "stall":
            return events
        name = f"{spec.split('/')[0]}-{secrets.token_hex(4)}"
        token = secrets.token_urlsafe(16)
        with self._lock:
            self.servers[name] = Server(token)
        return [
            *events,
            {"phase": "pushing", "message": "Pushing image\n", "progress": {}},
            {"phase": "built", "message": "Built image, launching...\n", "imageName": image},
            {"phase": "launching", "message": "Launching server...\n"},
            {
                "phase": "ready",
                "message": f"server running at {self.url}/user/{name}/\n",
                "url": f"{self.url}/user/{name}/",
                "token": token,
                "image": image,
                "repo_url": f"https://github.com/{spec.rsplit('/', 1)[0]}",
            },
        ]


def _handler_for(binder: FakeBinderHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if binder.still_warming():
                self._send(503, "text/plain", "Service Unavailable")
                return
            path = self.path.split("?", 1)[0]
            if binder.delay and not path.startswith("/build/"):
                binder._stopping.wait(binder.delay)
            if path == "/":
                self._send(200, "text/html", HOME_PAGE)
            elif path == "/health":
                self._health()
            elif path in ("/badge_logo.svg", "/badge.svg"):
                self._send(200, "image/svg+xml", BADGE)
            elif path == "/active_hosts":
                hosts = {"active_hosts": [binder.url]}
                self._send(200, "application/json", json.dumps(hosts))
            elif path.startswith("/v2/"):
                known = path.split("/")[2] in PROVIDERS
                self._send(
                    200 if known else 404, "text/html", HOME_PAGE if known else NOT_FOUND_PAGE
                )
            elif found := _BUILD_PATH.match(path):
                self._stream(found.group(1), found.group(2))
            elif found := _USER_PATH.match(path):
                self._user(found.group(1), found.group(2), "GET")
            else:
                self._send(404, "text/html", NOT_FOUND_PAGE)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            found = _USER_PATH.match(self.path.split("?", 1)[0])
            if found:
                self._user(found.group(1), found.group(2), "POST")
            else:
                self._send(405, "text/plain", "Method Not Allowed")

        def _health(self) -> None:
            checks = [
                {"service": "JupyterHub API", "ok": binder.healthy},
                {"service": "Pod quota", "ok": True, "total_pods": 3, "build_pods": 0},
            ]
            body = json.dumps({"ok": binder.healthy, "checks": checks})
            self._send(200 if binder.healthy else 503, "application/json", body)

        def _stream(self, provider: str, spec: str) -> None:
            if provider not in PROVIDERS:
                self._send(404, "text/html", NOT_FOUND_PAGE)
                return
            binder.builds.append(f"{provider}/{spec}")
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            try:
                for event in binder.events(provider, spec):
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                    time.sleep(binder.pace)
                while binder.build == "stall" and not binder._stopping.wait(binder.heartbeat):
                    self.wfile.write(b":heartbeat\n\n")
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return

        def _user(self, name: str, rest: str, method: str) -> None:
            server = binder.servers.get(name)
            if server is None or not server.running:
                # What the hub answers once a server's route is gone.
                body = json.dumps(
                    {"message": f"JupyterHub server no longer running at /user/{name}/"}
                )
                self._send(424, "application/json", body)
                return
            if self.headers.get("Authorization") != f"token {server.token}":
                self._send(403, "application/json", json.dumps({"message": "Forbidden"}))
                return
            if method == "GET" and rest == "api/status":
                status = {"started": "2026-01-01T00:00:00Z", "connections": 0, "kernels": 0}
                self._send(200, "application/json", json.dumps(status))
            elif method == "POST" and rest == "api/shutdown":
                server.running = False
                self._send(200, "application/json", "{}")
            else:
                self._send(404, "application/json", json.dumps({"message": "Not Found"}))

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
