"""Everything the pipeline prints goes through here.

One door for output means one place where secret values are masked, where CI
log folding happens, and where every step's duration is recorded for the
run's summary table.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO

MASK = "********"
# Shorter values ("true", "1", "prod") would mask ordinary words everywhere.
_MIN_SECRET_LENGTH = 6
# Tools quote secrets in part: PyYAML's error shows a shortened line
# ("... 0123456789abcdef0123: x"), a truncated repr ends in "...". Any run of
# this many characters of a long secret is masked wherever it appears; shorter
# runs would hit ordinary words.
FRAGMENT_LENGTH = 12
_FRAGMENT_SOURCE = re.compile(rf"\S{{{FRAGMENT_LENGTH},}}")


class SecretMasker:
    """Remembers secret values and blanks them, whole or in part, out of any text."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        # Every FRAGMENT_LENGTH-character window of every long, unbroken run of a secret.
        self._windows: set[str] = set()

    def register(self, value: object) -> None:
        """Mask `value` (and each of its lines) in everything printed from now on."""
        if not isinstance(value, str):
            return
        for candidate in {value, value.strip(), *value.splitlines()}:
            candidate = candidate.strip()
            if len(candidate) >= _MIN_SECRET_LENGTH:
                self._values.add(candidate)
        for run in _FRAGMENT_SOURCE.findall(value):
            self._windows.update(
                run[i : i + FRAGMENT_LENGTH] for i in range(len(run) - FRAGMENT_LENGTH + 1)
            )

    def register_tree(self, tree: object) -> None:
        """Mask every string leaf of a parsed YAML/JSON document."""
        if isinstance(tree, dict):
            for value in tree.values():
                self.register_tree(value)
        elif isinstance(tree, list):
            for value in tree:
                self.register_tree(value)
        elif tree is not None and not isinstance(tree, bool):
            # YAML reads an all-digit token or a date as a number or a date; helm and
            # the commands it feeds print it as text all the same.
            self.register(tree if isinstance(tree, str) else str(tree))

    def mask(self, text: str) -> str:
        # Longest first, so a secret containing another is masked whole.
        for value in sorted(self._values, key=len, reverse=True):
            if value in text:
                text = text.replace(value, MASK)
        return self._mask_fragments(text)

    def _mask_fragments(self, text: str) -> str:
        """Blank out every stretch of `text` made of windows of a secret."""
        if not self._windows:
            return text
        spans: list[list[int]] = []
        for start in range(len(text) - FRAGMENT_LENGTH + 1):
            if text[start : start + FRAGMENT_LENGTH] in self._windows:
                end = start + FRAGMENT_LENGTH
                if spans and start <= spans[-1][1]:
                    spans[-1][1] = end
                else:
                    spans.append([start, end])
        for start, end in reversed(spans):
            text = text[:start] + MASK + text[end:]
        return text

    def forget_all(self) -> None:
        self._values.clear()
        self._windows.clear()


masker = SecretMasker()


class MaskedStream:
    """A text stream that masks secrets before they reach the real one.

    Handed to `c.run(out_stream=..., err_stream=...)` so the output of the
    commands the pipeline runs is masked too. Buffers by line so a secret
    split across two writes is still caught.
    """

    def __init__(self, target: TextIO) -> None:
        self._target = target
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            complete, self._pending = self._pending.rsplit("\n", 1)
            self._target.write(masker.mask(complete + "\n"))
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self._target.write(masker.mask(self._pending))
            self._pending = ""
        self._target.flush()

    def isatty(self) -> bool:
        return self._target.isatty()


def say(message: str = "", *, stream: TextIO | None = None) -> None:
    """Print a line, secrets masked."""
    target = stream or sys.stdout
    target.write(masker.mask(message) + "\n")
    target.flush()


def warn(message: str) -> None:
    """Print a warning and keep it for the run's summary."""
    say(f"WARNING: {message}", stream=sys.stderr)
    summary.warnings.append(masker.mask(message))


def ci_system() -> str | None:
    """The CI service this runs under, by its documented environment variables."""
    if os.environ.get("GITHUB_ACTIONS") == "true":
        return "github"
    if os.environ.get("TRAVIS") == "true":
        return "travis"
    if os.environ.get("CI"):
        return "generic"
    return None


@contextmanager
def folded(title: str) -> Iterator[None]:
    """Fold a block of output in the CI log; a plain header elsewhere."""
    system = ci_system()
    fold_id = "".join(ch if ch.isalnum() else "_" for ch in title)
    if system == "github":
        say(f"::group::{title}")
    elif system == "travis":
        say(f"travis_fold:start:{fold_id}")
        say(f"==> {title}")
    else:
        say(f"==> {title}")
    try:
        yield
    finally:
        if system == "github":
            say("::endgroup::")
        elif system == "travis":
            say(f"travis_fold:end:{fold_id}")


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

    records: list[StepRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # What the run leaves that the next one must deal with, each with its remedy.
    left_behind: list[str] = field(default_factory=list)

    def add(self, record: StepRecord) -> None:
        record.note = masker.mask(record.note)
        self.records.append(record)

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

    def reset(self) -> None:
        self.records.clear()
        self.warnings.clear()
        self.left_behind.clear()


summary = Summary()


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
