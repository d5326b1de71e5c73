"""What every step shares: its context, its timing, and how it fails.

A step's task is thin: it calls `perform(...)` with the step (tasks/core/step.py)
and the environment. `perform` loads the registry, opens the cluster
credentials when the step needs them, holds the checkout when it rewrites it, folds and
times the output, records the result for the summary, and turns a failure
into one screen of explanation: which step, which environment, why, and what
to do. No traceback reaches the operator.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any, cast

import invoke
from invoke import Call, Context, Task
from invoke.exceptions import Exit

from tasks.adapters import access, toolchain
from tasks.adapters.notifications import notify_outcome
from tasks.config.context import StepContext, listed_releases, load_registry
from tasks.config.registry import Environment
from tasks.core import checkout
from tasks.core import run as run_module
from tasks.core.errors import CommandFailed, Interrupted, MembersFailed, Skipped, StepFailure, Stop
from tasks.core.output import annotate, ci_system, folded, say, warn
from tasks.core.report import (
    DRY_RUN,
    FAILED,
    INTERRUPTED,
    NOT_STARTED,
    OK,
    REPORTS_DIR,
    SKIPPED,
    MemberOutcome,
    StepRecord,
    Stopwatch,
    format_seconds,
)
from tasks.core.run import Run, current
from tasks.core.runner import PROJECT_ROOT, Runner, invoke_dry_refusal, sigterm_as_interrupt
from tasks.core.step import Changes, Step
from tasks.steps.secret_files import register_secret_values


def as_task(step: Callable[..., Any]) -> Task:
    """A function decorated with `@task` as the Task it is (invoke types it as a Callable)."""
    return cast(Task, step)


def call(step: Callable[..., Any], **kwargs: Any) -> Call:
    """invoke's `call` of a step: run it as a pre-task with these arguments."""
    return invoke.call(as_task(step), **kwargs)


def chained_task(body: Callable[..., Any], name: str, pre: Sequence[Call | Task]) -> Task:
    """A task that runs `pre` (tasks or calls) first, then `body`."""
    # invoke types `pre` as task names; it takes tasks and calls as well.
    return Task(body, name=name, pre=cast(list[str], list(pre)))


def _release_held(run: Run) -> None:
    """Give back what the run's environments hold open (credentials, tunnels, locks)."""
    for environment in run.environments:
        try:
            environment.close_held()
        except Exception as error:
            warn(f"Closing what {environment.name} held open failed: {error}")
        except KeyboardInterrupt:
            warn(f"Closing what {environment.name} held open was interrupted.")


@contextmanager
def invocation(task: str = "") -> Iterator[None]:
    """The outermost task of a run prints the summary, writes the report and sets the exit code.

    A failure outside any step is reported under the task's name; SIGTERM ends
    the run like Ctrl-C. What the run held open is given back before the
    closing screen, so that it can say what, if anything, was left behind.
    """
    with run_module.invoked(task) as outermost:
        if not outermost:
            try:
                yield
            except StepFailure as failure:
                annotate(failure, task)
                raise Stop(task, "", failure) from None
            return
        run = current()
        try:
            try:
                with sigterm_as_interrupt():
                    if ci_system() == "github":
                        _announce_known_secrets(run)
                    yield
            except StepFailure as failure:
                annotate(failure, task)
                raise Stop(task, "", failure) from None
        except Stop as stop:
            raise Exit(_finish(run, FAILED, partial(_failure_screen, stop)), code=1) from None
        except KeyboardInterrupt:
            screen = _finish(run, INTERRUPTED, partial(_interrupted_screen, run))
            raise Exit(screen, code=130) from None
        except Exit:
            raise
        except Exception as bug:
            if os.environ.get("DEPLOY_DEBUG"):
                raise
            stop = Stop(task, "", unexpected(bug))
            raise Exit(_finish(run, FAILED, partial(_failure_screen, stop)), code=1) from None
        else:
            _finish(run, OK)
            if run.summary.left_behind:
                say("\n".join(_left_behind_lines(run)))
        finally:
            _release_held(run)


def _announce_known_secrets(run: Run) -> None:
    """On GitHub Actions, announce every secret readable now before the run's first line;
    those still locked are announced when decrypt-secrets unlocks them (tasks/core/masking.py)."""
    try:
        environments = load_registry().environments.values()
    except StepFailure:
        return  # the first step that needs the registry says what is wrong with it
    for env in environments:
        register_secret_values(env)


