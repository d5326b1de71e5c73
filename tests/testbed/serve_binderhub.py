"""`python -m tests.testbed.serve_binderhub --config=FILE`: BinderHub on loopback only.

BinderHub's own entry point listens on every interface; every server the
tests run binds 127.0.0.1, so its HTTP server is given that address. Nothing
else about BinderHub changes.
"""

from __future__ import annotations

from typing import Any

import binderhub.app
from tornado.httpserver import HTTPServer


class LoopbackHTTPServer(HTTPServer):
    def listen(self, port: int, address: str | None = None, **kwargs: Any) -> None:
        super().listen(port, address or "127.0.0.1", **kwargs)


if __name__ == "__main__":
    binderhub.app.HTTPServer = LoopbackHTTPServer
    binderhub.app.main()
