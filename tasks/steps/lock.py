"""One deploy at a time per environment.

Two merges in quick succession start two deploys; if both run helm and wait
on the same release, one can take the site down half-way through the other's
rollout. The lock lives in the cluster itself (a ConfigMap in the release's
namespace, created atomically by the API server), so it holds across CI
runners and laptops alike. A lock whose holder died expires after the
environment's timeouts; one whose holder was a process on this machine that
is gone is taken over at once; `invoke unlock --env=X` removes one by hand.

A deploy asked to wait for the lock (`--wait-for-lock`, the default in CI)
queues behind the one holding it, saying who holds it, instead of failing;
at the wait's bound it fails, naming the holder.
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

from tasks.adapters import configmaps
from tasks.adapters.origin import head_commit
from tasks.config.context import StepContext
from tasks.core.errors import CommandFailed, StepFailure
from tasks.core.output import say, warn
from tasks.core.report import format_seconds
from tasks.core.run import current
from tasks.core.step import Changes, Step

LOCK_NAME = "binder-deploy-lock"
# While waiting for the lock: how often it is read again, and how often the wait is said
# again when its holder has not changed.
POLL_SECONDS = 5.0
PROGRESS_SECONDS = 30.0


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
    # A deploy known to be running: one asked to wait for its turn waits for it.
    running: bool = False


def described(data: dict[str, str]) -> str:
    """Who holds the lock `data`, since when, for which commit."""
    commit = f", deploying {data['commit']}" if data.get("commit") else ""
    return f"{data.get('holder', 'an unknown holder')} since {data.get('started', '?')}{commit}"


def judge(data: dict[str, str], now: float, env_name: str) -> LockVerdict:
    """Whether a deploy may take over the lock `data`, and what to tell the operator."""
    who = f"held by {described(data)}"
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
        f"another deploy of {env_name} is running: {described(data)} (its lock expires in "
        f"about {minutes} min)",
        running=True,
    )


def refusal(verdict: LockVerdict, env_name: str) -> StepFailure:
    return StepFailure(
        verdict.why[0].upper() + verdict.why[1:] + ".",
        "Wait for it to finish, or let this deploy wait its turn: --wait-for-lock[=SECONDS]. "
        f"If it died and its lock is stale, remove the lock: invoke unlock --env={env_name}",
    )


def wait_asked(option: bool | str | None) -> bool | int:
    """What `--wait-for-lock[=SECONDS]` asks: True for the default bound, a number of seconds,
    or False (0) not to wait. Not given: wait in CI (CI=true), not elsewhere."""
    if option is None:
        return os.environ.get("CI", "").lower() in ("true", "1")
    if option is True or option is False:
        return option
    if not re.fullmatch(r"\d+", str(option).strip()):
        raise StepFailure(
            f"--wait-for-lock={option} is not a number of seconds.",
            "Pass --wait-for-lock alone (as long as the lock can last), "
            "--wait-for-lock=SECONDS, or --wait-for-lock=0 not to wait.",
        )
    return int(option) or False


class LockWait:
    """A bounded wait for an environment's lock, saying who holds it as it goes."""

    def __init__(self, ctx: StepContext, seconds: float) -> None:
        self.ctx = ctx
        self.seconds = seconds
        # One bound per environment and run: a wait at preflight counts against the lock step's.
        self._environment = ctx.held
        self.started = time.monotonic() - self._environment.lock_waited
        self._said: tuple[str, float] | None = None

    @property
    def waited(self) -> float:
        return time.monotonic() - self.started

    def pause(self, data: dict[str, str]) -> None:
        """Wait a little for the lock `data` to be given back, or fail if the bound is reached."""
        env_name = self.ctx.environment.name
        waited = self.waited
        if waited >= self.seconds:
            raise StepFailure(
                f"Waited {format_seconds(waited)} for the deploy lock of {env_name}, and it is "
                f"still held by {described(data)}.",
                "Deploy again once that deploy has ended, or wait longer "
                "(--wait-for-lock=SECONDS). If it died and its lock is stale, remove the lock: "
                f"invoke unlock --env={env_name}",
            )
        holder = described(data)
        if (
            self._said is None
            or self._said[0] != holder
            or (waited - self._said[1] >= PROGRESS_SECONDS)
        ):
            # A milestone: a member's wait shows as it goes, also while its output is folded.
            say(
                f"waiting for the deploy lock of {env_name}: held by {holder} "
                f"({format_seconds(waited)} waited, up to {format_seconds(self.seconds)})",
                milestone=True,
            )
            self._said = (holder, waited)
        deadline = time.monotonic() + min(POLL_SECONDS, self.seconds - waited)
        # In short slices: a member's interrupt is seen at its checkpoint.
        while (left := deadline - time.monotonic()) > 0:
            self.ctx.runner.checkpoint()
            time.sleep(min(left, 0.5))
        self._environment.lock_waited = self.waited

    def done(self) -> str:
        """How long the environment's lock was waited for in this run, if it was."""
        waited = self._environment.lock_waited
        return f"after waiting {format_seconds(waited)}" if waited else ""


def waiting(ctx: StepContext) -> LockWait | None:
    """This run's wait for the environment's lock; None: it does not wait.

    The default bound is the lock's own lifetime: by then the holder's lock
    has expired and is taken over anyway.
    """
    asked = ctx.run.wait_for_lock
    if ctx.dry_run or asked is False:
        return None
    return LockWait(ctx, float(lock_lifetime(ctx)) if asked is True else float(asked))


