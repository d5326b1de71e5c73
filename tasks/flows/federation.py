"""A federation's members' phase: every member deployed at once, each on its own.

Once the gate's stage has passed (tasks/cli/chain.py), each member runs its own
stage (check-promotion, lock, annotate-grafana, upgrade, wait-rollout,
smoke-test, verified) in a thread of its own, with its own invoke config and
its own part of the run (tasks/core/run.py): its credentials, deploy lock,
Grafana region, rollout watch and smoke run are its alone. A member that
fails does not stop the others; with --rollback-on-failure it rolls itself
back. The run fails when a member that is not experimental failed, and says
why for each; an experimental member's failure is said loudly and leaves
the exit code alone.

Only the main thread receives Ctrl-C and SIGTERM. It forwards them to every
member (its running command gets SIGINT; its rollout watch stops at the next
tick), waits while each one cleans up (lock released, region closed as
interrupted, a rollback when asked for and safe), and the closing screen
says where each member stood. A second Ctrl-C is forwarded too: it cuts the
cleanup short, which the closing screen then names as left behind.
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from invoke import Collection, Config, Context, Executor, Task

from tasks.config.registry import Group
from tasks.core.errors import MembersFailed, Stop
from tasks.core.output import MembersConsole, members_mode, say, warn
from tasks.core.report import DRY_RUN, FAILED, INTERRUPTED, OK, REPORTS_DIR, MemberOutcome
from tasks.core.run import EnvironmentRun, current, here, member_thread
from tasks.core.runner import PROJECT_ROOT
from tasks.flows import cleanup
from tasks.flows.pipeline import members_lines, unexpected

JOIN_SECONDS = 0.2


def deploy_members(
    c: Context,
    group: Group,
    member_stage: Callable[[str], Task],
    *,
    dry_run: bool,
    rollback_on_failure: bool,
) -> None:
    """Deploy every member of `group` at once; raise MembersFailed if one that counts failed."""
    run = current()
    names = list(group.members)
    mode = members_mode(dry_run)
    console = MembersConsole(names, mode, run.task or "deploy", PROJECT_ROOT / REPORTS_DIR)
    outcomes = run.summary.members_of(group)
    failures: dict[str, Stop] = {}
    members = []
    for name in names:
        held = run.environment(name)
        held.output = console.members[name]
        member = _Member(
            c.config.clone(),
            member_stage(name),
            outcomes[name],
            failures,
            dry_run,
            rollback_on_failure and not dry_run,
        )
        members.append((member, member_thread(held, member.deploy)))
    say(f"members of {group.name}, deploying at once: {', '.join(names)}")
    for name, log in console.logs().items():
        say(f"  {name}'s output: {log.relative_to(PROJECT_ROOT)}")
    try:
        for _, thread in members:
            thread.start()
        _wait([member for member, _ in members], console)
    except KeyboardInterrupt:
        say("interrupted: stopping every member, then waiting for each one's cleanup")
        _stop_members([member for member, _ in members], console, names)
        raise
    finally:
        console.refresh(force=True)
        for name in names:
            run.environment(name).output = None
    failed = [(outcomes[n], failures[n]) for n in names if n in failures]
    experimental = [(o, s) for o, s in failed if o.experimental]
    if experimental:
        heading = "EXPERIMENTAL MEMBERS FAILED (the run does not fail for them):"
        say("\n".join([heading, *members_lines(experimental)]), stream=sys.stderr)
        for outcome, stop in experimental:
            warn(f"experimental member {outcome.name} failed at {stop.step}: {stop.failure.why}")
    failing = [name for name in names if outcomes[name].fails_the_run]
    if failing:
        raise MembersFailed(group.name, failed, failing)


def _wait(members: list[_Member], console: MembersConsole) -> None:
    """Until every member has ended, its outcome set: waited for with a timeout, so that the
    main thread stays free to take Ctrl-C and to redraw.

    Each member says it has ended (`ended`) rather than its thread being joined: on
    Python 3.11, a Ctrl-C that lands while `Thread.join` waits marks the thread as
    stopped though it still runs, and its member would be reported as never started.
    """
    while running := [member for member in members if not member.ended.is_set()]:
        for member in running:
            member.ended.wait(JOIN_SECONDS / len(running))
        console.refresh()


def _stop_members(members: list[_Member], console: MembersConsole, names: list[str]) -> None:
    run = current()
    while True:
        for name in names:
            run.environment(name).interrupt()
        try:
            _wait(members, console)
            return
        except KeyboardInterrupt:
            say("interrupted again: cutting the members' cleanup short")


@dataclass
class _Member:
    """One member's deploy, run in its own thread."""

    config: Config
    stage: Task
    outcome: MemberOutcome
    failures: dict[str, Stop]
    dry_run: bool
    rollback_on_failure: bool
    # Set once the member's deploy has ended, its outcome and cleanup done.
    ended: threading.Event = field(default_factory=threading.Event)

    def deploy(self) -> None:
        held = here()
        assert held is not None, "a member runs in its member thread"
        name = held.name
        outcome = self.outcome
        try:
            self._stages(Context(config=self.config), held)
        except Stop as stop:
            self.failures[name] = stop
            outcome.result, outcome.step, outcome.why = FAILED, stop.step, stop.failure.why
        except KeyboardInterrupt:
            outcome.result, outcome.step = INTERRUPTED, outcome.step or held.step_name
        except Exception as bug:  # a member's thread must end with its outcome, not a traceback
            if os.environ.get("DEPLOY_DEBUG"):
                traceback.print_exc()
            stop = Stop(held.step_name or "deploy", name, unexpected(bug))
            self.failures[name] = stop
            outcome.result, outcome.step, outcome.why = FAILED, stop.step, stop.failure.why
        else:
            outcome.result = DRY_RUN if self.dry_run else OK
        finally:
            try:
                held.close_held()
            except (Exception, KeyboardInterrupt) as error:
                warn(f"Closing what {name} held open failed: {error or 'interrupted'}")
            if held.output is not None:
                held.output.finish(outcome.verdict())
            self.ended.set()

    def _stages(self, c: Context, held: EnvironmentRun) -> None:
        name = held.name
        ending = cleanup.Ending()
        closing = cleanup.closed_on_exit(
            c,
            name,
            only=name,
            dry_run=self.dry_run,
            rollback_on_failure=self.rollback_on_failure,
            ending=ending,
        )
        try:
            with closing:
                Executor(Collection(self.stage), config=self.config).execute(self.stage.name)
        except KeyboardInterrupt:
            self.outcome.step = ending.interrupted_at
            if ending.rolled_back:
                self.outcome.why = "rolled back to its last good revision"
            raise
