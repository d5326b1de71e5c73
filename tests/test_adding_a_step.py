"""Adding a step is one module and one line: the toy step of tests/fakes/status_page.py,
added to the chain's list, shows in the plan and in a dry run, runs alone as a task, is in
the run's report, and an interrupt of it is answered as its declaration says."""

from __future__ import annotations

import _thread
import dataclasses
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from invoke import Context
from invoke.exceptions import Exit

from tasks.cli import chain, steps
from tasks.config import registry
from tasks.core.runner import PROJECT_ROOT
from tasks.steps import grafana
from tests.fakes.status_page import STATUS_PAGE
from tests.fakes.webhook import WebhookReceiver


@pytest.fixture
def with_the_toy_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one line: the status page is told right after the Grafana annotation opens."""
    stage = list(chain.STAGE)
    stage.insert(stage.index(grafana.ANNOTATE_GRAFANA) + 1, STATUS_PAGE)
    monkeypatch.setattr(chain, "STAGE", tuple(stage))


@pytest.fixture
def status_page(monkeypatch: pytest.MonkeyPatch) -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as page:
        monkeypatch.setenv("STATUS_PAGE_URL", page.url + "/status")
        yield page


@pytest.fixture
def report() -> Iterator[Path]:
    path = PROJECT_ROOT / "reports" / "run-status-page.json"
    path.unlink(missing_ok=True)
    yield path
    path.unlink(missing_ok=True)


def test_the_plan_runs_it_in_each_environment_of_the_chain(with_the_toy_step: None) -> None:
    plan = [
        (call.task.name.replace("_", "-"), call.kwargs.get("env"))
        for call in chain.plan(registry.load(), "prod", dry_run=True)
    ]
    assert plan.index(("status-page", "staging")) == plan.index(("annotate-grafana", "staging")) + 1
    assert plan.index(("status-page", "prod")) == plan.index(("annotate-grafana", "prod")) + 1


def test_a_dry_run_of_a_deploy_shows_its_request(
    with_the_toy_step: None,
    status_page: WebhookReceiver,
    capsys: pytest.CaptureFixture[str],
) -> None:
    chain.deploy(Context(), env="staging", dry_run=True)

    printed = capsys.readouterr().out
    assert "==> status-page [staging] (dry run)" in printed
    assert f"[dry-run] POST {status_page.url}/status" in printed
    assert '"status": "deploying"' in printed
    assert "status-page: dry-run" in printed
    assert status_page.received == []


def test_it_runs_alone_as_a_task_and_the_report_holds_it(
    status_page: WebhookReceiver, report: Path
) -> None:
    steps.task_of(STATUS_PAGE)(Context(), env="local-staging")

    assert status_page.received == [
        ("/status", {"environment": "local-staging", "status": "deploying"})
    ]
    [record] = json.loads(report.read_text())["steps"]
    assert (record["step"], record["environment"], record["result"]) == (
        "status-page",
        "local-staging",
        "ok",
    )
    assert record["note"] == "status page told local-staging is deploying"


def test_an_interrupt_of_it_is_answered_as_its_declaration_says(
    status_page: WebhookReceiver, report: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status_page.delay = 2  # the page hangs; the operator presses Ctrl-C meanwhile
    interrupt = threading.Timer(0.5, _thread.interrupt_main)
    interrupt.start()
    try:
        with pytest.raises(Exit) as stopped:
            steps.task_of(STATUS_PAGE)(Context(), env="local-staging")
    finally:
        interrupt.cancel()

    assert stopped.value.code == 130
    screen = str(stopped.value.message)
    assert screen.splitlines()[0] == "INTERRUPTED: status-page on local-staging"
    # It changes nothing a rollback or a recovery could mend: no such advice, nothing left.
    assert "rollback" not in screen and "recover-release" not in screen
    assert "Left behind: nothing." in screen
    [record] = json.loads(report.read_text())["steps"]
    assert (record["step"], record["result"]) == ("status-page", "interrupted")


def test_a_step_that_takes_deploy_options_without_a_task_of_its_own_is_refused() -> None:
    greedy = dataclasses.replace(STATUS_PAGE, name="greedy", takes=("wait_for_lock",))
    with pytest.raises(TypeError, match="step 'greedy' takes deploy options \\(wait_for_lock\\)"):
        steps.task_of(greedy)
