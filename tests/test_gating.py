"""The chain's rules, decided in-process against fake step actions (tests/fakes/chain_steps.py):
staging's whole chain gates prod's, a failure anywhere in staging leaves prod untouched,
shared steps run once, a rollback answers only the steps that say so, and an interrupt's
screen says what the interrupted step may have left. The steps' own work, and a few whole
deploys, are tested against the local clusters elsewhere (test_chain.py, test_release.py,
test_rollout.py, test_smoke_suite.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from invoke import Context
from invoke.exceptions import Exit

from tasks.cli import chain
from tasks.core.runner import PROJECT_ROOT
from tests.fakes.chain_steps import FakeSteps

REPORT = PROJECT_ROOT / "reports" / "run-deploy.json"

STAGING_STEPS = [
    "lock",
    "annotate-grafana",
    "upgrade",
    "wait-rollout",
    "upgrade",
    "wait-rollout",
    "smoke-test",
    "verified",
    "verified",
]


@pytest.fixture
def steps(monkeypatch: pytest.MonkeyPatch) -> FakeSteps:
    return FakeSteps(monkeypatch)


def deploy(target: str = "local-prod", **flags: bool) -> tuple[int, str]:
    """`invoke deploy --env=TARGET --yes` in-process: its exit code and closing screen."""
    try:
        chain.deploy(Context(), env=target, yes=True, **flags)
    except Exit as ended:
        return ended.code, str(ended.message or "")
    return 0, ""


def reported() -> dict:
    return json.loads(Path(REPORT).read_text())


def test_staging_runs_whole_before_prod_and_the_shared_steps_once(steps: FakeSteps) -> None:
    assert deploy() == (0, "")

    assert steps.ran[:4] == [
        ("decrypt-secrets", "local-staging"),
        ("helm-deps", ""),
        ("validate", "local-staging traefik"),
        ("validate", "local-staging binder"),
    ]
    assert steps.steps_on("local-staging")[-9:] == STAGING_STEPS
    prod = [step for step in steps.steps_on("local-prod") if step not in ("validate", "preflight")]
    assert prod == ["check-promotion", *STAGING_STEPS]
    # Nothing of prod's own runs before staging's smoke tests passed.
    first_prod = steps.ran.index(("check-promotion", "local-prod"))
    assert steps.ran.index(("smoke-test", "local-staging")) < first_prod
    assert reported()["result"] == "ok"


@pytest.mark.parametrize(
    ("step", "where"),
    [
        ("decrypt-secrets", "local-staging"),
        ("helm-deps", ""),
        ("validate", "local-prod binder"),
        ("preflight", "local-prod"),
        ("lock", "local-staging"),
        ("annotate-grafana", "local-staging"),
        ("upgrade", "local-staging traefik"),
        ("wait-rollout", "local-staging binder"),
        ("smoke-test", "local-staging"),
    ],
)
def test_prod_is_untouched_when_a_step_before_it_fails(
    steps: FakeSteps, step: str, where: str
) -> None:
    steps.fail(step, where)

    code, screen = deploy()

    assert code == 1
    env = where.split()[0] if where else ""
    assert screen.splitlines()[0].startswith(f"FAILED: {step}"), screen
    assert env in screen.splitlines()[0]
    assert not {"check-promotion", "lock", "upgrade"} & set(steps.steps_on("local-prod"))
    # Everything after the failed step stays unstarted, in staging too.
    assert steps.ran[-1] == (step, where) or steps.ran[-1][0] == "unlock"
    records = reported()["steps"]
    assert [r["result"] for r in records if r["step"] == step][-1] == "failed"
    assert reported()["result"] == "failed"


@pytest.mark.parametrize(
    ("step", "rolled_back"),
    [("upgrade", False), ("wait-rollout", True), ("smoke-test", True), ("verified", False)],
)
def test_a_rollback_answers_only_the_failures_of_the_steps_that_say_so(
    steps: FakeSteps, step: str, rolled_back: bool
) -> None:
    where = "local-staging" if step in ("smoke-test",) else "local-staging binder"
    steps.fail(step, where)

    code, screen = deploy("local-staging", rollback_on_failure=True)

    assert code == 1
    rollbacks = [w for s, w in steps.ran if s == "rollback"]
    assert bool(rollbacks) == rolled_back, steps.ran
    if rolled_back:
        # Each release this run upgraded, the last upgraded first, each rolled out again.
        assert steps.ran[-4:] == [
            ("rollback", "local-staging binder"),
            ("wait-rollout", "local-staging binder"),
            ("rollback", "local-staging traefik"),
            ("wait-rollout", "local-staging traefik"),
        ]
        assert "was rolled back automatically" in screen


def test_a_failure_of_the_gate_rolls_nothing_back_when_prod_is_deployed(steps: FakeSteps) -> None:
    steps.fail("smoke-test", "local-staging")

    assert deploy("local-prod", rollback_on_failure=True)[0] == 1

    assert "rollback" not in [step for step, _ in steps.ran]


@pytest.mark.parametrize(
    ("step", "where", "said"),
    [
        ("upgrade", "local-staging traefik", "helm may have left the release locked"),
        ("wait-rollout", "local-staging binder", "runs the new version, not yet verified"),
        ("smoke-test", "local-staging", "runs the new version, not yet verified"),
        ("annotate-grafana", "local-staging", None),
    ],
)
def test_an_interrupt_says_what_the_interrupted_step_may_have_left(
    steps: FakeSteps, step: str, where: str, said: str | None
) -> None:
    steps.interrupt(step, where)

    code, screen = deploy()

    assert code == 130
    assert screen.splitlines()[0] == f"INTERRUPTED: {step} on local-staging"
    if said:
        assert said in screen
    else:
        assert "recover-release" not in screen and "invoke rollback" not in screen
    assert "Nothing further was started." in screen
    assert not steps.steps_on("local-prod") or set(steps.steps_on("local-prod")) <= {
        "validate",
        "preflight",
    }
    records = reported()["steps"]
    assert [r["result"] for r in records if r["step"] == step][-1] == "interrupted"


def test_with_rollback_on_failure_an_interrupted_rollout_is_rolled_back(
    steps: FakeSteps,
) -> None:
    steps.interrupt("wait-rollout", "local-staging binder")

    code, _ = deploy("local-staging", rollback_on_failure=True)

    assert code == 130
    assert ("rollback", "local-staging binder") in steps.ran


def test_an_interrupted_member_is_reported_at_the_step_it_was_stopped_at(
    steps: FakeSteps,
) -> None:
    # A member thread takes the interrupt at its step; its cleanup then gives its lock back.
    steps.interrupt("wait-rollout", "local-prod binder")

    code, screen = deploy("local-federation")

    assert code == 1
    members = {m["name"]: m for m in reported()["members"]}
    assert (members["local-prod"]["result"], members["local-prod"]["step"]) == (
        "interrupted",
        "wait-rollout",
    )
    assert members["local-prod-b"]["result"] == "ok"
    assert screen.splitlines()[0] == "FAILED: local-prod of local-federation failed."
