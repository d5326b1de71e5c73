"""A local mirror of the JupyterHub chart repository, served on loopback.

The site chart pins binderhub from https://jupyterhub.github.io/helm-chart/.
Where that cannot be reached (this machine, CI without outside access), a
folder holding a complete copy of it (its index.yaml and the archives the index
names: `../shared/charts/jupyterhub-helm-chart/` beside the project, or
DEPLOY_CHART_REPOSITORY_DIR) is served over HTTP on 127.0.0.1, and the mirror
map (DEPLOY_CHART_MIRRORS) points helm-deps at it for the run. Nothing is copied
into the project; with outside access no folder is needed.

The charts published only to an OCI registry (traefik, from
oci://ghcr.io/traefik/helm) get a real OCI registry (the CNCF distribution
registry from `invoke cluster.build`) on a free loopback port, its storage in a
temporary folder, the archives of `../shared/charts/oci-traefik/` (or
DEPLOY_OCI_CHARTS_DIR) pushed into it with `helm push`, and the mirror map
pointing the real registry at it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests
from invoke import Context

from tasks.adapters import go_builds, helm, oci, toolchain
from tasks.core import web
from tasks.core.errors import StepFailure
from tasks.core.runner import PROJECT_ROOT, Companion, Runner

UPSTREAM = "https://jupyterhub.github.io/helm-chart/"
FOLDER_VARIABLE = "DEPLOY_CHART_REPOSITORY_DIR"
SHARED_FOLDER = PROJECT_ROOT.parent / "shared" / "charts" / "jupyterhub-helm-chart"

OCI_UPSTREAM = "oci://ghcr.io/traefik/helm"
OCI_FOLDER_VARIABLE = "DEPLOY_OCI_CHARTS_DIR"
OCI_SHARED_FOLDER = PROJECT_ROOT.parent / "shared" / "charts" / "oci-traefik"
MIRRORS_VARIABLE = "DEPLOY_CHART_MIRRORS"


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
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def mirror_upstream(folder: Path | None = None) -> Iterator[str]:
    """Serve the repository's local copy as the real repository's mirror while the block runs."""
    with serve(folder or mirror_folder()) as url, mirroring(UPSTREAM, url):
        yield url


@contextmanager
def mirroring(original: str, mirror: str) -> Iterator[None]:
    """Add `original=mirror` to DEPLOY_CHART_MIRRORS for this process while the block runs."""
    previous = os.environ.get(MIRRORS_VARIABLE)
    pairs = [p for p in (previous or "").split(",") if p and not p.startswith(f"{original}=")]
    os.environ[MIRRORS_VARIABLE] = ",".join([*pairs, f"{original}={mirror}"])
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(MIRRORS_VARIABLE, None)
        else:
            os.environ[MIRRORS_VARIABLE] = previous


def oci_folder() -> Path:
    """The folder of chart archives to serve from a local OCI registry."""
    configured = os.environ.get(OCI_FOLDER_VARIABLE)
    folder = Path(configured).expanduser().resolve() if configured else OCI_SHARED_FOLDER
    if not sorted(folder.glob("*.tgz")):
        origin = f"{OCI_FOLDER_VARIABLE}={configured}" if configured else "the default"
        raise StepFailure(
            f"No chart archives to serve for {OCI_UPSTREAM} at {folder} ({origin}).",
            f"Set {OCI_FOLDER_VARIABLE} to a folder of `helm pull`ed archives of the charts "
            f"the site takes from {OCI_UPSTREAM}. On a machine that reaches the registry no "
            "copy is needed.",
        )
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def oci_registry(storage: Path | None = None, port: int | None = None) -> Iterator[str]:
    """A real OCI registry (distribution's `registry serve`) on loopback: yields HOST:PORT.

    Its storage is `storage`, or a temporary folder removed afterwards.
    """
    binary = go_builds.binary("registry")
    with tempfile.TemporaryDirectory(prefix="oci-registry-") as scratch:
        root = storage or Path(scratch) / "storage"
        address = f"127.0.0.1:{port or free_port()}"
        config = Path(scratch) / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {address}\n"
        )
        started = tool_runner().companion(
            [binary, "serve", config], "Run `invoke cluster.build`, which builds the registry."
        )
        with started as registry:
            _wait_until_serving(registry, address)
            yield address


def _wait_until_serving(registry: Companion, address: str) -> None:
    deadline = time.monotonic() + 30
    with web.loopback_session() as client:
        while time.monotonic() < deadline:
            if registry.process.poll() is not None:
                registry.errors.seek(0)
                raise StepFailure(
                    f"The local OCI registry exited at its start ({registry.process.returncode}): "
                    f"{registry.errors.read().strip()[-500:]}"
                )
            with contextlib.suppress(requests.RequestException):
                if client.get(f"http://{address}/v2/", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
    raise StepFailure(f"The local OCI registry did not answer on {address} within 30 seconds.")


def push(archive: Path, target: str, runner: Runner | None = None) -> None:
    """`helm push` a chart archive into the registry prefix `target` (oci://HOST/PATH)."""
    runner = runner or tool_runner()
    runner.run(helm.push(archive, target, *oci.registry_flags(target)), quiet=True)


def tool_runner() -> Runner:
    """A runner for the pinned helm and kubectl, outside any step."""
    return Runner(Context(), tool_dirs=toolchain.search_dirs())


@contextmanager
def mirror_oci_upstream(folder: Path | None = None) -> Iterator[str]:
    """A local OCI registry holding the folder's charts, the mirror of the real registry.

    Yields the mirror's prefix (oci://127.0.0.1:PORT/traefik/helm).
    """
    archives = sorted((folder or oci_folder()).glob("*.tgz"))
    with oci_registry() as address:
        mirror = f"oci://{address}/{OCI_UPSTREAM.removeprefix('oci://').split('/', 1)[1]}"
        for archive in archives:
            push(archive, mirror)
        with mirroring(OCI_UPSTREAM, mirror):
            yield mirror
