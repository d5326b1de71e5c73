"""The deploy chain with every step's action replaced by a fake that records it.

The chain itself is real: the same invoke tasks and pre-tasks, `perform`, the
run's state, its report, its closing screen and its cleanup (tasks/cli/chain.py,
tasks/flows/). Only what each step does is not: a fake notes the step, its
environment and its release, and fails, or is interrupted, where a test says.
No cluster is reached, so the gating, the order, the rollback choice and what
an interrupt leaves are decided in-process, in milliseconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from tasks.cli import chain
from tasks.config.context import StepContext
from tasks.core.errors import StepFailure
from tasks.core.step import Step
from tasks.flows import doctor
from tasks.steps import charts, lock, release, rollout, secret_files

# Where each step the chain runs is declared, by the name of its module attribute.
DECLARED: tuple[tuple[object, str], ...] = (
    (secret_files, "DECRYPT_SECRETS"),
    (charts, "HELM_DEPS"),
    (charts, "VALIDATE"),
    (doctor, "PREFLIGHT"),
    (chain, "VERIFIED"),
    (lock, "UNLOCK"),
    (release, "ROLLBACK"),
    (rollout, "WAIT_ROLLOUT"),
)


class FakeSteps:
    """Records `(step, environment[ release])` as each step runs; `fail` and `interrupt`
    choose where a step goes wrong, once."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ran: list[tuple[str, str]] = []
        self._wrong: dict[tuple[str, str], Callable[[], BaseException]] = {}
        for module, attribute in DECLARED:
            monkeypatch.setattr(module, attribute, self._fake(getattr(module, attribute)))
        # The list of an environment's steps, with wait-rollout the same fake a rollback runs.
        stage = [
            rollout.WAIT_ROLLOUT if step.name == "wait-rollout" else self._fake(step)
            for step in chain.STAGE
        ]
        monkeypatch.setattr(chain, "STAGE", tuple(stage))

    def fail(self, step: str, where: str, why: str = "it broke") -> None:
        self._wrong[(step, where)] = lambda: StepFailure(why, "Fix it.")

    def interrupt(self, step: str, where: str) -> None:
        self._wrong[(step, where)] = KeyboardInterrupt

    def steps_on(self, env: str) -> list[str]:
        return [step for step, where in self.ran if where.split(" ")[0] == env]

    def _fake(self, real: Step) -> Step:
        def act(ctx: StepContext, **options: object) -> str:
            where = ctx.env.name if ctx.env else ""
            # A step asked to work on one release of an environment that lists several.
            if ctx.env is not None and ctx.env.listed and ctx.release:
                where += f" {ctx.release}"
            self.ran.append((real.name, where))
            # It goes wrong once: what runs it again (a rollback's rollout) finds it well.
            wrong = self._wrong.pop((real.name, where), None)
            if wrong is not None:
                raise wrong()
            return "fake"

        # The fake reaches no cluster, and takes none of the deploy's options.
        return dataclasses.replace(real, action=act, needs_cluster=False, takes=())
