"""What is given back after a deploy of an environment ends, however it ends: the automatic
rollback of a release that failed its rollout or smoke tests, and the deploy locks the
run still holds."""

from __future__ import annotations

from invoke import Context

from tasks.config.context import releases_of
from tasks.core.errors import Stop
from tasks.core.output import warn
from tasks.core.run import current
from tasks.flows.pipeline import invocation, perform
from tasks.steps import lock, release, rollout
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
    names = [n for n in releases_of(target, None) if n is None or n in upgraded]
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


def roll_back_after(c: Context, stop: Stop, target: str) -> None:
    """Roll the target back after a step of its own whose failure a rollback answers (its
    rollout or smoke tests) failed; report both."""
    if stop.env != target or not stop.rolls_back:
        return
    if not roll_back(c, target, f"{stop.step} failed on {target}"):
        return
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
