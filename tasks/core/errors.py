"""Failures as data: what went wrong, what it means, what to do.

A catalogue of `Diagnosis` entries holds one per known failure of a tool
(tasks/core/diagnoses.py for helm and kubectl, the kinds and key sources for
theirs). A command's error output is matched against the catalogue and the
operator gets the explanation instead of a traceback.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterable
from dataclasses import dataclass

from tasks.core.report import MemberOutcome
from tasks.core.run import current


@dataclass(frozen=True)
class Diagnosis:
    """A known failure: the text that reveals it, its meaning and its fix."""

    pattern: str
    why: str
    fix: str

    def matches(self, text: str) -> re.Match[str] | None:
        return re.search(self.pattern, text, re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Location:
    """Where in an operator's file a failure is: CI shows it on that line (tasks/core/output.py)."""

    path: str  # relative to the project, as the repository has it
    line: int
    column: int
    message: str


class StepFailure(Exception):
    """A step cannot go on. Carries everything the operator needs, masked, and the lines of
    the operator's files it is about (`locations`) when it knows them."""

    def __init__(
        self, why: str, fix: str = "", details: str = "", locations: Iterable[Location] = ()
    ) -> None:
        masker = current().masker
        self.why = masker.mask(why)
        self.fix = masker.mask(fix)
        self.details = masker.mask(details)
        self.locations = [
            Location(where.path, where.line, where.column, masker.mask(where.message))
            for where in locations
        ]
        super().__init__(self.why)


class CommandFailed(Exception):
    """A command exited non-zero. Its output is masked on construction."""

    def __init__(self, command: str, exit_code: int, stdout: str, stderr: str) -> None:
        masker = current().masker
        self.command = masker.mask(command)
        self.exit_code = exit_code
        self.stdout = masker.mask(stdout)
        self.stderr = masker.mask(stderr)
        super().__init__(f"{self.command} {self.ending}")

    @property
    def ending(self) -> str:
        """How the command ended: its exit code, or the signal that killed it."""
        if self.exit_code >= 0:
            return f"exited with {self.exit_code}"
        number = -self.exit_code
        try:
            name = signal.Signals(number).name
        except ValueError:
            return f"was killed by signal {number}"
        return f"was killed by {name} (signal {number})"

    @property
    def killed_advice(self) -> str:
        """What a death by signal most likely means; empty for an ordinary exit."""
        if self.exit_code >= 0:
            return ""
        if -self.exit_code == signal.SIGKILL:
            return (
                "Nothing can catch SIGKILL: most often the kernel's out-of-memory killer sent "
                "it (see `dmesg`, or the CI job's memory limit), or a CI job's hard time limit "
                "did. If it recurs, give the machine more memory."
            )
        if -self.exit_code in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            return (
                "Something asked it to stop: a CI cancellation or time limit, a closed "
                "terminal, or an operator."
            )
        return "It crashed; if it recurs, report it to the tool's makers."

    @property
    def output(self) -> str:
        return f"{self.stderr}\n{self.stdout}".strip()

    def tail(self, lines: int = 12) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


def explain(
    failure: CommandFailed, catalogue: Iterable[Diagnosis], fallback_why: str
) -> StepFailure:
    """Turn a failed command into a StepFailure, using the first diagnosis that fits."""
    for diagnosis in catalogue:
        found = diagnosis.matches(failure.output)
        if found:
            why = diagnosis.why.format(*found.groups(), **found.groupdict())
            fix = diagnosis.fix.format(*found.groups(), **found.groupdict())
            return StepFailure(why, fix, details=failure.tail())
    return StepFailure(
        f"{fallback_why} (`{failure.command}` {failure.ending}).",
        failure.killed_advice,
        details=failure.tail(),
    )


class Skipped(Exception):
    """Raised by a step that has nothing to do; its message says why."""


class Interrupted(KeyboardInterrupt):
    """An interrupt, with the state it left (`aftermath`: a release helm cancelled, say) and
    what the next run needs removed, and how (`left_behind`)."""

    def __init__(self, aftermath: str, left_behind: str = "") -> None:
        super().__init__(aftermath)
        self.aftermath = aftermath
        self.left_behind = left_behind


class Stop(Exception):
    """A step failed; the pipeline stops here. Already reported."""

    def __init__(
        self,
        step: str,
        env: str,
        failure: StepFailure,
        release: str = "",
        *,
        rolls_back: bool = False,
    ) -> None:
        self.step = step
        self.env = env
        self.failure = failure
        # The release of the environment the step worked on, when it has several.
        self.release = release
        # The step says its failure is answered by a rollback (tasks/core/step.py).
        self.rolls_back = rolls_back
        super().__init__(f"{step} failed on {env}")

    @property
    def where(self) -> str:
        """`upgrade on prod`, `upgrade of release traefik on prod`, or the step alone."""
        if not self.env:
            return self.step
        of = f" of release {self.release}" if self.release else ""
        return f"{self.step}{of} on {self.env}"


class MembersFailed(Stop):
    """Members of a federation failed, each for its own reason; the run fails for them."""

    def __init__(
        self, group: str, failed: list[tuple[MemberOutcome, Stop]], names: list[str]
    ) -> None:
        """`failed`: each member that failed, with its failure; `names`: every member the run
        fails for (one that was interrupted, or never started, too)."""
        self.failed = failed
        said = ", ".join(names)
        super().__init__("members", group, StepFailure(f"{said} of {group} failed."))
