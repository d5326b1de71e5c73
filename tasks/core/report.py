"""What a run did, step by step: the closing table and the machine-readable report.

Every step of a run adds a `StepRecord` to the run's `Summary`. The run ends
with a table of them on screen and the same records as JSON under reports/
(written whole or not at all, secrets masked), which CI can keep or read. A
failed experimental member of a federation is named loudly without failing
the run.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from tasks.core.masking import SecretMasker

REPORTS_DIR = Path("reports")


class Federation(Protocol):
    """Members deployed at once (tasks/config/registry.py's Group), as the report names them."""

    @property
    def name(self) -> str: ...

    @property
    def members(self) -> tuple[str, ...]: ...

    def is_experimental(self, member: str) -> bool: ...


OK = "ok"
FAILED = "failed"
INTERRUPTED = "interrupted"
DRY_RUN = "dry-run"
SKIPPED = "skipped"
NOT_STARTED = "not started"


@dataclass
class StepRecord:
    step: str
    env: str
    result: str  # "ok", "failed", "skipped", "dry-run", "interrupted"
    seconds: float
    note: str = ""
    release: str = ""
    started: float = 0.0  # seconds since the epoch
    ended: float = 0.0
    # The step worked on one release of an environment that has several.
    of_release: bool = False
    # What an interrupt of the step may have left, where the step did not say (the note
    # does then): the closing screen's, not the report's.
    aftermath: str = ""

    @property
    def label(self) -> str:
        """The step as the table shows it: `upgrade`, or `upgrade traefik` for one release."""
        return f"{self.step} {self.release}" if self.of_release else self.step


@dataclass
class MemberOutcome:
    """How one member of a federation ended: the members' phase reports each one."""

    name: str
    experimental: bool
    result: str = NOT_STARTED  # ok, failed, interrupted, dry-run, not started
    step: str = ""  # where it failed or was interrupted
    why: str = ""

    @property
    def fails_the_run(self) -> bool:
        return self.result in (FAILED, INTERRUPTED, NOT_STARTED) and not self.experimental

    def verdict(self) -> str:
        if self.result in (OK, DRY_RUN):
            return "deployed and validated" if self.result == OK else "dry run"
        where = f" at {self.step}" if self.step else ""
        said = f"{self.result.upper()}{where}"
        if self.experimental and self.result == FAILED:
            said += " (experimental: does not fail the run)"
        return f"{said}: {self.why}" if self.why else said


@dataclass
class Summary:
    """What happened in this run, step by step, for the closing table and the report."""

    masker: SecretMasker
    records: list[StepRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # What the run leaves that the next one must deal with, each with its remedy.
    left_behind: list[str] = field(default_factory=list)
    # A federation's members, in the group's order; empty for any other run.
    group: str = ""
    members: list[MemberOutcome] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, record: StepRecord) -> None:
        record.note = self.masker.mask(record.note)
        with self._lock:
            self.records.append(record)

    def warn(self, message: str) -> None:
        with self._lock:
            self.warnings.append(self.masker.mask(message))

    def leave_behind(self, what: str) -> None:
        with self._lock:
            self.left_behind.append(self.masker.mask(what))

    def members_of(self, group: Federation) -> dict[str, MemberOutcome]:
        """The outcome of each member of `group`, in its order; made at the first ask."""
        with self._lock:
            if self.group != group.name:
                self.group = group.name
                self.members = [MemberOutcome(m, group.is_experimental(m)) for m in group.members]
            return {m.name: m for m in self.members}

    def ordered(self) -> list[StepRecord]:
        """The records in the table's order: the run's own, then each member's block."""
        names = [m.name for m in self.members]
        own = [r for r in self.records if r.env not in names]
        return own + [r for name in names for r in self.records if r.env == name]

    def table(self) -> str:
        rows = [("STEP", "ENVIRONMENT", "RESULT", "DURATION", "NOTE")]
        rows += [
            (r.label, r.env or "-", r.result, format_seconds(r.seconds), r.note)
            for r in self.ordered()
        ]
        lines = aligned(rows)
        if self.members:
            width = max(len(m.name) for m in self.members)
            lines.append(f"members of {self.group}:")
            lines += [f"  {m.name.ljust(width)}  {m.verdict()}" for m in self.members]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(line.rstrip() for line in lines)

    def markdown(self, task: str, target: str, result: str, screen: str = "") -> str:
        """The table, members, warnings, what is left behind and the closing screen, as
        Markdown for a CI run page (GitHub's step summary); masked."""
        title = f"invoke {task or 'step'}" + (f" {target}" if target else "")
        lines = [f"### {_cell(title)}: {result}", ""]
        lines += ["| step | environment | result | duration | note |", "|---|---|---|---|---|"]
        lines += [
            f"| {_cell(r.step)} | {_cell(r.env or '-')} | {_cell(r.result)} "
            f"| {format_seconds(r.seconds)} | {_cell(r.note)} |"
            for r in self.ordered()
        ]
        if self.members:
            lines += ["", f"**Members of {_cell(self.group)}**", ""]
            lines += [f"- {_cell(m.name)}: {_cell(m.verdict())}" for m in self.members]
        for heading, items in (("Warnings", self.warnings), ("Left behind", self.left_behind)):
            if items:
                lines += ["", f"**{heading}**", ""] + [f"- {_cell(item)}" for item in items]
        if screen:
            # A fence longer than any run of backticks in the screen cannot be closed by it.
            fence = "`" * max(3, 1 + max((len(run) for run in re.findall("`+", screen)), default=0))
            lines += ["", f"{fence}text", screen, fence]
        return self.masker.mask("\n".join(lines))

    def document(self, task: str, target: str, result: str) -> dict[str, Any]:
        """The run as JSON-ready data: what CI reads instead of the table."""
        return {
            "task": task,
            "target": target,
            "result": result,
            "started": _timestamp(self.started),
            "ended": _timestamp(time.time()),
            "steps": [
                {
                    "step": r.step,
                    "environment": r.env,
                    "release": r.release,
                    "result": r.result,
                    "start": _timestamp(r.started),
                    "end": _timestamp(r.ended),
                    "seconds": round(r.seconds, 3),
                    "note": r.note,
                }
                for r in self.records
            ],
            "group": self.group,
            "members": [asdict(m) for m in self.members],
            "warnings": list(self.warnings),
            "left_behind": list(self.left_behind),
        }

    def write(self, path: Path, task: str, target: str, result: str) -> None:
        """Write the report whole or not at all: a reader never sees half of one."""
        text = self.masker.mask(json.dumps(self.document(task, target, result), indent=2))
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(descriptor, "w") as file:
                file.write(text + "\n")
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def aligned(rows: Sequence[tuple[str, ...]]) -> list[str]:
    """The rows as lines, each column but the last as wide as its widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join([*map(str.ljust, row[:-1], widths), row[-1]]).rstrip() for row in rows]


def _cell(text: str) -> str:
    """Text that stays inside one Markdown table cell or list item, shown as written."""
    flat = " ".join(text.split())
    return flat.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s"


def counted(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def abridged(names: list[str], shown: int = 3) -> str:
    """`a, b, c and 2 more`."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.started_at = time.time()

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started
