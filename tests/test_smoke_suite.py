"""The deployment validation suite (tests/smoke/), run for real against local targets.

The hub checks run against a real JupyterHub with its real proxy
(configurable-http-proxy), healthy and broken. BinderHub cannot run here, so the
binder, launch and build checks run against tests/fakes/binderhub_events.py,
which speaks BinderHub's event stream. The cluster checks run against the local
cluster. Each run is the suite as `invoke smoke-test` starts it, in its own
pytest process; the assertions read its JUnit report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml
from invoke import Context

from tasks.errors import StepFailure
from tasks.output import masker
from tasks.pipeline import StepContext, load_registry
from tasks.registry import REGISTRY_FILE
from tasks.runner import PROJECT_ROOT, Runner
from tasks.smoke import CheckOutcome, component_states, read_report, suite_command, validate
from tests.fakes.binderhub_events import FAILED_BUILD_LOG, FakeBinderHub
from tests.fakes.sshd import LocalSshd, keypair
from tests.smoke.launches import cleanup_command, git_environment, scratch_commands

CHP_VERSION = "5.3.0"
NPM_PREFIX = Path.home() / ".cache" / "binder-deploy" / "npm"
CHP = NPM_PREFIX / "node_modules" / ".bin" / "configurable-http-proxy"
# Patient enough for a loaded machine, short enough that a broken target fails fast.
FAST = {
    "SMOKE_WARMUP_SECONDS": "0",
    "SMOKE_RETRY_SECONDS": "0.2",
    "SMOKE_REQUEST_SECONDS": "5",
    "SMOKE_STALL_SECONDS": "5",
    "SMOKE_TEST_TIMEOUT": "30",
}


# --- running the suite ------------------------------------------------------------------


@dataclass
class SuiteRun:
    exit_code: int
    output: str
    outcomes: dict[str, CheckOutcome]

    def result(self, name: str) -> str:
        return self.outcomes[name].result

    def message(self, name: str) -> str:
        return self.outcomes[name].message

    def with_result(self, result: str) -> set[str]:
        return {name for name, outcome in self.outcomes.items() if outcome.result == result}


def run_suite(env: str, tmp_path: Path, *args: str, **settings: str) -> SuiteRun:
    """The suite against `env` in a fresh pytest process, with only `settings` as overrides."""
    report = tmp_path / f"smoke-{env}-{time.monotonic_ns()}.xml"
    command = suite_command(load_registry().get(env), report) + list(args)
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SMOKE_", "PYTEST_")) and key != "KUBECONFIG"
    }
    done = subprocess.run(
        command,
        cwd=PROJECT_ROOT,
        env={**inherited, **FAST, **settings},
        capture_output=True,
        text=True,
        timeout=120,
    )
    outcomes = {o.name: o for o in read_report(report)} if report.exists() else {}
    return SuiteRun(done.returncode, done.stdout + done.stderr, outcomes)


def step_context(env: str, **settings: str) -> StepContext:
    registry = load_registry()
    runner = Runner(Context(), env={**FAST, **settings})
    return StepContext(Context(), registry, registry.get(env), runner, False, "smoke-test")


# --- a real JupyterHub ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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


class JupyterHub:
    """A JupyterHub on free local ports, with its proxy, run from a config in `workdir`.

    `keep_proxy` leaves the proxy running when the hub stops, as happens on a
    site when the hub pod dies: the proxy keeps routing to a hub that is gone.
    """

    def __init__(self, workdir: Path, keep_proxy: bool = False) -> None:
        try:
            import jupyterhub  # noqa: F401
        except ImportError:
            pytest.fail(
                "jupyterhub is not installed: pip install -r tests/smoke_requirements.txt",
                pytrace=False,
            )
        self.workdir = workdir
        self.url = f"http://127.0.0.1:{free_port()}"
        self.proxy_pid_file = workdir / "proxy.pid"
        config = f"""
            c.JupyterHub.bind_url = "{self.url}"
            c.JupyterHub.hub_bind_url = "http://127.0.0.1:{free_port()}"
            c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{free_port()}"
            c.ConfigurableHTTPProxy.command = ["{configurable_http_proxy()}"]
            c.ConfigurableHTTPProxy.pid_file = "{self.proxy_pid_file}"
            c.JupyterHub.cleanup_proxy = {not keep_proxy}
            c.JupyterHub.authenticator_class = "dummy"
            c.JupyterHub.spawner_class = "simple"
            c.JupyterHub.db_url = "sqlite:///{workdir}/jupyterhub.sqlite"
            c.JupyterHub.cookie_secret_file = "{workdir}/cookie_secret"
            c.JupyterHub.pid_file = "{workdir}/jupyterhub.pid"
        """
        (workdir / "jupyterhub_config.py").write_text(textwrap.dedent(config))
        self.log = workdir / "jupyterhub.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> JupyterHub:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "jupyterhub", "-f", "jupyterhub_config.py"],
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                # Through the proxy: ready once the hub's route is registered.
                if requests.get(f"{self.url}/hub/api/health", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        self.stop()
        pytest.fail(f"JupyterHub did not come up at {self.url}:\n{tail}", pytrace=False)

    def stop_hub(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def stop(self) -> None:
        self.stop_hub()
        if self.proxy_pid_file.exists():
            pid = int(self.proxy_pid_file.read_text().strip() or 0)
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            self.proxy_pid_file.unlink()


@pytest.fixture(scope="module")
def jupyterhub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterHub]:
    hub = JupyterHub(tmp_path_factory.mktemp("jupyterhub")).start()
    yield hub
    hub.stop()


@pytest.fixture
def binderhub() -> Iterator[FakeBinderHub]:
    with FakeBinderHub() as fake:
        yield fake


HUB_CHECKS = {
    "test_hub::test_hub_health",
    "test_hub::test_missing_user_server",
    "test_hub::test_unknown_prefix",
}
BINDER_CHECKS = {
    "test_binder::test_binder_page",
    "test_binder::test_binder_health",
    "test_binder::test_unknown_provider",
    "test_binder::test_badge[badge_logo.svg]",
    "test_binder::test_badge[badge.svg]",
    "test_launch::test_launch",
    "test_federation::test_active_hosts",
}


def site_urls(hub: JupyterHub, binder: FakeBinderHub) -> dict[str, str]:
    return {
        "SMOKE_HUB_URL": hub.url,
        "SMOKE_BINDER_URL": binder.url,
        "SMOKE_FEDERATION_REDIRECT_URL": binder.url,
    }


# --- which checks run where -------------------------------------------------------------


def test_components_follow_the_layered_values() -> None:
    registry = load_registry()
    prod = component_states(registry.get("prod"))
    assert all(state.enabled for state in prod.values())
    staging = component_states(registry.get("staging"))["federation-redirect"]
    assert not staging.enabled
    assert staging.decided_by == "federationRedirect.enabled: false in config/staging.yaml"
    local = component_states(registry.get("local-staging"))
    assert local["binderhub"].reason == (
        "enables binderhub (binderhubEnabled: true in config/local-staging.yaml)"
    )
    assert local["static-files"].enabled and local["node-agent"].enabled


def test_the_registry_has_the_last_word_on_components() -> None:
    prod = dataclasses.replace(load_registry().get("prod"), components={"node-agent": False})
    state = component_states(prod)["node-agent"]
    assert not state.enabled
    assert state.decided_by == "components.node-agent in config/environments.yaml"


def test_local_environment_without_urls_runs_only_cluster_checks(tmp_path: Path) -> None:
    run = run_suite("local-staging", tmp_path)
    assert run.exit_code == 0, run.output
    assert run.with_result("passed") == set()
    for name in HUB_CHECKS | BINDER_CHECKS:
        assert run.result(name) == "skipped"
    assert run.message("test_hub::test_hub_health") == (
        "environment local-staging has no public URL (urls.hub): "
        "its pods are simulated by KWOK and serve no HTTP"
    )
    assert run.message("test_launch::test_launch") == (
        "environment local-staging has no public URL (urls.binder): "
        "its pods are simulated by KWOK and serve no HTTP"
    )
    assert "KUBECONFIG is not set" in run.message("test_cluster::test_no_pod_restarting")


def test_checks_of_a_disabled_component_skip_naming_the_values_file(
    tmp_path: Path, binderhub: FakeBinderHub
) -> None:
    switched_off = tmp_path / "no-binderhub.yaml"
    switched_off.write_text("binderhubEnabled: false\n")
    registry = yaml.safe_load((PROJECT_ROOT / REGISTRY_FILE).read_text())
    registry["environments"]["local-staging"]["extra_values"] = [str(switched_off)]
    (tmp_path / "registry.yaml").write_text(yaml.safe_dump(registry))
    local = run_suite(
        "local-staging",
        tmp_path,
        "-k",
        "binder_page",
        SMOKE_BINDER_URL=binderhub.url,
        DEPLOY_REGISTRY=str(tmp_path / "registry.yaml"),
    )
    assert local.message("test_binder::test_binder_page") == (
        f"environment local-staging disables binderhub (binderhubEnabled: false in {switched_off})"
    )
    staging = run_suite("staging", tmp_path, "-k", "active_hosts")
    assert staging.message("test_federation::test_active_hosts") == (
        "environment staging has no public URL (urls.federation_redirect)"
    )
    overridden = run_suite(
        "staging", tmp_path, "-k", "active_hosts", SMOKE_FEDERATION_REDIRECT_URL=binderhub.url
    )
    assert overridden.message("test_federation::test_active_hosts") == (
        "environment staging disables federation-redirect "
        "(federationRedirect.enabled: false in config/staging.yaml)"
    )


# --- the hub checks against a real JupyterHub ------------------------------------------


def test_hub_checks_pass_against_a_real_jupyterhub(tmp_path: Path, jupyterhub: JupyterHub) -> None:
    run = run_suite("prod", tmp_path, "-k", "test_hub", SMOKE_HUB_URL=jupyterhub.url)
    assert run.with_result("passed") == HUB_CHECKS, run.output


def test_stopped_hub_fails_naming_the_url(tmp_path: Path, capsys) -> None:
    hub = JupyterHub(tmp_path, keep_proxy=True).start()
    try:
        hub.stop_hub()
        with pytest.raises(StepFailure) as failure:
            validate(
                step_context("prod", SMOKE_HUB_URL=hub.url),
                keyword="test_hub_health",
                warmup=0,
                report=tmp_path / "report.xml",
            )
    finally:
        hub.stop()
    assert failure.value.why == "1 smoke test(s) failed on prod: test_hub::test_hub_health."
    printed = capsys.readouterr().out
    assert "FAILED test_hub::test_hub_health — The hub's health endpoint /hub/api/health" in printed
    # The proxy outlived the hub and says so: the URL, its status, its body.
    assert f"GET {hub.url}/hub/api/health answered 503 Service Unavailable" in failure.value.details


def test_hub_behind_a_wrong_prefix_fails_its_health_and_404s_unknown_urls(
    tmp_path: Path, jupyterhub: JupyterHub
) -> None:
    wrong = f"{jupyterhub.url}/not-the-hub"
    run = run_suite("prod", tmp_path, "-k", "test_hub", SMOKE_HUB_URL=wrong)
    assert run.result("test_hub::test_hub_health") == "failed"
    message = run.message("test_hub::test_hub_health")
    assert message.startswith(f"GET {wrong}/hub/api/health (redirected to ")
    assert "answered 404 Not Found: expected 200" in message
    assert run.result("test_hub::test_unknown_prefix") == "passed"


# --- the whole suite, healthy, through the task's own entry ----------------------------


def test_healthy_site_passes_and_the_report_says_what_each_test_checks(
    tmp_path: Path, jupyterhub: JupyterHub, binderhub: FakeBinderHub, capsys
) -> None:
    report = tmp_path / "report.xml"
    note = validate(
        step_context("prod", **site_urls(jupyterhub, binderhub)),
        keyword="not cluster",
        warmup=0,
        report=report,
    )
    assert note.startswith("10 passed, 1 skipped")
    outcomes = {o.name: o for o in read_report(report)}
    assert {n for n, o in outcomes.items() if o.result == "passed"} == HUB_CHECKS | BINDER_CHECKS
    assert outcomes["test_launch::test_launch"].checks == (
        "A known repository launches through the build event stream and its server's API answers."
    )
    assert outcomes["test_build::test_fresh_build"].message == (
        "environment prod provides no push key for a scratch repository "
        "(secrets/binderhub-ci-repos-deploy-key)"
    )
    assert binderhub.builds == ["gh/binder-examples/requirements/50533eb"]
    # The launched server was shut down through its own API.
    assert [server.running for server in binderhub.servers.values()] == [False]
    assert "smoke tests on prod: 10 passed, 1 skipped" in capsys.readouterr().out


def test_dry_run_prints_the_suite_command_and_runs_nothing(capsys) -> None:
    ctx = step_context("prod")
    ctx.runner.dry_run = True
    assert validate(ctx) == "dry run: the suite did not run"
    printed = capsys.readouterr().out
    assert "[dry-run] " in printed
    assert f"tests/smoke --env=prod --rootdir={PROJECT_ROOT}" in printed
    assert f"--junitxml={PROJECT_ROOT}/reports/smoke-prod.xml" in printed


# --- launches through the event stream --------------------------------------------------


def test_failed_build_names_the_phase_and_the_log(tmp_path: Path) -> None:
    with FakeBinderHub(build="failed") as binder:
        run = run_suite("prod", tmp_path, "-k", "test_launch", SMOKE_BINDER_URL=binder.url)
    message = run.message("test_launch::test_launch")
    assert message.startswith(
        "BinderHub failed to build gh/binder-examples/requirements/50533eb "
        "(after phase 'building'; phases seen: waiting, fetching, building): "
        "Error during build: exit status 1"
    )
    assert FAILED_BUILD_LOG.splitlines()[-1] in message


def test_stalled_build_stream_fails_with_a_timeout_message(tmp_path: Path) -> None:
    with FakeBinderHub(build="stall", heartbeat=0.1) as binder:
        started = time.monotonic()
        run = run_suite(
            "prod",
            tmp_path,
            "-k",
            "test_launch",
            SMOKE_BINDER_URL=binder.url,
            SMOKE_STALL_SECONDS="1",
        )
    message = run.message("test_launch::test_launch")
    assert message.startswith(
        f"the build stream {binder.url}/build/gh/binder-examples/requirements/50533eb stalled: "
        "no event for 1s (last phase: 'building')."
    )
    assert time.monotonic() - started < 20


def test_every_test_has_a_timeout_of_its_own(tmp_path: Path) -> None:
    # A launch gives up on its own just before its timeout, saying where it was.
    with FakeBinderHub(build="stall") as binder:
        stalled = run_suite(
            "prod",
            tmp_path,
            "-k",
            "test_launch",
            SMOKE_BINDER_URL=binder.url,
            SMOKE_STALL_SECONDS="60",
            SMOKE_TEST_TIMEOUT="2",
        )
    assert stalled.message("test_launch::test_launch").startswith(
        f"the build stream {binder.url}/build/gh/binder-examples/requirements/50533eb did not "
        "reach 'ready' within 1.8s (after phase 'building'"
    )
    # Anything else that hangs is stopped by pytest-timeout.
    with FakeBinderHub(delay=30) as binder:
        started = time.monotonic()
        hung = run_suite(
            "prod",
            tmp_path,
            "-k",
            "binder_health",
            SMOKE_BINDER_URL=binder.url,
            SMOKE_REQUEST_SECONDS="60",
            SMOKE_TEST_TIMEOUT="2",
        )
    assert hung.message("test_binder::test_binder_health").startswith(
        "Timeout (>2.0s) from pytest-timeout"
    )
    assert time.monotonic() - started < 15


def test_failures_never_show_the_environments_secrets_or_tokens(demo_secrets: None) -> None:
    from tests.smoke.probes import mask
    from tests.smoke.target import Target

    try:
        Target.load(load_registry().get("local-prod"), environ={}).register_secrets()
        secret = yaml.safe_load((PROJECT_ROOT / "secrets/demo/config/local-prod.yaml").read_text())[
            "federationRedirect"
        ]["secretToken"]
        shown = mask(
            f"GET https://hub.example/user/x/?token=abc123def456 answered 500: {secret}\n"
            '  body: {"url": "https://hub.example/user/x/", "token": "s3cr3t-t0ken"}'
        )
    finally:
        masker.forget_all()
    assert secret not in shown
    assert "abc123def456" not in shown and "s3cr3t-t0ken" not in shown
    assert "?token=********" in shown and '"token": "********"' in shown


def test_warm_up_retries_a_proxy_that_answers_503_at_first(tmp_path: Path) -> None:
    with FakeBinderHub(warming_requests=3) as binder:
        patient = run_suite(
            "prod",
            tmp_path,
            "-k",
            "binder_health",
            SMOKE_BINDER_URL=binder.url,
            SMOKE_WARMUP_SECONDS="20",
        )
    assert patient.result("test_binder::test_binder_health") == "passed", patient.output
    with FakeBinderHub(warming_requests=3) as binder:
        hasty = run_suite("prod", tmp_path, "-k", "binder_health", SMOKE_BINDER_URL=binder.url)
    assert hasty.message("test_binder::test_binder_health").startswith(
        f"GET {binder.url}/health answered 503 Service Unavailable: expected 200"
    )


def test_unhealthy_binderhub_names_the_failing_check(tmp_path: Path) -> None:
    with FakeBinderHub(healthy=False) as binder:
        run = run_suite("prod", tmp_path, "-k", "binder_health", SMOKE_BINDER_URL=binder.url)
    assert run.message("test_binder::test_binder_health").startswith(
        f"GET {binder.url}/health answered 503 Service Unavailable: expected 200\n"
        '  body: {"ok": false, "checks": [{"service": "JupyterHub API", "ok": false}'
    )


# --- the forced fresh build -------------------------------------------------------------


def test_scratch_commit_is_pushed_with_the_key_alone(tmp_path: Path) -> None:
    key, known_hosts = tmp_path / "deploy key", tmp_path / "known_hosts"
    ssh = git_environment(key, known_hosts)["GIT_SSH_COMMAND"]
    assert ssh.startswith(f"ssh -i '{key}' -o IdentitiesOnly=yes -o UserKnownHostsFile=")
    assert "StrictHostKeyChecking=accept-new" in ssh and "BatchMode=yes" in ssh
    clone = tmp_path / "clone"
    commands = scratch_commands("git@github.com:org/scratch.git", "smoke-x", clone)
    assert commands[0] == [
        "git",
        "clone",
        "--quiet",
        "--depth=1",
        "git@github.com:org/scratch.git",
        str(clone),
    ]
    assert commands[-1][-2:] == ["origin", "HEAD:refs/heads/smoke-x"]
    assert cleanup_command("smoke-x", clone)[-2:] == ["origin", ":refs/heads/smoke-x"]


def scratch_repository(tmp_path: Path) -> tuple[Path, Path]:
    """A bare repository with one commit, and the file its hook logs each push to."""
    remote, seed = tmp_path / "scratch.git", tmp_path / "seed"
    git = {**os.environ, **git_environment(tmp_path / "no-key", tmp_path / "no-hosts")}
    subprocess.run(["git", "init", "--quiet", "--bare", str(remote)], check=True, env=git)
    subprocess.run(["git", "init", "--quiet", str(seed)], check=True, env=git)
    (seed / "Dockerfile").write_text("FROM scratch\n")
    for command in (
        ["git", "-C", str(seed), "add", "Dockerfile"],
        ["git", "-C", str(seed), "commit", "--quiet", "-m", "seed"],
        ["git", "-C", str(seed), "push", "--quiet", str(remote), "HEAD:refs/heads/main"],
        ["git", "-C", str(remote), "symbolic-ref", "HEAD", "refs/heads/main"],
    ):
        subprocess.run(command, check=True, env=git)
    pushes = tmp_path / "pushes.log"
    hook = remote / "hooks" / "post-receive"
    hook.write_text(f"#!/bin/sh\ncat >> '{pushes}'\n")
    hook.chmod(0o755)
    return remote, pushes


def test_fresh_build_pushes_over_ssh_with_the_key_launches_and_deletes_the_branch(
    tmp_path: Path, binderhub: FakeBinderHub
) -> None:
    remote, pushes = scratch_repository(tmp_path)
    with LocalSshd(tmp_path / "sshd") as sshd:
        settings = {
            "SMOKE_BINDER_URL": binderhub.url,
            "SMOKE_SCRATCH_REMOTE": f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{remote}",
            "SMOKE_SCRATCH_SPEC": "gh/org/scratch",
        }
        run = run_suite(
            "prod",
            tmp_path,
            "-k",
            "fresh_build",
            SMOKE_SCRATCH_KEY=str(sshd.client_key),
            **settings,
        )
        stranger = keypair(tmp_path / "stranger")
        refused = run_suite(
            "prod", tmp_path, "-k", "fresh_build", SMOKE_SCRATCH_KEY=str(stranger), **settings
        )
    assert run.result("test_build::test_fresh_build") == "passed", run.output
    [built] = binderhub.builds
    assert built.startswith("gh/org/scratch/smoke-prod-")
    branch = built.rsplit("/", 1)[1]
    zero = "0" * 40
    created, deleted = [line.split() for line in pushes.read_text().splitlines()]
    assert created[0] == zero and created[2] == f"refs/heads/{branch}"
    assert deleted[1] == zero and deleted[2] == f"refs/heads/{branch}"
    pushed_file = subprocess.run(
        ["git", "-C", str(remote), "show", f"{created[1]}:branchname"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert pushed_file == branch + "\n"
    message = refused.message("test_build::test_fresh_build")
    assert message.startswith("`git clone --quiet --depth=1 ssh://")
    assert "Permission denied (publickey)" in message


# --- the cluster checks against the local cluster ---------------------------------------


def site_objects(namespace: str, crashing: bool = False) -> list[dict]:
    """The chart's workloads as local-staging runs them, optionally with a crashing one."""

    def labels(component: str) -> dict[str, str]:
        return {"app.kubernetes.io/part-of": "mybinder", "app.kubernetes.io/component": component}

    def pod_spec(component: str, extra: dict[str, str] | None = None) -> dict:
        return {
            "metadata": {"labels": {**labels(component), **(extra or {})}},
            "spec": {"containers": [{"name": "main", "image": f"registry.invalid/{component}:1"}]},
        }

    def deployment(name: str, component: str, extra: dict[str, str] | None = None) -> dict:
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels(component)},
                "template": pod_spec(component, extra),
            },
        }

    def service(name: str, component: str) -> dict:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": labels(component), "ports": [{"port": 80}]},
        }

    crash = {"kwok.binder.test/fail": "crashloop"} if crashing else None
    objects = [
        deployment("static-files", "static", crash),
        service("static-files", "static"),
        deployment("federation-redirect", "federation-redirect"),
        service("federation-redirect", "federation-redirect"),
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": "node-agent", "namespace": namespace},
            "spec": {
                "selector": {"matchLabels": labels("node-agent")},
                "template": pod_spec("node-agent"),
            },
        },
    ]
    if crashing:
        # The redirector's Deployment is gone, and its Service serves nobody.
        objects = [
            o
            for o in objects
            if not (o["kind"] == "Deployment" and o["metadata"]["name"] == "federation-redirect")
        ]
    return objects


