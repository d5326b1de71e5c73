"""A live BinderHub for the smoke suite's tests, made of the real parts.

    JupyterHub     the real hub with its real proxy (configurable-http-proxy from npm).
                   BinderHub is its service; its spawner is BinderHub's BinderSpawnerMixin
                   on JupyterHub's SimpleLocalProcessSpawner, so every launch starts a
                   real jupyter_server on this machine, on loopback, as the chart's
                   single-user image does
    BinderHub      the application itself, installed by ./setup.sh from the wheel in
                   ../shared/binderhub/ (BINDER_DEPLOY_SHARED names another folder),
                   building through KubernetesBuildExecutor
    the cluster    the project's local cluster: build pods run on KWOK's simulated nodes,
                   which complete them (sandbox/stages.yaml)
    repositories   bare git repositories in the test bed's folder, which BinderHub's
                   GitRepoProvider reads through file:// URLs: no outside access

Two parts stand in for what cannot run here: the registry is BinderHub's own
FakeRegistry, which holds no image, so every launch builds; and no repo2docker
runs in a simulated pod, so a build pod's log is repo2docker's event lines
written by the test bed (`BUILD_LOG`) and served by KWOK (a ClusterLogs object).

Failures a test injects, each where it happens on a site:

    a repository whose URL contains   its build pod exits 1 (a KWOK stage)
      kwok-build-fails
    ... contains kwok-build-hangs     its build pod never ends (no stage completes it)
    ... contains server-never-answers its server starts but never answers, so
                                      BinderHub's launch times out
    `bed.hub.stop_hub()`              the hub is down; its proxy still answers
    `BareProxy`                       the hub's proxy with no route to the hub
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
import yaml

from sandbox import clusters
from tasks.core.runner import PROJECT_ROOT
from tests.fakes.sshd import free_port
from tests.smoke.launches import git_environment

SHARED_ENV = "BINDER_DEPLOY_SHARED"
CHP_VERSION = "5.3.0"
NPM_PREFIX = Path.home() / ".cache" / "binder-deploy" / "npm"
CHP = NPM_PREFIX / "node_modules" / ".bin" / "configurable-http-proxy"
BUILD_FAILS, BUILD_HANGS, NEVER_ANSWERS = (
    "kwok-build-fails",
    "kwok-build-hangs",
    "server-never-answers",
)
# Seconds BinderHub waits for a launched server: patient enough for a loaded machine,
# short enough for the test that lets it run out.
LAUNCH_TIMEOUT = 12
# What repo2docker prints with --json-logs while it builds; BinderHub relays each line.
BUILD_LOG = (
    {"phase": "fetching", "message": "Picked Git content provider.\n"},
    {"phase": "fetching", "message": "Cloning into '/tmp/repo2docker'...\n"},
    {"phase": "building", "message": "Building conda environment for python=3.12\n"},
    {"phase": "building", "message": "Step 1/14 : FROM docker.io/library/buildpack-deps:jammy\n"},
    {"phase": "building", "message": 'Step 14/14 : CMD ["jupyter", "notebook"]\n'},
)


def shared_dir() -> Path:
    """The folder holding binderhub/ and charts/: ../shared beside the project, or the override."""
    return Path(os.environ.get(SHARED_ENV) or PROJECT_ROOT.parent / "shared")


def require_binderhub() -> None:
    """Skip where BinderHub's wheel is absent; fail where it is there but not installed."""
    try:
        import binderhub  # noqa: F401
    except ImportError:
        wheels = shared_dir() / "binderhub"
        if not any(wheels.glob("binderhub-*.whl")):
            pytest.skip(
                f"no BinderHub to test against: {wheels} holds no binderhub wheel "
                f"(set {SHARED_ENV} to the folder that holds binderhub/)"
            )
        pytest.fail(
            f"BinderHub is not installed: ./setup.sh installs it from {wheels}", pytrace=False
        )


