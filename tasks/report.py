"""What a run did, step by step: the closing table.

Every step of a run adds a `StepRecord` (environment, result, duration,
note) to the run's `Summary` (tasks/run.py); a run of several steps ends
with a table of them.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from tasks.masking import SecretMasker


@dataclass
class StepRecord:
    step: str
    env: str
    result: str  # "ok", "failed", "skipped", "dry-run", "interrupted"
    seconds: float
    note: str = ""


@dataclass
class Summary:
    """What happened in this run, step by step, for the closing table."""

    masker: SecretMasker
    records: list[StepRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # What the run leaves that the next one must deal with, each with its remedy.
    left_behind: list[str] = field(default_factory=list)
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

    def table(self) -> str:
        rows = [("STEP", "ENVIRONMENT", "RESULT", "DURATION", "NOTE")]
        rows += [
            (r.step, r.env or "-", r.result, format_seconds(r.seconds), r.note)
            for r in self.records
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = [
            "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4]
            for row in rows
        ]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(line.rstrip() for line in lines)


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s"


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.monotonic()

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started
