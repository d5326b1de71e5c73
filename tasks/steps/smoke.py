"""smoke-test: check a live deployment the way a human would check the site.

`invoke smoke-test --env=X` runs the deployment validation suite (tests/smoke/)
against the environment's public URLs and its cluster, then reads its JUnit
report back: each failed test is named with what it checks (its docstring's
first line) and the kind of its failure (infrastructure: no answer, even after
retries; assertion: a wrong answer; error: the check broke), with what that
kind calls for. Which components an environment runs is decided by its layered
values, the registry's `components:` having the last word; the suite skips the
checks of a disabled component, saying which file disabled it.
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ElementTree
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tasks.adapters import toolchain
from tasks.config import values as values_module
from tasks.config.context import StepContext
from tasks.config.registry import REGISTRY_FILE, Environment
from tasks.core.errors import StepFailure
from tasks.core.output import say
from tasks.core.runner import PROJECT_ROOT
from tasks.core.step import Step
from tasks.steps.secret_files import register_secret_values

SUITE_DIR = Path("tests/smoke")
REPORTS_DIR = Path("reports")
# How long after a rollout a fresh proxy may still answer 403/404/503 before its routes register.
DEFAULT_WARMUP_SECONDS = 60
# How often a request that got no answer, or a gateway error, is tried in all.
DEFAULT_ATTEMPTS = 3
# The suite records each test's docstring line under this JUnit property,
CHECKS_PROPERTY = "checks"
# the requests that passed only after retries under this one,
RETRIED_PROPERTY = "retried"
# and why a failed test failed under this one: one of the kinds below.
KIND_PROPERTY = "failure_kind"
INFRASTRUCTURE, ASSERTION, ERROR = "infrastructure", "assertion", "error"
_OUTCOME_PREFIX = re.compile(r"^(?:[\w.]+\.)?(?:Failed|InfrastructureFailure): ")
# Pytest's exit codes that mean the suite ran to its end.
_SUITE_RAN = (0, 1)
_NO_TESTS_COLLECTED = 5


@dataclass(frozen=True)
class Component:
    """A part of the site the chart can switch off, and the objects it runs."""

    name: str
    switch: tuple[str, ...]  # the values key that turns it on and off
    kind: str
    objects: tuple[str, ...]


COMPONENTS: tuple[Component, ...] = (
    # The BinderHub chart's own Deployments: BinderHub, its JupyterHub and that hub's proxy.
    # Its switch is the dependency's condition, outside the binderhub chart's values.
    Component("binderhub", ("binderhubEnabled",), "Deployment", ("binder", "hub", "proxy")),
    Component("static-files", ("static", "enabled"), "Deployment", ("static-files",)),
    Component(
        "federation-redirect",
        ("federationRedirect", "enabled"),
        "Deployment",
        ("federation-redirect",),
    ),
    Component("node-agent", ("nodeAgent", "enabled"), "DaemonSet", ("node-agent",)),
)


@dataclass(frozen=True)
class ComponentState:
    """Whether an environment runs a component, and which layer decided it."""

    component: Component
    enabled: bool
    decided_by: str

    @property
    def reason(self) -> str:
        verb = "enables" if self.enabled else "disables"
        return f"{verb} {self.component.name} ({self.decided_by})"


def component_states(env: Environment, root: Path = PROJECT_ROOT) -> dict[str, ComponentState]:
    """Every component's state for `env`, from its layered values and the registry."""
    chart_values = root / "mybinder" / "values.yaml"
    # The site's release, the last one: the release the suite checks.
    layers = [chart_values, *env.target().values_files(root)]
    states: dict[str, ComponentState] = {}
    for component in COMPONENTS:
        enabled, decided_by = True, "enabled by default"
        for path in layers:
            # A layer still encrypted cannot switch anything: the upgrade before
            # this run would have refused it, so it is read as empty here.
            if values_module.is_locked(path):
                continue
            switch = _lookup(values_module.load(path), component.switch)
            if switch is not None:
                enabled = bool(switch)
                shown = path.relative_to(root) if path.is_relative_to(root) else path
                key = ".".join(component.switch)
                decided_by = f"{key}: {str(enabled).lower()} in {shown}"
        if component.name in env.components:
            enabled = env.components[component.name]
            decided_by = f"components.{component.name} in {REGISTRY_FILE}"
        states[component.name] = ComponentState(component, enabled, decided_by)
    return states


def _lookup(values: dict, keys: tuple[str, ...]) -> object:
    node: object = values
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def layered_values(env: Environment, root: Path = PROJECT_ROOT) -> dict:
    """The values helm renders `env` with: chart defaults, then every readable layer."""
    merged = values_module.load(root / "mybinder" / "values.yaml")
    for path in env.target().values_files(root):
        if not values_module.is_locked(path):
            merged = values_module.merge(merged, values_module.load(path))
    return merged


