"""One deploy at a time per environment.

Two merges in quick succession start two deploys; if both run helm and wait
on the same release, one can take the site down half-way through the other's
rollout. The lock lives in the cluster itself (a ConfigMap in the release's
namespace, created atomically by the API server), so it holds across CI
runners and laptops alike. A lock whose holder died expires after the
environment's timeouts; one whose holder was a process on this machine that
is gone is taken over at once; `invoke unlock --env=X` removes one by hand.
"""

from __future__ import annotations

import getpass
import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from invoke import Context, task

from tasks import configmaps
from tasks.errors import CommandFailed, StepFailure
from tasks.output import say, warn
from tasks.pipeline import StepContext, Stop, perform
from tasks.run import current

LOCK_NAME = "binder-deploy-lock"


def holder() -> str:
    """Who is deploying, as the other deploy's operator will read it."""
    run = os.environ.get("GITHUB_RUN_ID") or os.environ.get("TRAVIS_JOB_ID")
    who = os.environ.get("GITHUB_ACTOR") or getpass.getuser()
    where = f"CI run {run} on {socket.gethostname()}" if run else socket.gethostname()
    return f"{who} on {where}, pid {os.getpid()}"


def process_identity(pid: int) -> str | None:
    """Which process `pid` is, told apart from any later one given the same pid.

    The boot and the pid namespace say which machine (or container) counts pids;
    the start time, in clock ticks since boot, tells a reused pid from the
    original. None when the process does not exist.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    # Field 22 of stat (start time) is the 20th after the command name; a zombie has exited.
    if fields[0] == "Z":
        return None
    return f"{boot}/{namespace}/{pid}/{fields[19]}"


def holder_gone(data: dict[str, str]) -> str | None:
    """Why the lock's holder is certainly dead, or None when it may be alive.

    Only a holder on this machine, in this pid namespace, can be judged: its
    pid is gone, or belongs to a process started later.
    """
    recorded = data.get("process", "")
    parts = recorded.split("/")
    if len(parts) != 4 or not parts[2].isdigit():
        return None
    boot, namespace, pid, _ = parts
    mine = process_identity(os.getpid()) or ""
    if mine.split("/")[:2] != [boot, namespace]:
        return None
    now = process_identity(int(pid))
    if now is None:
        return f"its process (pid {pid}) is no longer running on this machine"
    if now != recorded:
        return f"its process (pid {pid}) has ended; that pid now belongs to another program"
    return None


@dataclass(frozen=True)
class LockVerdict:
    """What a lock found in the cluster means for a deploy that wants it."""

    takeable: bool
    why: str  # for the operator: who holds it and why it can or cannot be taken


def judge(data: dict[str, str], now: float, env_name: str) -> LockVerdict:
    """Whether a deploy may take over the lock `data`, and what to tell the operator."""
    who = f"held by {data.get('holder', 'an unknown holder')} since {data.get('started', '?')}"
    gone = holder_gone(data)
    if gone:
        return LockVerdict(True, f"the deploy lock of {env_name} {who}: {gone}")
    expires = data.get("expires", "")
    if not re.fullmatch(r"\d+", expires.strip()):
        return LockVerdict(
            False,
            f"the deploy lock of {env_name} is {who}, and its expiry ({expires!r}) is not "
            "a time this pipeline wrote, so whether that deploy is still running cannot be "
            "told",
        )
    if int(expires) < now:
        return LockVerdict(True, f"the deploy lock of {env_name} {who} has expired")
    minutes = max(1, round((int(expires) - now) / 60))
    return LockVerdict(
        False,
        f"another deploy of {env_name} is running: {data.get('holder')}, since "
        f"{data.get('started')} (its lock expires in about {minutes} min)",
    )


def refusal(verdict: LockVerdict, env_name: str) -> StepFailure:
    return StepFailure(
        verdict.why[0].upper() + verdict.why[1:] + ".",
        "Wait for it to finish. If it died and its lock is stale, remove the lock: "
        f"invoke unlock --env={env_name}",
    )


def lock_lifetime(ctx: StepContext) -> int:
    timeouts = ctx.environment.timeouts
    # Room for an automatic rollback and its rollout too.
    return timeouts.upgrade + 2 * timeouts.rollout + timeouts.smoke + 300


def _kubectl(ctx: StepContext, *args: str, check: bool = True) -> str:
    namespace = ctx.environment.namespace
    return ctx.runner.run(
        ["kubectl", "--namespace", namespace, *args], quiet=True, check=check
    ).stdout


def acquire(ctx: StepContext, me: str) -> None:
    """Take the environment's lock or explain who holds it."""
    env = ctx.environment
    ours = {
        "holder": me,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "expires": str(int(time.time()) + lock_lifetime(ctx)),
        "process": process_identity(os.getpid()) or "",
    }
    ctx.runner.run(["kubectl", "create", "namespace", env.namespace], quiet=True, check=False)
    for _ in range(3):
        try:
            _kubectl(
                ctx,
                "create",
                "configmap",
                LOCK_NAME,
                *(f"--from-literal={key}={value}" for key, value in ours.items()),
            )
            return
        except CommandFailed as failed:
            if "AlreadyExists" not in failed.output and "already exists" not in failed.output:
                raise StepFailure(
                    f"Could not take the deploy lock of {env.name}: {failed.tail(3)}",
                    f"Check access to namespace {env.namespace}: invoke doctor --env={env.name}",
                ) from None
        lock_object = read_lock(ctx)
        if lock_object is None:
            continue
        verdict = judge(lock_object.get("data") or {}, time.time(), env.name)
        if not verdict.takeable:
            raise refusal(verdict, env.name)
        warn(f"{verdict.why}; taking it over.")
        if take_over(ctx, lock_object, ours):
            return
    raise StepFailure(f"Could not take the deploy lock of {env.name}: it kept changing hands.")