def wait_until_free(ctx: StepContext) -> dict[str, str] | None:
    """Before a deploy's first change: wait (if the run asks to) until no live deploy holds the
    lock. Returns the lock as then found (None: there is none), or fails at the wait's bound."""
    wait = waiting(ctx)
    while True:
        held = current_lock(ctx)
        if held is None or wait is None:
            return held
        if not judge(held, time.time(), ctx.environment.name).running:
            return held  # free to take, or not a lock worth waiting for: the caller says which
        wait.pause(held)


def lock_lifetime(ctx: StepContext) -> int:
    timeouts = ctx.environment.timeouts
    # Room for an automatic rollback and its rollout too.
    return timeouts.upgrade + 2 * timeouts.rollout + timeouts.smoke + 300


def _kubectl(ctx: StepContext, *args: str, check: bool = True) -> str:
    namespace = ctx.target.namespace
    return ctx.runner.run(
        ["kubectl", "--namespace", namespace, *args], quiet=True, check=check
    ).stdout


def acquire(ctx: StepContext, me: str) -> str:
    """Take the environment's lock, waiting if the run asks to, or explain who holds it;
    returns how long it waited, if it did."""
    env = ctx.environment
    commit, _ = head_commit(ctx)
    namespace = ctx.target.namespace
    create_namespace = ["kubectl", "create", "namespace", namespace]
    if ctx.dry_run:
        ctx.runner.run(create_namespace)  # shown: a first deploy makes it
    wait = waiting(ctx)
    races = 0
    while races < 3:
        ours = {
            "holder": me,
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "expires": str(int(time.time()) + lock_lifetime(ctx)),
            "process": process_identity(os.getpid()) or "",
            "commit": commit,
        }
        try:
            _kubectl(
                ctx,
                "create",
                "configmap",
                LOCK_NAME,
                *(f"--from-literal={key}={value}" for key, value in ours.items()),
            )
            return wait.done() if wait else ""
        except CommandFailed as failed:
            if f'namespaces "{namespace}" not found' in failed.output:
                # A first deploy: the namespace is made here, so that the lock can be.
                ctx.runner.run(create_namespace, quiet=True, check=False)
                races += 1
                continue
            if "AlreadyExists" not in failed.output and "already exists" not in failed.output:
                raise StepFailure(
                    f"Could not take the deploy lock of {env.name}: {failed.tail(3)}",
                    f"Check access to namespace {namespace}: invoke doctor --env={env.name}",
                ) from None
        lock_object = read_lock(ctx)
        if lock_object is None:
            races += 1
            continue
        data = lock_object.get("data") or {}
        verdict = judge(data, time.time(), env.name)
        if verdict.takeable:
            warn(f"{verdict.why}; taking it over.")
            if take_over(ctx, lock_object, ours):
                return wait.done() if wait else ""
            races += 1
        elif wait is None or not verdict.running:
            raise refusal(verdict, env.name)
        else:
            wait.pause(data)
    raise StepFailure(f"Could not take the deploy lock of {env.name}: it kept changing hands.")


def take_over(ctx: StepContext, lock_object: dict, ours: dict[str, str]) -> bool:
    """Replace an expired lock with ours; the resourceVersion it was read at makes the API
    server refuse that if anyone else took the lock in between."""
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


def left_behind(env_name: str, why: str) -> None:
    """Name, for the closing screen, a lock of `env_name` this run could not give back."""
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
            left_behind(name, f"not released: {error}")
        except KeyboardInterrupt:
            left_behind(name, "its release was interrupted")


def ensure_held(ctx: StepContext) -> None:
    """Hold the environment's lock until the run ends, unless this run already does: a step
    that changes the release, run on its own, must not race a deploy of it."""
    held = ctx.held
    if ctx.dry_run or held.lock_held:
        return
    lock_ctx = at_lock(ctx)
    held.hold("deploy-lock", lambda: _holding(lock_ctx))


def at_lock(ctx: StepContext) -> StepContext:
    """A step's context on one release, moved to the namespace of the environment's last
    release, where the one lock covering all of them lives."""
    if ctx.target.namespace == ctx.environment.lock_namespace:
        return ctx
    return replace(ctx, release=None)


def take(ctx: StepContext) -> str:
    waited = acquire(ctx, holder())
    ctx.held.lock_held = True
    if ctx.dry_run:
        return "would take the deploy lock"
    return "held by this deploy" + (f" ({waited})" if waited else "")


def give_back(ctx: StepContext) -> str:
    release(ctx, holder())
    ctx.held.lock_held = False
    return "would release the deploy lock" if ctx.dry_run else "released"


def remove(ctx: StepContext) -> str:
    current = current_lock(ctx)
    if ctx.dry_run:
        say(f"[dry-run] would delete configmap {LOCK_NAME} in {ctx.target.namespace}")
        return "dry run"
    if current is None:
        return "no lock was held"
    _kubectl(ctx, "delete", "configmap", LOCK_NAME, "--ignore-not-found")
    return f"removed the lock of {current.get('holder')} (since {current.get('started')})"


LOCK = Step("lock", take, Changes.BOOKKEEPING, needs_cluster=True)
UNLOCK = Step("unlock", give_back, Changes.BOOKKEEPING, needs_cluster=True)
# `invoke unlock`: a lock that a deploy which died left behind, removed whoever holds it.
REMOVE_LOCK = Step("unlock", remove, Changes.BOOKKEEPING, needs_cluster=True)
