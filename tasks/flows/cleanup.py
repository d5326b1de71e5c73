"""What is given back after a deploy ends, however it ends: one path, taken by the chain
for a whole deploy and by each member of a federation for its own.

`closed_on_exit` closes the Grafana regions the deploy opened (tagged with how it
ended), rolls the target back where its failed or interrupted step says a rollback
answers it (with --rollback-on-failure), and gives back the deploy locks it holds. What
a step opens is registered on the run (tasks/core/run.py) by the step itself: a region,
a lock, credentials; the run is what is closed. The notice to the team's chat and the
closing screen follow when the run ends (tasks/flows/pipeline.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from invoke import Context

from tasks.config.context import releases_of
from tasks.core.errors import Stop
from tasks.core.output import warn
from tasks.core.run import current
from tasks.flows.pipeline import invocation, perform
from tasks.steps import grafana, lock, release, rollout
from tasks.steps.lock import left_behind


def roll_back(c: Context, target: str, why: str) -> bool:
    """Return `target` to its last good revision after `why`; True when that worked."""
    warn(f"{why}: rolling {target} back to its last good revision.")
    upgraded = {
        r.release
        for r in current().summary.records
        if r.step == release.UPGRADE.name and r.env == target
    }
    # Of several releases, those this run upgraded, the last upgraded first.
    names = [n for n in releases_of(target, None) if n in upgraded]
    try:
        with invocation("rollback"):
            for name in reversed(names):
                perform(c, release.ROLLBACK, target, release=name)
                perform(c, rollout.WAIT_ROLLOUT, target, release=name)
    except Stop as failed:
        warn(f"the automatic rollback of {target} did not complete: {failed.failure.why}")
        return False
    warn(f"{target} was rolled back to its last good revision after {why}.")
    return True


def roll_back_after(c: Context, stop: Stop, target: str) -> bool:
    """Roll the target back after a step of its own whose failure a rollback answers (its
    rollout or smoke tests) failed; report both. True when it was rolled back."""
    if stop.env != target or not stop.rolls_back:
        return False
    if not roll_back(c, target, f"{stop.step} failed on {target}"):
        return False
    # The failure's own advice to roll back is done already; what is left is the cause.
    kept = [
        line
        for line in stop.failure.fix.splitlines()
        if f"invoke rollback --env={target}" not in line
    ]
    note = (
        f"{target} was rolled back automatically and runs its last good revision again; "
        f"fix the cause of the {stop.step} failure, then deploy again."
    )
    stop.failure.fix = "\n       ".join(part for part in ("\n".join(kept).rstrip(), note) if part)
    return True


def release_lock(c: Context, env: str, dry_run: bool = False) -> None:
    if current().environment(env).lock_held:
        perform(c, lock.UNLOCK, env, dry_run=dry_run)


def release_all(c: Context, dry_run: bool = False, only: str | None = None) -> None:
    """Give back every lock this run still holds (or `only` that environment's), also after a
    failure or an interrupt. A lock that cannot be given back is named in the closing screen.
    """
    interrupted_here = False
    held = [e for e in current().environments if e.lock_held and only in (None, e.name)]
    for environment in sorted(held, key=lambda e: e.name):
        try:
            release_lock(c, environment.name, dry_run)
        except KeyboardInterrupt:
            interrupted_here = True
            left_behind(environment.name, "its release was interrupted")
        except Stop as stop:  # a failed release must not hide the run's own failure
            left_behind(environment.name, f"not released: {stop.failure.why}")
        environment.lock_held = False
    if interrupted_here:
        raise KeyboardInterrupt


@dataclass
class Ending:
    """How a deploy closed: the step an interrupt stopped it at, before the cleanup ran
    steps of its own, and whether its target was rolled back."""

    interrupted_at: str = ""
    rolled_back: bool = False


@contextmanager
def closed_on_exit(
    c: Context,
    target: str,
    *,
    dry_run: bool,
    rollback_on_failure: bool,
    only: str | None = None,
    ending: Ending | None = None,
) -> Iterator[Ending]:
    """Deploy `target` inside the block; whatever ends it, give back what it left open.

    `only` limits the closing to one environment's regions and locks (a member's, while
    the others still run); the chain closes every one of the run. `ending` says, once the
    block has ended, whether the target was rolled back.
    """
    ending = ending or Ending()
    rollback = rollback_on_failure and not dry_run
    try:
        with grafana.regions_closed_on_exit(only=only):
            yield ending
    except Stop as stop:
        if rollback:
            ending.rolled_back = roll_back_after(c, stop, target)
        raise
    except KeyboardInterrupt:
        step = current().environment(target).step
        ending.interrupted_at = step.name if step else ""
        # After a step whose failure a rollback answers, so does an interrupt of it.
        if rollback and step is not None and step.rolls_back:
            ending.rolled_back = roll_back(c, target, f"{step.name} on {target} was interrupted")
        raise
    finally:
        release_all(c, dry_run, only=only)
