"""The run's machine-readable report: every step, written whole, secrets masked."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from invoke import Context
from invoke.exceptions import Exit

from tasks.config.context import StepContext
from tasks.core.errors import StepFailure
from tasks.core.masking import SecretMasker
from tasks.core.report import StepRecord, Summary
from tasks.core.run import current
from tasks.core.runner import PROJECT_ROOT
from tasks.core.step import Step
from tasks.flows.pipeline import invocation, perform

SECRET = "canary-secret-value-0123456789"


@pytest.fixture
def report() -> Iterator[Path]:
    path = PROJECT_ROOT / "reports" / "run-report-probe.json"
    path.unlink(missing_ok=True)
    yield path
    path.unlink(missing_ok=True)


def fails(ctx: StepContext) -> str:
    raise StepFailure(f"the cluster refused {SECRET}")


def test_a_run_reports_every_step_with_its_environment_release_times_and_note(
    report: Path,
) -> None:
    current().masker.register(SECRET)
    with pytest.raises(Exit), invocation("report-probe"):
        perform(Context(), Step("first", lambda ctx: f"note with {SECRET}"), "local-staging")
        perform(Context(), Step("second", fails), "local-prod")

    document = json.loads(report.read_text())
    assert document["task"] == "report-probe" and document["result"] == "failed"
    first, second = document["steps"]
    assert (first["step"], first["environment"], first["release"]) == (
        "first",
        "local-staging",
        "binder",
    )
    assert first["result"] == "ok" and first["note"] == "note with ********"
    assert second["result"] == "failed" and second["environment"] == "local-prod"
    assert second["note"] == "the cluster refused ********"
    start, end = (datetime.fromisoformat(first[key]) for key in ("start", "end"))
    assert start <= end <= datetime.fromisoformat(second["start"])
    assert SECRET not in report.read_text()


def test_a_dry_run_writes_no_report_even_when_it_fails(report: Path) -> None:
    with invocation("report-probe"):
        perform(Context(), Step("first", lambda ctx: ""), "local-staging", dry_run=True)
    assert not report.exists()
    with pytest.raises(Exit), invocation("report-probe"):
        perform(Context(), Step("first", fails), "local-staging", dry_run=True)
    assert not report.exists()


def test_the_report_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text("an older report\n")
    summary = Summary(SecretMasker())
    summary.add(StepRecord("upgrade", "prod", "ok", 1.5, "", "prod", 1.0, 2.5))

    summary.write(path, "deploy", "prod", "ok")

    assert json.loads(path.read_text())["steps"][0]["seconds"] == 1.5
    assert os.listdir(tmp_path) == ["run.json"]
