"""What every step shares: its context, its timing, and how it fails.

A step's task is thin: it calls `perform(...)` with the step's name, the
environment and the domain function that does the work. `perform` loads the
registry, opens the cluster credentials when the step needs them, folds and
times the output, records the result for the summary, and turns a failure
into one screen of explanation: which step, which environment, why, and what
to do. No traceback reaches the operator.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Hashable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from invoke import Context
from invoke.exceptions import Exit

from tasks import checkout
from tasks import registry as registry_module
from tasks.errors import CommandFailed, StepFailure
from tasks.output import (
    StepRecord,
    Stopwatch,
    folded,
    format_seconds,
    masker,
    say,
    summary,
    warn,
)
from tasks.registry import Environment, Registry
from tasks.runner import (
    PROJECT_ROOT,
    Runner,
    interrupted,
    invoke_dry_refusal,
    sigterm_as_interrupt,
)

T = TypeVar("T")


@dataclass
class StepContext:
    """What a step's domain function gets: where it runs and how to run commands."""

    c: Context
    registry: Registry
    env: Environment | None
    runner: Runner
    dry_run: bool
    step: str

    @property
    def environment(self) -> Environment:
        if self.env is None:
            raise StepFailure("This step needs an environment.", "Pass --env=NAME.")
        return self.env


class Skipped(Exception):
    """Raised by a step that has nothing to do; its message says why."""


class Interrupted(KeyboardInterrupt):
    """An interrupt, with what the interrupted step found it left behind.

    `aftermath` describes the state the interrupt left (a release helm cancelled,
    say); `left_behind` names what the next run needs removed, and how.
    """

    def __init__(self, aftermath: str, left_behind: str = "") -> None:
        super().__init__(aftermath)
        self.aftermath = aftermath
        self.left_behind = left_behind


class Stop(Exception):
    """A step failed; the pipeline stops here. Already reported."""

    def __init__(self, step: str, env: str, failure: StepFailure) -> None:
        self.step = step
        self.env = env
        self.failure = failure
        super().__init__(f"{step} failed on {env}")


@cache
def load_registry() -> Registry:
    return registry_module.load(PROJECT_ROOT)


# Opens the credentials of an environment's cluster for a step's duration and
# yields the extra environment variables (KUBECONFIG, ...) its commands need.
# Set by tasks.access at import time; a seam so the pipeline does not import it.
ClusterAccessOpener = Callable[[StepContext], AbstractContextManager[dict[str, str]]]
_cluster_access: list[ClusterAccessOpener] = []


def register_cluster_access(opener: ClusterAccessOpener) -> None:
    _cluster_access[:] = [opener]


def pinned_tool_dirs() -> list[Path]:
    """Where the pinned tools live, searched before anything on PATH.

    The project's tools folder (`invoke tools`) first, then the Go builds of
    `invoke cluster.build`.
    """
    from tasks import toolchain

    return toolchain.search_dirs()


# What a run keeps open across its steps (cluster credentials, SSH tunnels),
# closed when the outermost invocation ends: one gcloud login per environment
# per run, not one per step.
_held: dict[Hashable, Any] = {}
_held_open = ExitStack()


def held_for_run(key: Hashable, opener: Callable[[], AbstractContextManager[T]]) -> T:
    """Enter `opener()` once per run under `key`; later calls get the same value."""
    if key not in _held:
        _held[key] = _held_open.enter_context(opener())
    return _held[key]


def _release_held() -> None:
    global _held_open
    closing, _held_open = _held_open, ExitStack()
    _held.clear()
    try:
        closing.close()
    except Exception as error:
        warn(f"Closing what the run held open failed: {error}")
    except KeyboardInterrupt:
        warn("Closing what the run held open was interrupted.")


_depth = 0


