"""Run state lives in run objects: each run, and each environment in it, holds its own."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from invoke import Context
from invoke.exceptions import Exit

from tasks.adapters import access
from tasks.config.context import StepContext
from tasks.core import run
from tasks.core.errors import StepFailure
from tasks.core.run import Run, current
from tasks.core.step import Step
from tasks.flows.pipeline import perform


def test_each_test_starts_in_a_fresh_run(fresh_run: Run) -> None:
    assert current() is fresh_run
    assert fresh_run.summary.records == [] and fresh_run.environments == []
    assert fresh_run.masker.mask("a secret value") == "a secret value"


def test_a_fresh_run_masks_nothing_of_the_run_it_replaces() -> None:
    current().masker.register("canary-secret-0123456789")
    with run.fresh() as inner:
        assert inner.masker.mask("canary-secret-0123456789") == "canary-secret-0123456789"
    assert current().masker.mask("canary-secret-0123456789") == "********"


def test_the_next_outermost_invocation_starts_a_new_run_that_keeps_the_masker() -> None:
    perform(Context(), Step("first", lambda ctx: "one", needs_env=False), None)
    first = current()
    first.masker.register("canary-secret-0123456789")

    perform(Context(), Step("second", lambda ctx: "two", needs_env=False), None)

    second = current()
    assert second is not first
    assert [r.step for r in first.summary.records] == ["first"]
    assert [r.step for r in second.summary.records] == ["second"]
    assert second.masker.mask("canary-secret-0123456789") == "********"


def test_steps_inside_an_invocation_share_its_run() -> None:
    from tasks.flows.pipeline import invocation

    with invocation("outer"):
        perform(Context(), Step("a", lambda ctx: "", needs_env=False), None)
        perform(Context(), Step("b", lambda ctx: "", needs_env=False), None)
    assert [r.step for r in current().summary.records] == ["a", "b"]


def test_what_an_environment_holds_is_opened_once_and_closed_newest_first() -> None:
    events: list[str] = []

    @contextmanager
    def opened(name: str) -> Iterator[str]:
        events.append(f"open {name}")
        yield name
        events.append(f"close {name}")

    staging = current().environment("staging")
    assert staging.hold("credentials", lambda: opened("credentials")) == "credentials"
    assert staging.hold("credentials", lambda: opened("again")) == "credentials"
    staging.hold("tunnel", lambda: opened("tunnel"))
    current().environment("prod").hold("credentials", lambda: opened("prod"))

    staging.close_held()

    assert events == [
        "open credentials",
        "open tunnel",
        "open prod",
        "close tunnel",
        "close credentials",
    ]
    assert staging.hold("credentials", lambda: opened("reopened")) == "reopened"


def test_the_end_of_a_run_closes_what_every_environment_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    closed: list[str] = []

    @contextmanager
    def credentials(ctx: StepContext) -> Iterator[dict[str, str]]:
        name = ctx.environment.name
        yield current().environment(name).hold(name, lambda: recorded(name))

    @contextmanager
    def recorded(name: str) -> Iterator[dict[str, str]]:
        yield {"KUBECONFIG": f"/nowhere/{name}"}
        closed.append(name)

    seen: list[str] = []
    monkeypatch.setattr(access, "open_cluster", credentials)
    probe = Step(
        "probe", lambda ctx: seen.append(ctx.runner.env["KUBECONFIG"]) or "", needs_cluster=True
    )
    perform(Context(), probe, "local-staging")
    assert seen == ["/nowhere/local-staging"]
    assert closed == ["local-staging"]


def test_a_failure_masks_with_the_runs_masker() -> None:
    current().masker.register("canary-secret-0123456789")
    failure = StepFailure("the token canary-secret-0123456789 was refused")
    assert failure.why == "the token ******** was refused"
    with pytest.raises(Exit) as stopped:
        perform(Context(), Step("probe", raise_(failure), needs_env=False), None)
    assert "canary-secret" not in str(stopped.value.message)


def raise_(failure: StepFailure) -> Callable[[StepContext], str]:
    def action(ctx: StepContext) -> str:
        raise failure

    return action