def _finish(run: Run, result: str, closing: Callable[[], str] | None = None) -> str:
    """End the run: the table, the report, the run page's summary; returns the closing screen
    (made once what the run held is given back, so that it can say what was left behind)."""
    _release_held(run)
    summary = run.summary
    screen = closing() if closing else ""

    # Before the table: a notice that was not delivered is one of the run's warnings.
    notify_outcome(run, result)
    if len(summary.records) > 1 or summary.warnings or summary.members:
        say("")
        say(summary.table())
    if summary.records and os.environ.get("GITHUB_STEP_SUMMARY"):
        _write_step_summary(run, result, screen)
    # A dry run touches nothing, not even reports/.
    if summary.records and not run.dry_run:
        path = report_path(run)
        try:
            summary.write(path, run.task, run.target, result)
        except OSError as error:
            warn(f"The run's report could not be written to {path}: {error}")
        else:
            if len(summary.records) > 1:
                say(f"report: {path.relative_to(PROJECT_ROOT)}")
    return screen


def _write_step_summary(run: Run, result: str, screen: str) -> None:
    """Append the table and closing screen to the run page's summary: each step of a job adds
    its part to the same page."""
    path = Path(os.environ["GITHUB_STEP_SUMMARY"])
    text = run.summary.markdown(run.task, run.target, result, screen)
    try:
        with path.open("a", encoding="utf-8") as page:
            page.write(text + "\n")
    except OSError as error:
        warn(f"The run page's summary could not be written to {path}: {error}")


def report_path(run: Run) -> Path:
    """Where the run's machine-readable report goes: reports/run-<task>.json."""
    return PROJECT_ROOT / REPORTS_DIR / f"run-{run.task or 'step'}.json"


def unexpected(bug: Exception) -> StepFailure:
    return StepFailure(
        f"Unexpected {type(bug).__name__}: {bug}",
        "This is a bug in the pipeline. Run again with DEPLOY_DEBUG=1 for the traceback "
        "and report it.",
    )


def _interrupted_screen(run: Run) -> str:
    summary = run.summary
    started = [m for m in summary.members if m.result != NOT_STARTED]
    if started:
        lines = [f"INTERRUPTED: the members of {summary.group}"]
        for member in summary.members:
            lines.append(f"  {member.name}: {_stood(run, member)}")
    else:
        # The first: a later one is the cleanup's, interrupted by a second Ctrl-C.
        where = next((r for r in summary.records if r.result == INTERRUPTED), None)
        title = "INTERRUPTED"
        if where:
            title += f": {where.step}" + (f" on {where.env}" if where.env else "")
        lines = [title]
        said = _aftermath(where) if where else ""
        if said:
            lines.append(f"  {said}")
    lines.append("  Nothing further was started.")
    lines += _left_behind_lines(run)
    return run.masker.mask("\n".join(lines))


def _stood(run: Run, member: MemberOutcome) -> str:
    """Where a member stood when the run was interrupted."""
    if member.result != INTERRUPTED:
        return member.verdict()
    where = next(
        (r for r in run.summary.records if r.env == member.name and r.result == INTERRUPTED),
        None,
    )
    said = _aftermath(where) if where else ""
    return f"interrupted at {member.step or 'its start'}" + (f". {said}" if said else "")


def _aftermath(where: StepRecord) -> str:
    """What an interrupt of the step `where` left, as the step found it, or what it may have."""
    return where.note or where.aftermath


def _left_behind_lines(run: Run) -> list[str]:
    left_behind = run.summary.left_behind
    if not left_behind:
        return ["  Left behind: nothing."]
    return ["  Left behind, for the next run to deal with:"] + [
        f"    - {what}" for what in left_behind
    ]


def stop_lines(stop: Stop, indent: str = "  ") -> list[str]:
    """A failure's why, fix and last output, as the closing screen shows them."""
    failure = stop.failure
    lines = [f"{indent}why: {failure.why}"]
    if failure.fix:
        lines.append(f"{indent}fix: {failure.fix}")
    if failure.details:
        lines.append(f"{indent}last output:")
        lines += [f"{indent}  {line}" for line in failure.details.splitlines()[-12:]]
    return lines


def members_lines(failed: list[tuple[MemberOutcome, Stop]]) -> list[str]:
    """Each failed member of a federation with its own why, fix and last output."""
    lines = []
    for outcome, stop in failed:
        kind = " (experimental: does not fail the run)" if outcome.experimental else ""
        of = f" of release {stop.release}" if stop.release else ""
        lines.append(f"  {outcome.name}{kind}: {stop.step}{of} failed")
        lines += stop_lines(stop, "    ")
    return lines


def _failure_screen(stop: Stop) -> str:
    run = current()
    if isinstance(stop, MembersFailed):
        lines = [f"FAILED: {stop.failure.why}", *members_lines(stop.failed)]
    else:
        lines = [f"FAILED: {stop.where}", *stop_lines(stop)]
    if run.summary.left_behind:
        lines += _left_behind_lines(run)
    return run.masker.mask("\n".join(lines))


