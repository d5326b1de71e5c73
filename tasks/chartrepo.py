"""A local chart repository on loopback, for the demo and the tests.

This machine cannot reach the JupyterHub chart repository, so the demo mirrors
it: the charts under `demo/chart-repository/` are packaged with the pinned
helm (`helm package`, `helm repo index`, exactly what a real repository
publishes) and served over HTTP on 127.0.0.1. `repository_mirrors` (or the
DEPLOY_CHART_MIRRORS variable) points helm-deps at it.
"""

from __future__ import annotations

import functools
import os
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tasks.errors import StepFailure
from tasks.runner import PROJECT_ROOT

SOURCE = PROJECT_ROOT / "demo" / "chart-repository"
UPSTREAM = "https://jupyterhub.github.io/helm-chart/"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def build(target: Path, helm: Path) -> Path:
    """Package every chart under demo/chart-repository/ into `target`, with its index."""
    target.mkdir(parents=True, exist_ok=True)
    commands = [
        [str(helm), "package", str(chart), "--destination", str(target)]
        for chart in sorted(p for p in SOURCE.iterdir() if (p / "Chart.yaml").exists())
    ]
    for command in [*commands, [str(helm), "repo", "index", str(target)]]:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise StepFailure(
                f"Could not build the demo's local chart repository: `{' '.join(command)}` "
                f"exited with {done.returncode}.",
                "Check the charts under demo/chart-repository/ (helm lint them).",
                details=done.stderr.strip(),
            )
    return target


@contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve `directory` on a free loopback port for the duration of the block."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def mirror_upstream(helm: Path) -> Iterator[str]:
    """Build and serve the local repository as the JupyterHub repository's mirror.

    Sets DEPLOY_CHART_MIRRORS for this process only while the block runs.
    """
    directory = build(PROJECT_ROOT / ".local" / "chart-repository", helm)
    with serve(directory) as url:
        previous = os.environ.get("DEPLOY_CHART_MIRRORS")
        os.environ["DEPLOY_CHART_MIRRORS"] = f"{UPSTREAM}={url}"
        try:
            yield url
        finally:
            if previous is None:
                os.environ.pop("DEPLOY_CHART_MIRRORS", None)
            else:
                os.environ["DEPLOY_CHART_MIRRORS"] = previous
