"""A local mirror of the JupyterHub chart repository, served on loopback.

The site chart pins binderhub from https://jupyterhub.github.io/helm-chart/.
Where that repository cannot be reached (this machine, CI without outside
access), a folder holding a complete copy of it (its index.yaml and the
archives the index names) is served over HTTP on 127.0.0.1, and the
repository mirror map (DEPLOY_CHART_MIRRORS) points helm-deps at it for the
duration of the run. Nothing is copied into the project.

The folder is `../shared/charts/jupyterhub-helm-chart/` beside the project,
or whatever DEPLOY_CHART_REPOSITORY_DIR names. On a machine with outside
access no folder is needed: helm-deps fetches from the real repository.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tasks.errors import StepFailure
from tasks.runner import PROJECT_ROOT

UPSTREAM = "https://jupyterhub.github.io/helm-chart/"
FOLDER_VARIABLE = "DEPLOY_CHART_REPOSITORY_DIR"
SHARED_FOLDER = PROJECT_ROOT.parent / "shared" / "charts" / "jupyterhub-helm-chart"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def mirror_folder() -> Path:
    """The folder holding the repository's copy; a StepFailure naming it when it is absent."""
    configured = os.environ.get(FOLDER_VARIABLE)
    folder = Path(configured).expanduser().resolve() if configured else SHARED_FOLDER
    if not (folder / "index.yaml").is_file():
        origin = f"{FOLDER_VARIABLE}={configured}" if configured else "the default"
        raise StepFailure(
            f"No local copy of the chart repository {UPSTREAM} at {folder} ({origin}): "
            "it holds no index.yaml.",
            f"Set {FOLDER_VARIABLE} to a folder holding that repository's index.yaml and "
            "the archives it lists (e.g. a `helm repo index`ed folder of `helm pull`ed charts). "
            "On a machine that reaches the repository no copy is needed: unset "
            f"{FOLDER_VARIABLE} and leave DEPLOY_CHART_MIRRORS empty.",
        )
    return folder


@contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve `directory` on a free loopback port for the duration of the block."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
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
def mirror_upstream(folder: Path | None = None) -> Iterator[str]:
    """Serve the repository's local copy and make it the mirror of the real repository.

    Sets DEPLOY_CHART_MIRRORS for this process only while the block runs.
    """
    with serve(folder or mirror_folder()) as url:
        previous = os.environ.get("DEPLOY_CHART_MIRRORS")
        os.environ["DEPLOY_CHART_MIRRORS"] = f"{UPSTREAM}={url}"
        try:
            yield url
        finally:
            if previous is None:
                os.environ.pop("DEPLOY_CHART_MIRRORS", None)
            else:
                os.environ["DEPLOY_CHART_MIRRORS"] = previous