def configurable_http_proxy() -> Path:
    """JupyterHub's proxy from npm, installed once into the user's cache, never the repo."""
    if not CHP.exists():
        subprocess.run(
            [
                "npm",
                "install",
                "--no-audit",
                "--no-fund",
                f"--prefix={NPM_PREFIX}",
                f"configurable-http-proxy@{CHP_VERSION}",
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
    return CHP


class LocalService:
    """A server run as a child process from `workdir`, logging to a file there."""

    name = "service"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.log = workdir / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def launch(self, command: list[str], ready: Callable[[], bool], **popen: Any) -> None:
        """Start `command` and wait until `ready()`; fail with the log's end if it never is."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **popen)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.process.poll() is None:
            with contextlib.suppress(requests.RequestException):
                if ready():
                    return
            time.sleep(0.2)
        tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        self.stop()
        pytest.fail(f"{self.name} did not come up:\n{tail}", pytrace=False)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


class JupyterHub(LocalService):
    """A JupyterHub on free local ports, with its proxy, run from a config in `workdir`.

    `keep_proxy` leaves the proxy running when the hub stops, as happens on a
    site when the hub pod dies: the proxy keeps routing to a hub that is gone.
    `config` is appended to the base configuration (by default: any user logs
    in, servers are local processes).
    """

    name = "jupyterhub"

    def __init__(self, workdir: Path, keep_proxy: bool = False, config: str = "") -> None:
        try:
            import jupyterhub  # noqa: F401
        except ImportError:
            pytest.fail(
                "jupyterhub is not installed: pip install -r tests/smoke_requirements.txt",
                pytrace=False,
            )
        super().__init__(workdir)
        self.url = f"http://127.0.0.1:{free_port()}"
        self.proxy_pid_file = workdir / "proxy.pid"
        base = f"""
            c.JupyterHub.bind_url = "{self.url}"
            c.JupyterHub.hub_bind_url = "http://127.0.0.1:{free_port()}"
            c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{free_port()}"
            c.ConfigurableHTTPProxy.command = ["{configurable_http_proxy()}"]
            c.ConfigurableHTTPProxy.pid_file = "{self.proxy_pid_file}"
            c.JupyterHub.cleanup_proxy = {not keep_proxy}
            c.JupyterHub.db_url = "sqlite:///{workdir}/jupyterhub.sqlite"
            c.JupyterHub.cookie_secret_file = "{workdir}/cookie_secret"
            c.JupyterHub.pid_file = "{workdir}/jupyterhub.pid"
        """
        default = """
            c.JupyterHub.authenticator_class = "dummy"
            c.JupyterHub.spawner_class = "simple"
        """
        text = textwrap.dedent(base) + textwrap.dedent(config or default)
        (workdir / "jupyterhub_config.py").write_text(text)

    def start(self) -> JupyterHub:
        # Through the proxy: ready once the hub's route is registered.
        self.launch(
            [sys.executable, "-m", "jupyterhub", "-f", "jupyterhub_config.py"],
            lambda: requests.get(f"{self.url}/hub/api/health", timeout=2).status_code == 200,
            cwd=self.workdir,
        )
        return self

    def stop_hub(self) -> None:
        super().stop()

    def stop(self) -> None:
        self.stop_hub()
        if self.proxy_pid_file.exists():
            pid = int(self.proxy_pid_file.read_text().strip() or 0)
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            self.proxy_pid_file.unlink()


class BareProxy(LocalService):
    """JupyterHub's proxy alone, with no route: a hub's proxy that lost its default route.

    configurable-http-proxy answers every URL 404 itself then, whatever the hub
    behind it would have said.
    """

    name = "proxy"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.url = f"http://127.0.0.1:{free_port()}"

    def start(self) -> BareProxy:
        command = [
            str(configurable_http_proxy()),
            "--ip=127.0.0.1",
            f"--port={self.url.rsplit(':', 1)[1]}",
            "--api-ip=127.0.0.1",
            f"--api-port={free_port()}",
        ]
        self.launch(
            command,
            lambda: requests.get(self.url, timeout=2).status_code == 404,
            env={**os.environ, "CONFIGPROXY_AUTH_TOKEN": secrets.token_hex(16)},
        )
        return self


class BinderHub(LocalService):
    """BinderHub on a free loopback port, configured by `binderhub_config.py` in `workdir`."""

    name = "binderhub"

    def __init__(self, workdir: Path, config: str, kubeconfig: Path) -> None:
        super().__init__(workdir)
        self.url = f"http://127.0.0.1:{free_port()}"
        self.kubeconfig = kubeconfig
        self.config = workdir / "binderhub_config.py"
        port = f"c.BinderHub.port = {self.url.rsplit(':', 1)[1]}\n"
        self.config.write_text(port + textwrap.dedent(config))
        self.config.chmod(0o600)

    def start(self) -> BinderHub:
        self.launch(
            [sys.executable, "-m", "tests.testbed.serve_binderhub", f"--config={self.config}"],
            lambda: requests.get(f"{self.url}/versions", timeout=2).status_code == 200,
            cwd=PROJECT_ROOT,
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
        )
        return self


@dataclass(frozen=True)
class Repository:
    """A bare git repository BinderHub reads through its file:// URL."""

    path: Path

    @property
    def url(self) -> str:
        return f"file://{self.path}"

    @property
    def spec_prefix(self) -> str:
        """`git/<url-escaped URL>`: BinderHub's GitRepoProvider spec without its ref."""
        return f"git/{quote(self.url, safe='')}"

    def spec(self, ref: str = "HEAD") -> str:
        return f"{self.spec_prefix}/{ref}"


def bare_repository(path: Path, pushes: Path | None = None) -> Repository:
    """A bare repository with one commit (a Dockerfile); its hook logs each push to `pushes`."""
    seed = path.with_name(path.name + "-seed")
    git = {**os.environ, **git_environment(path.parent / "no-key", path.parent / "no-hosts")}
    subprocess.run(["git", "init", "--quiet", "--bare", str(path)], check=True, env=git)
    subprocess.run(["git", "init", "--quiet", str(seed)], check=True, env=git)
    (seed / "Dockerfile").write_text("FROM scratch\n")
    for command in (
        ["git", "-C", str(seed), "add", "Dockerfile"],
        ["git", "-C", str(seed), "commit", "--quiet", "-m", "seed"],
        ["git", "-C", str(seed), "push", "--quiet", str(path), "HEAD:refs/heads/main"],
        ["git", "-C", str(path), "symbolic-ref", "HEAD", "refs/heads/main"],
    ):
        subprocess.run(command, check=True, env=git)
    if pushes is not None:
        hook = path / "hooks" / "post-receive"
        hook.write_text(f"#!/bin/sh\ncat >> '{pushes}'\n")
        hook.chmod(0o755)
    return Repository(path)


class BinderBed:
    """`with BinderBed(folder, cluster) as bed:` JupyterHub and BinderHub, up and wired.

    Build pods go to a namespace of the bed's own, removed at the end with the
    ClusterLogs object that gives them their log.
    """

    def __init__(self, workdir: Path, cluster: Any) -> None:
        self.workdir = workdir
        self.cluster = cluster
        self.namespace = f"binder-bed-{secrets.token_hex(3)}"
        self.api_token = secrets.token_hex(32)
        self.observer_token = secrets.token_hex(32)
        repositories = workdir / "repositories"
        repositories.mkdir()
        self.launchable = bare_repository(repositories / "requirements.git")
        self.failing = bare_repository(repositories / f"{BUILD_FAILS}.git")
        self.hanging = bare_repository(repositories / f"{BUILD_HANGS}.git")
        self.unanswering = bare_repository(repositories / f"{NEVER_ANSWERS}.git")
        self.hub = JupyterHub(self._folder("hub"), keep_proxy=True, config=self._hub_config())
        self.binder = BinderHub(self._folder("binder"), self._binder_config(), cluster.kubeconfig)

    def _folder(self, name: str) -> Path:
        folder = self.workdir / name
        folder.mkdir()
        return folder

    def __enter__(self) -> BinderBed:
        self._require_build_stages()
        self.cluster.kubectl("create", "namespace", self.namespace)
        try:
            self._apply_build_log()
            _wait_for(
                lambda: (
                    "default"
                    in self.cluster.kubectl(
                        "-n", self.namespace, "get", "serviceaccounts", "-o", "name"
                    )
                ),
                30,
                f"the default service account of {self.namespace}",
            )
            self.hub.start()
            self.binder.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.binder.stop()
        self.hub.stop()
        self.cluster.kubectl("delete", "clusterlogs", self.namespace, "--ignore-not-found")
        self.cluster.kubectl("delete", "namespace", self.namespace, "--wait=false")

    def _require_build_stages(self) -> None:
        """Fail clearly on a cluster started before its stages file gained today's stages."""
        running_config = clusters.workdir(self.cluster.name) / "kwok.yaml"

        def stages(path: Path) -> set[str]:
            documents = yaml.safe_load_all(path.read_text()) if path.is_file() else []
            return {d["metadata"]["name"] for d in documents if d and d.get("kind") == "Stage"}

        missing = stages(clusters.STAGES_FILE) - stages(running_config)
        if missing:
            pytest.fail(
                f"the local cluster {self.cluster.name} runs without the stages "
                f"{', '.join(sorted(missing))} of {clusters.STAGES_FILE.name}: it was started "
                f"before they were added. Restart it: invoke cluster.down --name "
                f"{self.cluster.name}; invoke cluster.up --name {self.cluster.name}",
                pytrace=False,
            )

    def _apply_build_log(self) -> None:
        log = self.workdir / "build-pod.log"
        # The CRI log format KWOK reads: time, stream, "F" for a full line, the line.
        log.write_text(
            "".join(
                f"2026-01-01T00:00:{second:02d}.000000000Z stdout F {json.dumps(event)}\n"
                for second, event in enumerate(BUILD_LOG)
            )
        )
        logs = {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "ClusterLogs",
            "metadata": {"name": self.namespace},
            "spec": {
                "selector": {"matchNamespaces": [self.namespace]},
                "logs": [{"containers": ["builder"], "logsFile": str(log)}],
            },
        }
        manifest = self.workdir / "build-logs.json"
        manifest.write_text(json.dumps(logs))
        self.cluster.kubectl("apply", "-f", str(manifest))

    def _hub_config(self) -> str:
        home = self.workdir / "home"
        return f"""
            import sys

            from binderhub.binderspawner_mixin import BinderSpawnerMixin
            from jupyterhub.spawner import SimpleLocalProcessSpawner


            class BinderSpawner(BinderSpawnerMixin, SimpleLocalProcessSpawner):
                def get_args(self):
                    # BinderSpawnerMixin asks for every interface; the tests' servers
                    # listen on loopback.
                    args = super().get_args()
                    return ["--ip=127.0.0.1" if a == "--ip=0.0.0.0" else a for a in args]

                def start(self):
                    # The image of a repository named {NEVER_ANSWERS} starts a process
                    # that never serves, and ends by itself once BinderHub has given up.
                    if "{NEVER_ANSWERS}" in self.user_options.get("repo_url", ""):
                        self.cmd = [sys.executable, "-c", "import time; time.sleep(90)"]
                    return super().start()


            c.JupyterHub.authenticator_class = "null"
            c.JupyterHub.spawner_class = BinderSpawner
            c.BinderSpawner.cmd = [sys.executable, "-m", "jupyter_server"]
            c.BinderSpawner.args = ["--ServerApp.allow_root=True"]
            c.BinderSpawner.http_timeout = {LAUNCH_TIMEOUT * 3}
            c.BinderSpawner.start_timeout = {LAUNCH_TIMEOUT * 3}
            c.SimpleLocalProcessSpawner.home_dir_template = "{home}/{{username}}"
            c.JupyterHub.services = [
                {{"name": "binder", "api_token": "{self.api_token}"}},
                {{"name": "test-bed", "api_token": "{self.observer_token}"}},
            ]
            c.JupyterHub.load_roles = [
                # As the binderhub chart grants its service.
                {{"name": "binder", "services": ["binder"], "scopes": ["servers", "admin:users"]}},
                {{
                    "name": "test-bed",
                    "services": ["test-bed"],
                    "scopes": ["list:users", "read:users", "read:servers", "admin:server_state"],
                }},
            ]
        """

    def _binder_config(self) -> str:
        return f"""
            c.BinderHub.hub_url = "{self.hub.url}/"
            c.BinderHub.hub_api_token = "{self.api_token}"
            c.BinderHub.builder_required = True
            c.BinderHub.build_namespace = "{self.namespace}"
            c.KubernetesBuildExecutor.namespace = "{self.namespace}"
            c.BinderHub.use_registry = True
            c.BinderHub.registry_class = "binderhub.registry.FakeRegistry"
            c.BinderHub.image_prefix = "registry.invalid/binder-bed/"
            c.GitRepoProvider.allowed_protocols = {{"file"}}
            c.Launcher.launch_timeout = {LAUNCH_TIMEOUT}
            c.Launcher.retries = 1
        """

    def servers(self) -> dict[str, dict[str, Any]]:
        """Every server the hub has started, by user name: its model, with its state (pid)."""
        answer = requests.get(
            f"{self.hub.url}/hub/api/users",
            headers={"Authorization": f"token {self.observer_token}"},
            timeout=10,
        )
        answer.raise_for_status()
        return {
            user["name"]: server
            for user in answer.json()
            for server in (user.get("servers") or {}).values()
        }

    def build_pods(self) -> list[dict[str, Any]]:
        pods = self.cluster.kubectl(
            "-n", self.namespace, "get", "pods", "-l", "component=binderhub-build", "-o", "json"
        )
        return json.loads(pods)["items"]


def _wait_for(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds:g}s waiting for {what}", pytrace=False)
        time.sleep(0.5)