def deploy(cluster, namespace: str, objects: list[dict], tmp_path: Path) -> None:
    manifest = tmp_path / f"{namespace}.json"
    manifest.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    cluster.kubectl("create", "namespace", namespace)
    # Pods are refused until the service account controller has filled in the namespace.
    wait_for(
        lambda: (
            "default" in cluster.kubectl("-n", namespace, "get", "serviceaccounts", "-o", "name")
        ),
        30,
        f"the default service account of {namespace}",
    )
    cluster.kubectl("apply", "-f", str(manifest))


def wait_for(check, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds:g}s waiting for {what}")
        time.sleep(0.5)


def registry_with_namespace(tmp_path: Path, env: str, namespace: str) -> Path:
    """A copy of the registry whose `env` lives in `namespace`."""
    document = yaml.safe_load((PROJECT_ROOT / REGISTRY_FILE).read_text())
    document["environments"][env]["namespace"] = namespace
    # The namespaces hold the site's own workloads only, not BinderHub.
    document["environments"][env]["components"] = {"binderhub": False}
    path = tmp_path / f"environments-{namespace}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def invoke_smoke_test(tmp_path: Path, namespace: str) -> tuple[subprocess.CompletedProcess, Path]:
    """`invoke smoke-test --env=local-staging` against `namespace`, as an operator runs it."""
    report = tmp_path / f"{namespace}.xml"
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SMOKE_", "PYTEST_")) and key != "KUBECONFIG"
    }
    registry = registry_with_namespace(tmp_path, "local-staging", namespace)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "invoke",
            "smoke-test",
            "--env=local-staging",
            "--warmup=2",
            f"--report={report}",
        ],
        cwd=PROJECT_ROOT,
        env={**inherited, "DEPLOY_REGISTRY": str(registry), "SMOKE_RETRY_SECONDS": "0.2"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done, report


@pytest.mark.cluster
def test_cluster_checks_on_the_local_cluster(local_cluster, tmp_path: Path) -> None:
    suffix = os.urandom(3).hex()
    healthy, broken = f"smoke-ok-{suffix}", f"smoke-broken-{suffix}"
    deploy(local_cluster, healthy, site_objects(healthy), tmp_path)
    deploy(local_cluster, broken, site_objects(broken, crashing=True), tmp_path)
    try:

        def ready(namespace: str) -> bool:
            pods = json.loads(local_cluster.kubectl("-n", namespace, "get", "pods", "-o", "json"))
            return bool(pods["items"]) and all(
                any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in p["status"].get("conditions", [])
                )
                for p in pods["items"]
            )

        def crash_looping() -> bool:
            pods = local_cluster.kubectl("-n", broken, "get", "pods", "--no-headers")
            return "CrashLoopBackOff" in pods

        wait_for(lambda: ready(healthy), 60, f"the pods of {healthy} to be ready")
        wait_for(crash_looping, 60, f"a pod of {broken} in CrashLoopBackOff")
        good, good_report = invoke_smoke_test(tmp_path, healthy)
        bad, bad_report = invoke_smoke_test(tmp_path, broken)
    finally:
        for namespace in (healthy, broken):
            local_cluster.kubectl("delete", "namespace", namespace, "--wait=false")
    assert good.returncode == 0, good.stdout[-3000:] + good.stderr[-3000:]
    assert "smoke-test: ok" in good.stdout
    outcomes = {o.name: o for o in read_report(good_report)}
    assert {n for n, o in outcomes.items() if o.result == "passed"} == {
        "test_cluster::test_services_have_ready_endpoints",
        "test_cluster::test_component_present[static-files]",
        "test_cluster::test_component_present[federation-redirect]",
        "test_cluster::test_component_present[node-agent]",
        "test_cluster::test_every_pod_ready[static-files]",
        "test_cluster::test_every_pod_ready[federation-redirect]",
        "test_cluster::test_every_pod_ready[node-agent]",
        "test_cluster::test_no_pod_restarting",
    }
    assert outcomes["test_cluster::test_component_present[binderhub]"].message == (
        "environment local-staging disables binderhub "
        "(components.binderhub in config/environments.yaml)"
    )

    assert bad.returncode == 1
    screen = bad.stdout + bad.stderr
    assert "FAILED: smoke-test on local-staging" in screen
    assert "Traceback" not in screen
    assert (
        "FAILED test_cluster::test_no_pod_restarting — No container restarted while the suite "
        "ran, and none is in CrashLoopBackOff." in screen
    )
    failed = {o.name: o.message for o in read_report(bad_report) if o.result == "failed"}
    assert failed["test_cluster::test_services_have_ready_endpoints"].startswith(
        f"in namespace {broken}, no ready endpoint serves: federation-redirect, static-files"
    )
    assert failed["test_cluster::test_component_present[federation-redirect]"] == (
        "Deployment federation-redirect (component federation-redirect) is missing from "
        f"namespace {broken}, though the environment enables federation-redirect "
        "(federationRedirect.enabled: true in mybinder/values.yaml)"
    )
    restarting = failed["test_cluster::test_no_pod_restarting"]
    assert restarting.startswith(f"containers restarting in {broken}")
    assert "static-files-" in restarting
    # The simulated crash loop alternates between its two states; either names the cause.
    assert "CrashLoopBackOff" in restarting or "last exit 1 (Error)" in restarting
