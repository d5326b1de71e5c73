"""The deployment validation suite (tests/smoke/), run for real against local targets.

The hub checks run against a real JupyterHub with its real proxy
(configurable-http-proxy), healthy and broken. The binder, launch and build
checks run against a live BinderHub, the service of a real JupyterHub that
launches real servers, building on the local cluster (tests/testbed/binderhub.py),
healthy and with its hub down, a build pod failing, a build hanging and a
launch timing out. A site that does not answer at first is retried a bounded
number of times, a wrong answer never. The cluster checks run against the
local cluster. Each run
is the suite as `invoke smoke-test` starts it, in its own pytest process; the
assertions read its JUnit report.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml
from invoke import Context

from tasks.config.context import StepContext, load_registry
from tasks.config.registry import REGISTRY_FILE
from tasks.core.errors import StepFailure
from tasks.core.runner import PROJECT_ROOT, Runner
from tasks.steps.smoke import (
    ASSERTION,
    ERROR,
    INFRASTRUCTURE,
    CheckOutcome,
    check_deployment,
    component_states,
    read_report,
    suite_command,
)
from tests.fakes import environments
from tests.fakes.binder_front import BinderFront
from tests.fakes.sshd import LocalSshd, free_port, keypair
from tests.smoke.launches import cleanup_command, git_environment, scratch_commands
from tests.testbed.binderhub import (
    BUILD_LOG,
    LAUNCH_TIMEOUT,
    SHARED_ENV,
    BareProxy,
    BinderBed,
    JupyterHub,
    bare_repository,
    require_binderhub,
)

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

    def kind(self, name: str) -> str:
        return self.outcomes[name].kind

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
    runner = Runner(Context(), env={**FAST, **settings})
    return environments.step_context(env, "smoke-test", runner=runner)


# --- a real JupyterHub ------------------------------------------------------------------


@pytest.fixture(scope="module")
def jupyterhub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterHub]:
    hub = JupyterHub(tmp_path_factory.mktemp("jupyterhub")).start()
    yield hub
    hub.stop()


@pytest.fixture(scope="module")
def bed(local_cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BinderBed]:
    """JupyterHub and BinderHub, building on the local cluster, started once for the module."""
    require_binderhub()
    with BinderBed(tmp_path_factory.mktemp("binder-bed"), local_cluster) as live:
        yield live


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


def test_without_binderhub_its_checks_skip_or_say_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "binderhub", None)  # as if not installed
    monkeypatch.setenv(SHARED_ENV, str(tmp_path))
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_binderhub()
    assert str(skipped.value) == (
        f"no BinderHub to test against: {tmp_path}/binderhub holds no binderhub wheel "
        f"(set {SHARED_ENV} to the folder that holds binderhub/)"
    )
    (tmp_path / "binderhub").mkdir()
    (tmp_path / "binderhub" / "binderhub-0.2.0-py3-none-any.whl").touch()
    with pytest.raises(pytest.fail.Exception) as failed:
        require_binderhub()
    assert str(failed.value) == (
        f"BinderHub is not installed: ./setup.sh installs it from {tmp_path}/binderhub"
    )


def live_site(bed: BinderBed, **settings: str) -> dict[str, str]:
    """The suite's settings for the live test bed: its URLs, what it launches, time to do so."""
    return {
        "SMOKE_BINDER_URL": bed.binder.url,
        "SMOKE_LAUNCH_SPEC": bed.launchable.spec(),
        # Beyond BinderHub's own launch timeout, so that its verdict is the one seen:
        # the stream is silent while a server starts.
        "SMOKE_STALL_SECONDS": str(LAUNCH_TIMEOUT * 2),
        "SMOKE_TEST_TIMEOUT": str(LAUNCH_TIMEOUT * 4),
        **settings,
    }


def wait_until_gone(pid: int, seconds: float = 30) -> bool:
    """Whether the process ended within `seconds`. One that ended but that the hub has not
    reaped yet (it polls its spawners every 30 s) is a zombie, and has ended."""
    deadline = time.monotonic() + seconds
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not running(pid)


