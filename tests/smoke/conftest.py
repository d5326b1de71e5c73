"""The suite's wiring: which environment, its URLs and cluster, and per-test timeouts.

Run it through `invoke smoke-test --env=X`, or directly:

    python -m pytest tests/smoke --env=staging

`--env` names an environment of config/environments.yaml; tests/smoke/target.py
lists the environment variables that override what the registry says.
"""

from __future__ import annotations

import inspect
import tempfile
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tasks.config import values
from tasks.config.registry import load
from tasks.core.errors import StepFailure
from tasks.core.runner import PROJECT_ROOT
from tasks.steps.smoke import (
    CHECKS_PROPERTY,
    ERROR,
    KIND_PROPERTY,
    RETRIED_PROPERTY,
    register_secrets,
)
from tests.smoke.kube import ContainerRestarts, Kube
from tests.smoke.probes import Probe, failure_kind
from tests.smoke.target import Target

# Tests that look back over the whole run (restart counts) run after all the others.
END_OF_RUN_MARKER = "end_of_run"
# HTTP checks get this long beyond the warm-up window unless they declare a timeout.
_HTTP_SECONDS = 90

_target_key = pytest.StashKey[Target]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--env",
        dest="smoke_env",
        default=None,
        help="environment of config/environments.yaml whose deployment to validate",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{END_OF_RUN_MARKER}: runs after every other test of the suite"
    )
    name = config.getoption("smoke_env")
    if not name:
        raise pytest.UsageError("the smoke test suite needs --env=NAME")
    try:
        env = load().get(name)
    except StepFailure as failure:
        raise pytest.UsageError(f"{failure.why} {failure.fix}".strip()) from None
    # Masked before anything reads them; checked by the project's loader, whose messages
    # name a line and a column but never quote it (PyYAML's own would quote a secret).
    register_secrets(env)
    # A layer still encrypted is read as empty (tasks/steps/smoke.py says why).
    readable = [path for path in env.target().values_files() if not values.is_locked(path)]
    problems = values.check_files(readable, PROJECT_ROOT)
    if problems:
        raise pytest.UsageError(
            f"the values files of {env.name} cannot be read: "
            + "; ".join(str(problem) for problem in problems)
            + f". {values.advice(problems)}"
        )
    config.stash[_target_key] = Target.load(env)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    target = config.stash[_target_key]
    default_timeout = target.settings.warmup_seconds + _HTTP_SECONDS
    for item in items:
        if target.settings.test_timeout is not None:
            item.add_marker(pytest.mark.timeout(target.settings.test_timeout), append=False)
        elif item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(default_timeout))
    items.sort(key=lambda item: item.get_closest_marker(END_OF_RUN_MARKER) is not None)


@pytest.fixture(scope="session")
def target(pytestconfig: pytest.Config) -> Target:
    return pytestconfig.stash[_target_key]


@pytest.fixture(autouse=True)
def _record_what_it_checks(request: pytest.FixtureRequest) -> None:
    # The task names failed tests by this line; the JUnit report carries it for CI too.
    # (Appended directly: the record_property fixture warns under the default xunit2.)
    request.node.user_properties.append((CHECKS_PROPERTY, what_it_checks(request.node.function)))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    # Recorded on the item, which the teardown's report (the one JUnit reads) copies.
    recorded = any(name == KIND_PROPERTY for name, _ in item.user_properties)
    if report.failed and call.excinfo is not None and not recorded:
        # Only the test's own call can fail for want of an answer; set-up and
        # teardown failing is the suite's own error.
        kind = failure_kind(call.excinfo.value) if call.when == "call" else ERROR
        item.user_properties.append((KIND_PROPERTY, kind))
    return report


@pytest.fixture(autouse=True)
def _record_retries(request: pytest.FixtureRequest, probe: Probe) -> Iterator[None]:
    # The requests that passed only after retries: a flaky site shows in the report
    # even when every test passed.
    probe.retried.clear()
    yield
    if probe.retried:
        request.node.user_properties.append((RETRIED_PROPERTY, "; ".join(probe.retried)))


def what_it_checks(function: object) -> str:
    """The first line of a test's docstring."""
    doc = inspect.getdoc(function) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


@pytest.fixture
def time_budget(request: pytest.FixtureRequest) -> float:
    """Seconds the test may spend waiting on the site, leaving room to report before its timeout."""
    marker = request.node.get_closest_marker("timeout")
    seconds = float(marker.args[0]) if marker and marker.args else 600.0
    return seconds * 0.9


@pytest.fixture(scope="session")
def probe(target: Target) -> Iterator[Probe]:
    client = Probe(target)
    yield client
    client.close()


@pytest.fixture
def binder_url(target: Target) -> str:
    url = target.url("binder")
    target.require("binderhub")
    return url


@pytest.fixture
def hub_url(target: Target) -> str:
    url = target.url("hub")
    target.require("binderhub")
    return url


@pytest.fixture
def federation_url(target: Target) -> str:
    url = target.url("federation_redirect")
    target.require("federation-redirect")
    return url


@dataclass(frozen=True)
class NoCluster:
    """Why the cluster checks cannot run, and whether that is a failure or a skip."""

    reason: str
    is_failure: bool


@pytest.fixture(scope="session")
def _kube(target: Target) -> Iterator[Kube | NoCluster]:
    if target.kubeconfig is None:
        yield NoCluster(
            f"no credentials for the cluster of {target.env.name}: KUBECONFIG is not set "
            "(`invoke smoke-test` opens them)",
            is_failure=False,
        )
        return
    kubectl = target.kubectl or _pinned_kubectl()
    if kubectl is None:
        # Credentials without the pinned kubectl: the checks were meant to run.
        yield NoCluster(
            "the pinned kubectl is not built: run `invoke cluster.build`", is_failure=True
        )
        return
    with tempfile.TemporaryDirectory(prefix="smoke-kube-cache-") as cache:
        yield Kube(kubectl, target.kubeconfig, target.namespace, Path(cache))


@pytest.fixture
def kube(_kube: Kube | NoCluster) -> Kube:
    if isinstance(_kube, NoCluster):
        if _kube.is_failure:
            pytest.fail(_kube.reason, pytrace=False)
        pytest.skip(_kube.reason)
    return _kube


@pytest.fixture(scope="session", autouse=True)
def restarts_at_start(
    _kube: Kube | NoCluster,
) -> dict[tuple[str, str], ContainerRestarts] | None:
    """Restart counts when the run began, so growth during the run can be told apart.

    None when they could not be read; the restart check then says so.
    """
    if isinstance(_kube, NoCluster):
        return None
    try:
        return {entry.key: entry for entry in _kube.container_restarts()}
    except pytest.fail.Exception:
        return None


def _pinned_kubectl() -> str | None:
    from invoke.exceptions import Exit

    from tasks.adapters import go_builds

    try:
        return str(go_builds.binary("kubectl"))
    except Exit:
        return None