@contextmanager
def invocation(task: str = "") -> Iterator[None]:
    """The outermost task of a run prints the summary and sets the exit code.

    A failure raised outside any step (an unknown environment given to
    `deploy`, say) is reported the same way, under the task's name. SIGTERM
    (CI cancelling the job) ends the run like Ctrl-C. What the run held open
    (deploy locks, credentials) is given back before the closing screen, so
    the screen can say what, if anything, was left behind.
    """
    global _depth
    _depth += 1
    outermost = _depth == 1
    if outermost:
        summary.reset()
        interrupted.clear()
    try:
        try:
            with sigterm_as_interrupt() if outermost else nullcontext():
                yield
        except StepFailure as failure:
            raise Stop(task, "", failure) from None
    except Stop as stop:
        if not outermost:
            raise
        _release_held()
        _finish()
        raise Exit(_failure_screen(stop), code=1) from None
    except KeyboardInterrupt:
        if not outermost:
            raise
        _release_held()
        _finish()
        raise Exit(_interrupted_screen(), code=130) from None
    except Exit:
        raise
    except Exception as bug:
        if not outermost or os.environ.get("DEPLOY_DEBUG"):
            raise
        _release_held()
        _finish()
        raise Exit(_failure_screen(Stop(task, "", _unexpected(bug))), code=1) from None
    else:
        if outermost:
            _release_held()
            _finish()
            if summary.left_behind:
                say("\n".join(_left_behind_lines()))
    finally:
        _depth -= 1
        if outermost:
            _release_held()


def _finish() -> None:
    if len(summary.records) > 1 or summary.warnings:
        say("")
        say(summary.table())


def _unexpected(bug: Exception) -> StepFailure:
    return StepFailure(
        f"Unexpected {type(bug).__name__}: {bug}",
        "This is a bug in the pipeline. Run again with DEPLOY_DEBUG=1 for the traceback "
        "and report it.",
    )


def _interrupted_screen() -> str:
    # The first: a later one is the cleanup's, interrupted by a second Ctrl-C.
    where = next((r for r in summary.records if r.result == "interrupted"), None)
    title = "INTERRUPTED"
    if where:
        title += f": {where.step}" + (f" on {where.env}" if where.env else "")
    lines = [title]
    if where and where.note:
        lines.append(f"  {where.note}")
    elif where and where.step in ("upgrade", "rollback", "recover-release"):
        lines.append(
            "  helm may have left the release locked in a pending state; if the next "
            f"upgrade says so, run: invoke recover-release --env={where.env}"
        )
    elif where and where.step in ("wait-rollout", "smoke-test"):
        lines.append(
            f"  {where.env} runs the new version, not yet verified. Deploy again, or return "
            f"to the last verified revision: invoke rollback --env={where.env}"
        )
    lines.append("  Nothing further was started.")
    lines += _left_behind_lines()
    return masker.mask("\n".join(lines))


def _left_behind_lines() -> list[str]:
    if not summary.left_behind:
        return ["  Left behind: nothing."]
    return ["  Left behind, for the next run to deal with:"] + [
        f"    - {what}" for what in summary.left_behind
    ]


def _failure_screen(stop: Stop) -> str:
    failure = stop.failure
    where = f"{stop.step} on {stop.env}" if stop.env else stop.step
    lines = [f"FAILED: {where}", f"  why: {failure.why}"]
    if failure.fix:
        lines.append(f"  fix: {failure.fix}")
    if failure.details:
        lines.append("  last output:")
        lines += [f"    {line}" for line in failure.details.splitlines()[-12:]]
    if summary.left_behind:
        lines += _left_behind_lines()
    return masker.mask("\n".join(lines))


def dry_run_asked(c: Context, dry_run: bool | None, task: str) -> bool:
    """A task's `--dry-run`, or invoke's own `--dry` ("echo commands instead of running").

    `dry_run` is None for a task that has no dry run: under `--dry` it refuses
    rather than run for real.
    """
    if not c.config.run.dry:
        return bool(dry_run)
    if dry_run is None:
        raise StepFailure(invoke_dry_refusal(c, task))
    return True