def declared(env: Environment, *keys: str, root: Path = PROJECT_ROOT) -> object:
    """One value as the environment's layered values set it (None when none does)."""
    return _lookup(layered_values(env, root), keys)


def register_secrets(env: Environment, root: Path = PROJECT_ROOT) -> None:
    """Mask the environment's secrets in the suite's own process, as every step does."""
    register_secret_values(env, root)


@dataclass(frozen=True)
class FailureKind:
    """What one kind of smoke-test failure says about the site, and what it calls for."""

    label: str
    advice: str


FAILURE_KINDS = {
    INFRASTRUCTURE: FailureKind(
        "for infrastructure reasons",
        "Infrastructure: the site did not answer (connection refused, reset or timed out, or "
        "502/503/504 from its proxy or load balancer), on every attempt listed above. That is "
        "no answer rather than a wrong one: check the ingress, the proxy and the pods of "
        "namespace {namespace} and the network between here and the site, then run "
        "`invoke smoke-test --env={env}` again.",
    ),
    ASSERTION: FailureKind(
        "by assertion",
        "Assertion: the site answered, but not as expected, and retrying does not change an "
        "answer: most likely a regression in what was deployed. Each test's docstring "
        "(tests/smoke/) says what it checks; the failures above name the URL or object and "
        "what was wrong.",
    ),
    ERROR: FailureKind(
        "by error",
        "Error: the check itself could not run (an exception in tests/smoke/ or in its "
        "set-up). The report holds its traceback; `python -m pytest tests/smoke --env={env} "
        "-k NAME` reproduces it.",
    ),
}


@dataclass(frozen=True)
class CheckOutcome:
    """One test of the suite as the JUnit report tells it."""

    name: str
    result: str  # "passed", "failed", "error" or "skipped"
    checks: str
    message: str = ""
    # For a failed test: INFRASTRUCTURE, ASSERTION or ERROR.
    kind: str = ""
    # The requests that passed only after retries, and their failed attempts.
    retried: str = ""

    @property
    def broken(self) -> bool:
        return self.result in ("failed", "error")


def report_path(env: Environment, root: Path = PROJECT_ROOT) -> Path:
    return root / REPORTS_DIR / f"smoke-{env.name}.xml"


def suite_command(
    env: Environment,
    report: Path,
    *,
    keyword: str | None = None,
    root: Path = PROJECT_ROOT,
) -> list[str]:
    """The pytest command line that validates `env` and writes its JUnit report."""
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(root / SUITE_DIR),
        f"--env={env.name}",
        f"--rootdir={root}",
        f"--junitxml={report}",
        # The suite runs in CI and on operators' machines; it leaves no cache behind.
        "-p",
        "no:cacheprovider",
        "-rfEs",
        "--tb=short",
    ]
    if keyword:
        command += ["-k", keyword]
    return command


def read_report(report: Path) -> list[CheckOutcome]:
    """The outcome of every test in a JUnit report written by the suite."""
    outcomes: list[CheckOutcome] = []
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        name = f"{module}::{case.get('name', '')}" if module else case.get("name", "")
        properties = {prop.get("name", ""): prop.get("value", "") for prop in case.iter("property")}
        result, message, kind = "passed", "", ""
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                result = "failed" if tag == "failure" else tag
                message = element.get("message") or (element.text or "")
                # pytest prefixes a failure's message with its exception's name: Failed
                # for pytest.fail(), the suite's InfrastructureFailure for no answer.
                message = _OUTCOME_PREFIX.sub("", message, count=1)
                # pytest cuts long messages short in the attribute, whole in the text.
                if message.endswith("full report in element text]") and element.text:
                    message = element.text
                if tag != "skipped":
                    kind = properties.get(KIND_PROPERTY) or (
                        ASSERTION if tag == "failure" else ERROR
                    )
                break
        outcomes.append(
            CheckOutcome(
                name,
                result,
                properties.get(CHECKS_PROPERTY, ""),
                message.strip(),
                kind,
                properties.get(RETRIED_PROPERTY, ""),
            )
        )
    return outcomes


def summarise(outcomes: list[CheckOutcome]) -> str:
    passed = [o for o in outcomes if o.result == "passed"]
    retried = sum(bool(o.retried) for o in passed)
    parts = [
        f"{len(passed)} passed" + (f" ({retried} after retries)" if retried else ""),
        f"{sum(o.result == 'skipped' for o in outcomes)} skipped",
    ]
    broken = [o for o in outcomes if o.broken]
    if broken:
        kinds = Counter(o.kind for o in broken)
        parts.append(
            f"{len(broken)} failed ({', '.join(f'{n} {kind}' for kind, n in kinds.items())})"
        )
    return ", ".join(parts)