def running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    # The state follows the command's name, in parentheses: "pid (name) S ...".
    return stat.rpartition(")")[2].split()[0] != "Z"


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


def test_checks_of_a_disabled_component_skip_naming_the_values_file(tmp_path: Path) -> None:
    switched_off = tmp_path / "no-binderhub.yaml"
    switched_off.write_text("binderhubEnabled: false\n")
    registry = yaml.safe_load((PROJECT_ROOT / REGISTRY_FILE).read_text())
    registry["environments"]["local-staging"]["releases"][-1]["extra_values"] = [str(switched_off)]
    (tmp_path / "registry.yaml").write_text(yaml.safe_dump(registry))
    # Nothing listens there: a disabled component's checks never ask.
    nowhere = "http://127.0.0.1:9"
    local = run_suite(
        "local-staging",
        tmp_path,
        "-k",
        "binder_page",
        SMOKE_BINDER_URL=nowhere,
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
        "staging", tmp_path, "-k", "active_hosts", SMOKE_FEDERATION_REDIRECT_URL=nowhere
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
            check_deployment(
                step_context("prod", SMOKE_HUB_URL=hub.url),
                keyword="test_hub_health",
                warmup=0,
                report=tmp_path / "report.xml",
            )
    finally:
        hub.stop()
    # The proxy outlived the hub and answers 503 for it: no answer from the hub, on
    # every attempt, which the failure screen tells from a wrong answer.
    assert failure.value.why == (
        "1 smoke test(s) failed on prod for infrastructure reasons: test_hub::test_hub_health."
    )
    assert failure.value.fix.startswith("Infrastructure: the site did not answer")
    assert "Assertion:" not in failure.value.fix
    printed = capsys.readouterr().out
    assert (
        "FAILED test_hub::test_hub_health (infrastructure) — The hub's health endpoint "
        "/hub/api/health" in printed
    )
    assert "(3 attempts in " in printed and ": 503 Service Unavailable (x3))" in printed
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
    # A wrong answer, from the hub itself: decided at once, never retried.
    assert run.kind("test_hub::test_hub_health") == ASSERTION
    assert "attempts" not in message
    assert run.result("test_hub::test_unknown_prefix") == "passed"


# --- the whole suite, healthy, through the task's own entry, against a live BinderHub --


@pytest.mark.cluster
def test_healthy_site_passes_and_the_report_says_what_each_test_checks(
    tmp_path: Path, bed: BinderBed, capsys
) -> None:
    report = tmp_path / "report.xml"
    before = set(bed.servers())
    # The hub checks go to BinderHub's own hub, whose null authenticator (the
    # binderhub chart's) answers a visitor's /user/ URL with its login page, 403.
    urls = {"SMOKE_HUB_URL": bed.hub.url, "SMOKE_FEDERATION_REDIRECT_URL": ""}
    with BinderFront() as redirector:
        urls["SMOKE_FEDERATION_REDIRECT_URL"] = redirector.url
        note = check_deployment(
            step_context("prod", **live_site(bed, **urls)),
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
    assert "smoke tests on prod: 10 passed, 1 skipped" in capsys.readouterr().out
    # BinderHub built the image in a build pod of the cluster, then deleted the pod.
    binder_log = bed.binder.log_text()
    assert "Started build build-file-" in binder_log
    assert bed.build_pods() == []
    # The hub started one real server for the launch; the suite stopped it through its own API.
    [launched] = [server for name, server in bed.servers().items() if name not in before]
    assert launched["url"].startswith("/user/") and launched["state"]["pid"] > 0
    assert wait_until_gone(launched["state"]["pid"]), "the launched server still runs"


def test_dry_run_prints_the_suite_command_and_runs_nothing(capsys) -> None:
    ctx = step_context("prod")
    ctx.runner.dry_run = True
    assert check_deployment(ctx) == "dry run: the suite did not run"
    printed = capsys.readouterr().out
    assert "[dry-run] " in printed
    assert f"tests/smoke --env=prod --rootdir={PROJECT_ROOT}" in printed
    assert f"--junitxml={PROJECT_ROOT}/reports/smoke-prod.xml" in printed


# --- launches through the event stream of the live BinderHub, and how they fail ----------


def launch_run(bed: BinderBed, tmp_path: Path, spec: str, **settings: str) -> SuiteRun:
    return run_suite(
        "prod", tmp_path, "-k", "test_launch", **live_site(bed, SMOKE_LAUNCH_SPEC=spec, **settings)
    )


@pytest.mark.cluster
def test_failed_build_pod_fails_the_launch_naming_the_build(bed: BinderBed, tmp_path: Path) -> None:
    spec = bed.failing.spec()
    run = launch_run(bed, tmp_path, spec)
    message = run.message("test_launch::test_launch")
    assert message.startswith(
        f"BinderHub failed to build {spec} "
        "(after phase 'building'; phases seen: waiting, fetching, building): "
        "the build ended in failure (BinderHub gave no reason)"
    ), run.output
    # The build's own log, as BinderHub relayed it from the pod.
    assert BUILD_LOG[-1]["message"].strip() in message


@pytest.mark.cluster
def test_launch_that_times_out_fails_naming_the_launch(bed: BinderBed, tmp_path: Path) -> None:
    spec = bed.unanswering.spec()
    run = launch_run(bed, tmp_path, spec)
    message = run.message("test_launch::test_launch")
    assert message.startswith(
        f"BinderHub failed to launch {spec} (after phase 'launching'; "
        "phases seen: waiting, fetching, building, built, launching): Image "
    ), run.output
    assert "took too long to launch" in message.splitlines()[0]


@pytest.mark.cluster
def test_stalled_build_fails_with_a_timeout_message(bed: BinderBed, tmp_path: Path) -> None:
    spec = bed.hanging.spec()
    stream = f"{bed.binder.url}/build/{spec}"
    run = launch_run(bed, tmp_path, spec, SMOKE_STALL_SECONDS="1")
    assert run.message("test_launch::test_launch").startswith(
        f"the build stream {stream} stalled: no event for 1s (last phase: 'building')."
    ), run.output
    # Silence up to the deadline: the launch gives up on its own, just before its timeout.
    # The timeout leaves room for the suite to start on a loaded machine.
    late = launch_run(bed, tmp_path, spec, SMOKE_STALL_SECONDS="60", SMOKE_TEST_TIMEOUT="10")
    assert late.message("test_launch::test_launch").startswith(
        f"the build stream {stream} did not reach 'ready' within 9s (after phase 'building'"
    ), late.output
    [pod] = bed.build_pods()
    assert pod["status"]["phase"] == "Running"


@pytest.mark.cluster
def test_a_hung_binderhub_is_stopped_by_the_tests_timeout(bed: BinderBed, tmp_path: Path) -> None:
    assert bed.binder.process is not None
    bed.binder.process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        hung = run_suite(
            "prod",
            tmp_path,
            "-k",
            "binder_health",
            SMOKE_BINDER_URL=bed.binder.url,
            SMOKE_REQUEST_SECONDS="60",
            SMOKE_TEST_TIMEOUT="2",
        )
    finally:
        bed.binder.process.send_signal(signal.SIGCONT)
    assert hung.message("test_binder::test_binder_health").startswith(
        "Timeout (>2.0s) from pytest-timeout"
    )
    # BinderHub never answered: no answer, not a wrong one.
    assert hung.kind("test_binder::test_binder_health") == INFRASTRUCTURE
    assert time.monotonic() - started < 15


def test_failures_never_show_the_environments_secrets_or_tokens(demo_secrets: None) -> None:
    from tests.smoke.probes import mask
    from tests.smoke.target import Target

    Target.load(load_registry().get("local-prod"), environ={}).register_secrets()
    secret = yaml.safe_load((PROJECT_ROOT / "secrets/demo/config/local-prod.yaml").read_text())[
        "federationRedirect"
    ]["secretToken"]
    shown = mask(
        f"GET https://hub.example/user/x/?token=abc123def456 answered 500: {secret}\n"
        '  body: {"url": "https://hub.example/user/x/", "token": "s3cr3t-t0ken"}'
    )
    assert secret not in shown
    assert "abc123def456" not in shown and "s3cr3t-t0ken" not in shown
    assert "?token=********" in shown and '"token": "********"' in shown


# --- flakes and regressions: what is retried, how often, and what the report says -------


def test_a_503_twice_then_an_answer_passes_after_retries_and_says_so(
    tmp_path: Path, capsys
) -> None:
    with BinderFront(warming_requests=2) as front:
        note = check_deployment(
            step_context("prod", SMOKE_BINDER_URL=front.url),
            keyword="binder_health",
            report=tmp_path / "report.xml",
        )
    assert front.requests == 3
    assert note.startswith("1 passed (1 after retries)")
    [outcome] = [o for o in read_report(tmp_path / "report.xml") if o.result == "passed"]
    assert outcome.retried.startswith(
        f"GET {front.url}/health answered 200 OK on attempt 3, after 503 Service Unavailable (x2) ("
    )
    printed = capsys.readouterr().out
    assert f"passed after retries: test_binder::test_binder_health: {outcome.retried}" in printed


def test_a_site_that_keeps_answering_503_fails_for_infrastructure_after_bounded_attempts(
    tmp_path: Path,
) -> None:
    with BinderFront(warming_requests=100) as front:
        run = run_suite(
            "prod", tmp_path, "-k", "binder_health", SMOKE_BINDER_URL=front.url, SMOKE_ATTEMPTS="4"
        )
    assert front.requests == 4
    name = "test_binder::test_binder_health"
    assert run.kind(name) == INFRASTRUCTURE
    message = run.message(name)
    assert message.startswith(
        f"GET {front.url}/health answered 503 Service Unavailable: the answer is not JSON"
    )
    assert message.splitlines()[-1].startswith("  (4 attempts in ")
    assert message.endswith(": 503 Service Unavailable (x4))")


def test_refused_connections_are_retried_then_fail_for_infrastructure(tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    run = run_suite("prod", tmp_path, "-k", "binder_health", SMOKE_BINDER_URL=nowhere)
    name = "test_binder::test_binder_health"
    assert run.kind(name) == INFRASTRUCTURE
    assert run.message(name).startswith(f"GET {nowhere}/health did not answer: Connection refused")
    assert run.message(name).endswith(": Connection refused (x3))")


def test_connections_closed_without_an_answer_are_retried(tmp_path: Path) -> None:
    with BinderFront(dropped_requests=2) as front:
        run = run_suite("prod", tmp_path, "-k", "binder_health", SMOKE_BINDER_URL=front.url)
    name = "test_binder::test_binder_health"
    assert run.result(name) == "passed", run.output
    assert front.requests == 3
    assert run.outcomes[name].retried.startswith(
        f"GET {front.url}/health answered 200 OK on attempt 3, "
        "after Remote end closed connection without response (x2) ("
    )


def test_a_wrong_answer_is_not_retried(tmp_path: Path) -> None:
    # The front answers its home page 404: not what the check wants, and no gateway error.
    with BinderFront() as front:
        run = run_suite("prod", tmp_path, "-k", "binder_page", SMOKE_BINDER_URL=front.url)
    assert front.requests == 1
    name = "test_binder::test_binder_page"
    assert run.kind(name) == ASSERTION
    assert run.message(name) == (
        f"GET {front.url}/ answered 404 Not Found: expected 200\n  body: Not Found"
    )


def test_a_wrong_answer_is_not_retried_even_while_the_deploy_warms_up(
    tmp_path: Path, jupyterhub: JupyterHub
) -> None:
    # A real hub's login page, 200, where BinderHub's home page should be: a wrong
    # answer whatever the warm-up, so the test fails at once instead of in 600 s.
    run = run_suite(
        "prod",
        tmp_path,
        "-k",
        "binder_page",
        SMOKE_BINDER_URL=jupyterhub.url,
        SMOKE_WARMUP_SECONDS="600",
    )
    name = "test_binder::test_binder_page"
    assert run.kind(name) == ASSERTION
    message = run.message(name)
    assert message.startswith(f"GET {jupyterhub.url}/ (redirected to {jupyterhub.url}/hub/login")
    assert "answered 200 OK: the body does not mention 'GitHub'" in message
    assert "attempts" not in message


def test_warm_up_retries_past_the_attempts_until_the_proxy_answers(tmp_path: Path) -> None:
    with BinderFront(warming_requests=5) as front:
        run = run_suite(
            "prod",
            tmp_path,
            "-k",
            "binder_health",
            SMOKE_BINDER_URL=front.url,
            SMOKE_WARMUP_SECONDS="30",
        )
    assert run.result("test_binder::test_binder_health") == "passed", run.output
    assert front.requests == 6
    assert (
        "on attempt 6, after 503 Service Unavailable (x5)"
        in run.outcomes["test_binder::test_binder_health"].retried
    )


def test_failure_screen_names_each_kind_and_what_it_calls_for(tmp_path: Path, capsys) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    with BinderFront() as front, pytest.raises(StepFailure) as failure:
        check_deployment(
            step_context("prod", SMOKE_BINDER_URL=front.url, SMOKE_HUB_URL=nowhere),
            keyword="binder_page or hub_health",
            report=tmp_path / "report.xml",
        )
    assert failure.value.why == (
        "2 smoke test(s) failed on prod: 1 by assertion (test_binder::test_binder_page); "
        "1 for infrastructure reasons (test_hub::test_hub_health)."
    )
    fix = failure.value.fix
    assert "Assertion: the site answered, but not as expected" in fix
    assert "Infrastructure: the site did not answer" in fix
    assert "invoke smoke-test --env=prod" in fix
    assert "smoke tests on prod: 0 passed, 0 skipped, 2 failed (1 assertion, 1 infrastructure)" in (
        capsys.readouterr().out
    )


def test_each_way_a_check_ends_has_its_kind() -> None:
    from pytest_timeout import PYTEST_FAILURE_MESSAGE

    from tests.smoke.probes import InfrastructureFailure, failure_kind

    assert failure_kind(InfrastructureFailure("no answer")) == INFRASTRUCTURE
    assert failure_kind(pytest.fail.Exception(PYTEST_FAILURE_MESSAGE % 30)) == INFRASTRUCTURE
    assert failure_kind(pytest.fail.Exception("answered 500")) == ASSERTION
    assert failure_kind(AssertionError("wrong")) == ASSERTION
    # The check itself broke: a bug to read in its traceback, not a verdict on the site.
    assert failure_kind(KeyError("phase")) == ERROR


# --- the missing user server, as real sites answer it -------------------------------------


def test_missing_user_server_accepts_what_real_sites_answer(tmp_path: Path) -> None:
    name = "test_hub::test_missing_user_server"
    # The binderhub chart's null authenticator: the hub's login page answers 403.
    (tmp_path / "null-hub").mkdir()
    null_hub = JupyterHub(
        tmp_path / "null-hub",
        config='c.JupyterHub.authenticator_class = "null"\nc.JupyterHub.spawner_class = "simple"\n',
    ).start()
    try:
        null = run_suite("prod", tmp_path, "-k", "missing_user", SMOKE_HUB_URL=null_hub.url)
    finally:
        null_hub.stop()
    assert null.result(name) == "passed", null.output
    # mybinder.org's proxy-patches: 503 and "Binder not found", passed at the first attempt.
    with BinderFront() as front:
        mybinder = run_suite("prod", tmp_path, "-k", "missing_user", SMOKE_HUB_URL=front.url)
    assert mybinder.result(name) == "passed", mybinder.output
    assert front.requests == 1 and mybinder.outcomes[name].retried == ""


def test_missing_user_server_rejects_proxy_errors(tmp_path: Path) -> None:
    name = "test_hub::test_missing_user_server"
    (tmp_path / "hub").mkdir()
    hub = JupyterHub(tmp_path / "hub", keep_proxy=True).start()
    try:
        hub.stop_hub()
        # The proxy outlived its hub: its own 503 error page, on every attempt.
        down = run_suite("prod", tmp_path, "-k", "missing_user", SMOKE_HUB_URL=hub.url)
    finally:
        hub.stop()
    assert down.kind(name) == INFRASTRUCTURE
    assert "answered 503 Service Unavailable: the body does not mention 'Binder not found'" in (
        down.message(name)
    )
    (tmp_path / "proxy").mkdir()
    proxy = BareProxy(tmp_path / "proxy").start()
    try:
        # A proxy that lost its route to the hub answers 404 itself.
        lost = run_suite("prod", tmp_path, "-k", "missing_user", SMOKE_HUB_URL=proxy.url)
    finally:
        proxy.stop()
    assert lost.kind(name) == ASSERTION
    assert lost.message(name).startswith(f"GET {proxy.url}/user/smoke-")
    assert "answered 404 Not Found: expected 424 or 503 or 200 or 403" in lost.message(name)


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


@pytest.mark.cluster
def test_fresh_build_pushes_over_ssh_with_the_key_builds_launches_and_deletes_the_branch(
    tmp_path: Path, bed: BinderBed
) -> None:
    # BinderHub reads the scratch repository through its file:// URL; the suite pushes
    # to the same repository over SSH, with the key, as it pushes to GitHub.
    pushes = tmp_path / "pushes.log"
    scratch = bare_repository(tmp_path / "scratch.git", pushes)
    with LocalSshd(tmp_path / "sshd") as sshd:
        settings = live_site(
            bed,
            SMOKE_SCRATCH_REMOTE=f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{scratch.path}",
            SMOKE_SCRATCH_SPEC=scratch.spec_prefix,
        )
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
    zero = "0" * 40
    created, deleted = [line.split() for line in pushes.read_text().splitlines()]
    assert created[0] == zero and created[2].startswith("refs/heads/smoke-prod-")
    assert deleted[1] == zero and deleted[2] == created[2]
    branch, commit = created[2].removeprefix("refs/heads/"), created[1]
    pushed_file = subprocess.run(
        ["git", "-C", str(scratch.path), "show", f"{commit}:branchname"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert pushed_file == branch + "\n"
    # BinderHub resolved the branch to the pushed commit, built it and launched its image.
    assert any(
        "Starting server for user " in line and line.endswith(f":{commit}")
        for line in bed.binder.log_text().splitlines()
    )
    message = refused.message("test_build::test_fresh_build")
    assert message.startswith("`git clone --quiet --depth=1 ssh://")
    assert "Permission denied (publickey)" in message


# --- BinderHub's hub down: last, as it takes the test bed's hub away ---------------------


@pytest.mark.cluster
def test_binderhub_whose_hub_is_down_fails_its_health_naming_the_hub(
    bed: BinderBed, tmp_path: Path
) -> None:
    health = f"{bed.binder.url}/health"
    bed.hub.stop_hub()
    try:
        # BinderHub caches each health check for 15 seconds.
        deadline = time.monotonic() + 60
        while requests.get(health, timeout=10).status_code != 503:
            assert time.monotonic() < deadline, "BinderHub never noticed its hub was down"
            time.sleep(1)
        run = run_suite("prod", tmp_path, "-k", "binder_health", SMOKE_BINDER_URL=bed.binder.url)
    finally:
        bed.hub.stop()
        bed.hub.start()
    assert run.message("test_binder::test_binder_health").startswith(
        f"GET {health} answered 503 Service Unavailable: "
        "BinderHub reports unhealthy: JupyterHub API\n"
        '  body: {"ok": false, "checks": ['
    ), run.output


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
    """A copy of the registry whose `env` (its site release) lives in `namespace`."""
    document = yaml.safe_load((PROJECT_ROOT / REGISTRY_FILE).read_text())
    entry = document["environments"][env]
    (entry["releases"][-1] if "releases" in entry else entry)["namespace"] = namespace
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
        "FAILED test_cluster::test_no_pod_restarting (assertion) — No container restarted while "
        "the suite ran, and none is in CrashLoopBackOff." in screen
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
