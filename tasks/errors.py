"""Failures as data: what went wrong, what it means, what to do.

Each step keeps a catalogue of `Diagnosis` entries, one per failure the
reference document's "What could go wrong?" sections name. A command's error
output is matched against the catalogue and the operator gets the
explanation instead of a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from tasks.output import masker


@dataclass(frozen=True)
class Diagnosis:
    """A known failure: the text that reveals it, its meaning and its fix."""

    pattern: str
    why: str
    fix: str

    def matches(self, text: str) -> re.Match[str] | None:
        return re.search(self.pattern, text, re.IGNORECASE | re.MULTILINE)


class StepFailure(Exception):
    """A step cannot go on. Carries everything the operator needs, masked."""

    def __init__(self, why: str, fix: str = "", details: str = "") -> None:
        self.why = masker.mask(why)
        self.fix = masker.mask(fix)
        self.details = masker.mask(details)
        super().__init__(self.why)


class CommandFailed(Exception):
    """A command exited non-zero. Its output is masked on construction."""

    def __init__(self, command: str, exit_code: int, stdout: str, stderr: str) -> None:
        self.command = masker.mask(command)
        self.exit_code = exit_code
        self.stdout = masker.mask(stdout)
        self.stderr = masker.mask(stderr)
        super().__init__(f"{self.command} exited with {exit_code}")

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
        f"{fallback_why} (`{failure.command}` exited with {failure.exit_code}).",
        details=failure.tail(),
    )