def dry_run_asked(c: Context, dry_run: bool | None, task: str) -> bool:
    """A task's `--dry-run`, or invoke's own `--dry` ("echo commands instead of running").

    `dry_run` is None for a task that has no dry run: under `--dry` it refuses
    rather than run for real.
    """
    if not c.config.run.dry:
        current().dry_run |= bool(dry_run)
        return bool(dry_run)
    if dry_run is None:
        raise StepFailure(invoke_dry_refusal(c, task))
    current().dry_run = True
    return True


def perform(
    c: Context,
    step: Step,
    env_name: str | None,
    *,
    dry_run: bool | None = None,
    release: str | None = None,
    **options: Any,
) -> None:
    """Run one step of the pipeline: time it, report it, explain its failure.

    `dry_run` is None for a task that has no dry run; `options` go to the
    step's action. A step that runs per release, given none, runs once for each
    release of the environment, in order. What the step declares decides the
    rest: the credentials of its environment's cluster are open while it runs
    if it needs them, and the checkout is held against other runs if it
    rewrites it.
    """
    if step.per_release and not release:
        names = listed_releases(env_name)
        for each in names:
            perform(c, step, env_name, dry_run=dry_run, release=each, **options)
        if names:
            return
    name = step.name
    with invocation(name):
        run = current()
        watch = Stopwatch()
        env: Environment | None = None
        try:
            dry = dry_run_asked(c, dry_run, name)
            registry = load_registry()
            env = registry.get(env_name) if (step.needs_env or env_name) else None
            # Of the release named, which must be one of the environment's.
            released = env.target(release).release.name if env else ""
        except StepFailure as failure:
            _record(step, "", env_name or "", FAILED, watch, failure.why)
            annotate(failure, name)
            raise Stop(name, env_name or "", failure, release or "") from None
        env_label = env.name if env else ""
        # A release is named where the environment lists several; one of a single release's
        # steps is shown as the environment's own.
        of = release if release and env is not None and env.listed else ""
        title = f"{name} [{env_label}{' ' + of if of else ''}]" if env_label else name
        if env is not None:
            run.environment(env.name).step = step
            # Whatever the step prints, a secret it reads or a command echoes stays masked.
            register_secret_values(env)
        runner = Runner(c, dry_run=dry, tool_dirs=toolchain.search_dirs())
        ctx = StepContext(c, registry, env, runner, dry, name, run, release)
        rewrites = step.changes is Changes.CHECKOUT and not dry
        with folded(title + (" (dry run)" if dry else "")):
            try:
                runner.checkpoint()
                exclusive = checkout.held() if rewrites else nullcontext()
                opened = access.open_cluster(ctx) if step.needs_cluster else nullcontext({})
                with exclusive, opened as extra_env:
                    ctx.runner = ctx.runner.with_env(**extra_env)
                    note = step.action(ctx, **options) or ""
            except Skipped as skipped:
                say(f"skipped: {skipped}")
                _record(step, released, env_label, SKIPPED, watch, str(skipped), of)
                return
            except Interrupted as interrupt:
                _record(step, released, env_label, INTERRUPTED, watch, interrupt.aftermath, of)
                if interrupt.left_behind:
                    run.summary.leave_behind(interrupt.left_behind)
                raise
            except KeyboardInterrupt:
                _record(step, released, env_label, INTERRUPTED, watch, "", of)
                raise
            except Exception as error:
                failure = _as_failure(error)
                if isinstance(error, StepFailure):
                    annotate(failure, title)
                _record(step, released, env_label, FAILED, watch, failure.why, of)
                raise Stop(name, env_label, failure, of, rolls_back=step.rolls_back) from None
        result = DRY_RUN if dry else OK
        _record(step, released, env_label, result, watch, note, of)
        said = f"{name} {of}" if of else name
        say(
            f"{said}: {result} in {format_seconds(watch.seconds)}" + (f" — {note}" if note else ""),
            milestone=True,
        )


def _as_failure(error: Exception) -> StepFailure:
    """What a step's exception tells the operator (a bug re-raised under DEPLOY_DEBUG)."""
    if isinstance(error, StepFailure):
        return error
    if isinstance(error, CommandFailed):
        return StepFailure(
            f"`{error.command}` {error.ending}.", error.killed_advice, details=error.tail()
        )
    if isinstance(error, Exit):
        # Helpers shared with the cluster tasks refuse with invoke's Exit.
        return StepFailure(str(error.message or error))
    if os.environ.get("DEPLOY_DEBUG"):
        raise error
    return unexpected(error)


def _record(
    step: Step,
    release: str,
    label: str,
    result: str,
    watch: Stopwatch,
    note: str,
    of_release: str = "",
) -> None:
    record = StepRecord(
        step.name,
        label,
        result,
        watch.seconds,
        note,
        release=release,
        of_release=bool(of_release),
        started=watch.started_at,
        ended=watch.started_at + watch.seconds,
        aftermath=step.aftermath(label) if result == INTERRUPTED else "",
    )
    current().summary.add(record)