def perform(
    c: Context,
    step: str,
    env_name: str | None,
    action: Callable[[StepContext], str | None],
    *,
    dry_run: bool | None = None,
    needs_env: bool = True,
    needs_cluster: bool = False,
    changes_checkout: bool = False,
) -> None:
    """Run one step of the pipeline: time it, report it, explain its failure.

    `dry_run` is None for a step that has no dry run. `changes_checkout` marks
    a step that rewrites the working tree (decrypt-secrets, helm-deps): it holds
    the checkout against other runs (tasks/checkout.py).
    """
    with invocation():
        watch = Stopwatch()
        env: Environment | None = None
        try:
            dry = dry_run_asked(c, dry_run, step)
            registry = load_registry()
            env = registry.get(env_name) if (needs_env or env_name) else None
        except StepFailure as failure:
            _record(step, env_name or "", "failed", watch, failure.why)
            raise Stop(step, env_name or "", failure) from None
        env_label = env.name if env else ""
        title = f"{step} [{env_label}]" if env_label else step
        if env is not None:
            # Whatever the step prints, a secret it reads or a command echoes stays masked.
            from tasks.secrets import register_secret_values

            register_secret_values(env)
        runner = Runner(c, dry_run=dry, tool_dirs=pinned_tool_dirs())
        ctx = StepContext(c, registry, env, runner, dry, step)
        with folded(title + (" (dry run)" if dry else "")):
            try:
                exclusive = checkout.held() if changes_checkout and not dry else nullcontext()
                access = (
                    _cluster_access[0](ctx)
                    if needs_cluster and _cluster_access
                    else nullcontext({})
                )
                with exclusive, access as extra_env:
                    ctx.runner = ctx.runner.with_env(**extra_env)
                    note = action(ctx) or ""
            except Skipped as skipped:
                say(f"skipped: {skipped}")
                _record(step, env_label, "skipped", watch, str(skipped))
                return
            except StepFailure as failure:
                _record(step, env_label, "failed", watch, failure.why)
                raise Stop(step, env_label, failure) from None
            except CommandFailed as failed:
                failure = StepFailure(
                    f"`{failed.command}` {failed.ending}.",
                    failed.killed_advice,
                    details=failed.tail(),
                )
                _record(step, env_label, "failed", watch, failure.why)
                raise Stop(step, env_label, failure) from None
            except Interrupted as interrupt:
                _record(step, env_label, "interrupted", watch, interrupt.aftermath)
                if interrupt.left_behind:
                    summary.left_behind.append(masker.mask(interrupt.left_behind))
                raise
            except KeyboardInterrupt:
                _record(step, env_label, "interrupted", watch, "")
                raise
            except Exit as refusal:
                # Helpers shared with the cluster tasks refuse with invoke's Exit.
                failure = StepFailure(str(refusal.message or refusal))
                _record(step, env_label, "failed", watch, failure.why)
                raise Stop(step, env_label, failure) from None
            except Exception as bug:
                if os.environ.get("DEPLOY_DEBUG"):
                    raise
                failure = _unexpected(bug)
                _record(step, env_label, "failed", watch, failure.why)
                raise Stop(step, env_label, failure) from None
        result = "dry-run" if dry else "ok"
        _record(step, env_label, result, watch, note)
        say(f"{step}: {result} in {format_seconds(watch.seconds)}" + (f" — {note}" if note else ""))


def _record(step: str, env: str, result: str, watch: Stopwatch, note: str) -> None:
    summary.add(StepRecord(step, env, result, watch.seconds, note))


def confirm(question: str) -> bool:
    """Ask the operator; outside a terminal, the answer is no."""
    if not sys.stdin.isatty():
        return False
    answer = input(f"{question} [y/N] ").strip().lower()
    return answer in ("y", "yes")