def retries_report(outcomes: list[CheckOutcome]) -> str:
    """Each test that passed only after retries, with the requests retried."""
    return "\n".join(
        f"passed after retries: {o.name}: {o.retried}"
        for o in outcomes
        if o.result == "passed" and o.retried
    )


def failure_report(outcomes: list[CheckOutcome], lines_per_test: int = 6) -> str:
    """Each failed test with its kind of failure, what it checks and why it failed."""
    blocks = []
    for outcome in outcomes:
        if not outcome.broken:
            continue
        header = f"FAILED {outcome.name} ({outcome.kind})" + (
            f" — {outcome.checks}" if outcome.checks else ""
        )
        body = [f"    {line}" for line in outcome.message.splitlines()[:lines_per_test]]
        blocks.append("\n".join([header, *body]))
    return "\n".join(blocks)


def smoke_failure(env: Environment, failed: list[CheckOutcome], report: Path) -> StepFailure:
    """The failure screen: which tests failed, of which kind, and what each kind calls for."""
    by_kind: dict[str, list[str]] = {}
    for outcome in failed:
        by_kind.setdefault(outcome.kind, []).append(outcome.name)
    count = f"{len(failed)} smoke test(s) failed on {env.name}"
    if len(by_kind) == 1:
        [(kind, names)] = by_kind.items()
        why = f"{count} {FAILURE_KINDS[kind].label}: {', '.join(names)}."
    else:
        why = (
            f"{count}: "
            + "; ".join(
                f"{len(names)} {FAILURE_KINDS[kind].label} ({', '.join(names)})"
                for kind, names in by_kind.items()
            )
            + "."
        )
    advice = [
        FAILURE_KINDS[kind].advice.format(env=env.name, namespace=env.target().namespace)
        for kind in by_kind
    ]
    return StepFailure(
        why,
        "\n       ".join([*advice, f"Full report: {report}."]),
        details="\n".join(f"{o.name}: {o.message.splitlines()[0]}" for o in failed if o.message),
    )


def check_deployment(
    ctx: StepContext,
    *,
    keyword: str | None = None,
    warmup: float | None = None,
    attempts: int | None = None,
    report: Path | None = None,
) -> str:
    """Run the suite against the step's environment; raise StepFailure naming failed tests."""
    env = ctx.environment
    report = report or report_path(env)
    if not ctx.dry_run:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.unlink(missing_ok=True)
    # The step's own view of the environment wins over what the suite would load.
    settings = {"SMOKE_NAMESPACE": ctx.target.namespace}
    if warmup is not None:
        settings["SMOKE_WARMUP_SECONDS"] = str(warmup)
    if attempts is not None:
        settings["SMOKE_ATTEMPTS"] = str(attempts)
    # The runner's order: the tools folder, the pinned builds, then PATH. Without one,
    # the suite says for itself which cluster checks it cannot run.
    kubectl = toolchain.locate("kubectl", ctx.runner.tool_dirs)
    if kubectl:
        settings["SMOKE_KUBECTL"] = str(kubectl)
    runner = ctx.runner.with_env(**settings)
    result = runner.run(
        suite_command(env, report, keyword=keyword),
        check=False,
        timeout=env.timeouts.smoke,
    )
    if result.dry_run:
        return "dry run: the suite did not run"
    if result.exit_code == _NO_TESTS_COLLECTED:
        raise StepFailure(
            f"No smoke test was selected for {env.name}"
            + (f" by -k {keyword!r}." if keyword else "."),
            "Check the --keyword expression against the test names in tests/smoke/.",
        )
    if result.exit_code not in _SUITE_RAN or not report.exists():
        raise StepFailure(
            f"The smoke test suite could not run (pytest exited with {result.exit_code}).",
            "Read pytest's own error above; `python -m pytest tests/smoke --env="
            f"{env.name} --collect-only` reproduces it without touching the site.",
        )
    outcomes = read_report(report)
    shown_report = (
        report.relative_to(PROJECT_ROOT) if report.is_relative_to(PROJECT_ROOT) else report
    )
    failed = [o for o in outcomes if o.broken]
    say(f"smoke tests on {env.name}: {summarise(outcomes)} (report: {shown_report})")
    retries = retries_report(outcomes)
    if retries:
        say(retries)
    if failed:
        say(failure_report(outcomes))
        raise smoke_failure(env, failed, shown_report)
    return f"{summarise(outcomes)}; report {shown_report}"


SMOKE_TEST = Step("smoke-test", check_deployment, needs_cluster=True, rolls_back=True)