def take_over(ctx: StepContext, lock_object: dict, ours: dict[str, str]) -> bool:
    """Replace an expired lock with ours, unless another deploy changed it meanwhile.

    The object keeps the resourceVersion it was read at, so the API server
    refuses the replacement if anyone else took the lock in between.
    """
    lock_object["data"] = ours
    return configmaps.write(ctx, lock_object, "replace")


def read_lock(ctx: StepContext) -> dict | None:
    """The lock's ConfigMap as the API server has it, or None."""
    return configmaps.read(ctx, LOCK_NAME)


def current_lock(ctx: StepContext) -> dict[str, str] | None:
    """Who holds the lock (holder, started, expires), or None."""
    lock_object = read_lock(ctx)
    return None if lock_object is None else lock_object.get("data") or {}


def release(ctx: StepContext, me: str) -> None:
    current = current_lock(ctx)
    if current is not None and current.get("holder") == me:
        _kubectl(ctx, "delete", "configmap", LOCK_NAME, "--ignore-not-found")


def _left_behind(env_name: str, why: str) -> None:
    current().summary.leave_behind(
        f"the deploy lock of {env_name} ({why}); once no deploy of it runs: "
        f"invoke unlock --env={env_name}"
    )


@contextmanager
def _holding(ctx: StepContext) -> Iterator[None]:
    me = holder()
    acquire(ctx, me)
    name = ctx.environment.name
    held = current().environment(name)
    held.lock_held = True
    try:
        yield
    finally:
        held.lock_held = False
        try:
            release(ctx, me)
        except (StepFailure, CommandFailed) as error:
            _left_behind(name, f"not released: {error}")
        except KeyboardInterrupt:
            _left_behind(name, "its release was interrupted")


def ensure_held(ctx: StepContext) -> None:
    """Hold the environment's lock until the run ends, unless this run already holds it.

    A step that changes the release (upgrade, rollback, recover-release) run on
    its own must not race a deploy of the same environment.
    """
    held = current().environment(ctx.environment.name)
    if ctx.dry_run or held.lock_held:
        return
    lock_ctx = at_lock(ctx)
    held.hold("deploy-lock", lambda: _holding(lock_ctx))


def at_lock(ctx: StepContext) -> StepContext:
    """The context of a step on one release, moved to where the environment's lock lives.

    One lock covers every release of an environment: it is in the namespace of its last one.
    """
    env = ctx.environment
    if env.namespace == env.lock_namespace:
        return ctx
    last = env.releases[-1]
    return replace(ctx, env=env.for_release(last.name))


def take(ctx: StepContext) -> str:
    acquire(ctx, holder())
    current().environment(ctx.environment.name).lock_held = True
    return "would take the deploy lock" if ctx.dry_run else "held by this deploy"


def give_back(ctx: StepContext) -> str:
    release(ctx, holder())
    current().environment(ctx.environment.name).lock_held = False
    return "would release the deploy lock" if ctx.dry_run else "released"


@task(help={"env": "Environment to lock.", "dry_run": "Print the commands; lock nothing."})
def take_lock(c: Context, env: str | None = None, dry_run: bool = False) -> None:
    """Take the environment's deploy lock (a step of `deploy`)."""
    perform(c, "lock", env, take, dry_run=dry_run, needs_cluster=True)


def release_lock(c: Context, env: str, dry_run: bool = False) -> None:
    if current().environment(env).lock_held:
        perform(c, "unlock", env, give_back, dry_run=dry_run, needs_cluster=True)


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
            _left_behind(environment.name, "its release was interrupted")
        except Stop as stop:  # a failed release must not hide the run's own failure
            _left_behind(environment.name, f"not released: {stop.failure.why}")
        environment.lock_held = False
    if interrupted_here:
        raise KeyboardInterrupt


def remove(ctx: StepContext) -> str:
    current = current_lock(ctx)
    if ctx.dry_run:
        say(f"[dry-run] would delete configmap {LOCK_NAME} in {ctx.environment.namespace}")
        return "dry run"
    if current is None:
        return "no lock was held"
    _kubectl(ctx, "delete", "configmap", LOCK_NAME, "--ignore-not-found")
    return f"removed the lock of {current.get('holder')} (since {current.get('started')})"


@task(
    help={
        "env": "Environment whose deploy lock to remove.",
        "dry_run": "Say what would be removed; remove nothing.",
    }
)
def unlock(c: Context, env: str | None = None, dry_run: bool = False) -> None:
    """Remove an environment's deploy lock left by a deploy that died."""
    perform(c, "unlock", env, remove, dry_run=dry_run, needs_cluster=True)
