"""Everything the pipeline prints goes through here.

One door for output means one place where secret values are masked (with the
run's masker, tasks/core/run.py), where CI log folding happens, and where a
federation's members, running side by side, get readable output: see
`MembersConsole`.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from tasks.core.masking import escape_data, escape_property
from tasks.core.report import format_seconds
from tasks.core.run import current, here

if TYPE_CHECKING:
    from tasks.core.errors import StepFailure


def say(message: str = "", *, stream: TextIO | None = None, milestone: bool = False) -> None:
    """Print a line, secrets masked.

    `milestone` marks a step's start or end: while members run side by side,
    it is what their progress shows.
    """
    text = current().masker.mask(message)
    member = here()
    if member is not None and member.output is not None:
        member.output.write(text, err=stream is sys.stderr, milestone=milestone)
        return
    target = stream or sys.stdout
    target.write(text + "\n")
    target.flush()


def warn(message: str) -> None:
    """Print a warning and keep it for the run's summary."""
    say(f"WARNING: {message}", stream=sys.stderr)
    current().summary.warn(message)


def draws_in_place(stream: TextIO) -> bool:
    """Whether output may be redrawn in place on `stream`: a terminal this thread has alone."""
    member = here()
    return stream.isatty() and (member is None or member.output is None)


def ci_system() -> str | None:
    """The CI service this runs under, by its documented environment variables."""
    if os.environ.get("GITHUB_ACTIONS") == "true":
        return "github"
    if os.environ.get("TRAVIS") == "true":
        return "travis"
    if os.environ.get("CI"):
        return "generic"
    return None


def annotate(failure: StepFailure, title: str) -> None:
    """On GitHub Actions, mark each line of the operator's files the failure is about: the run
    page and the pull request's diff show the message on that line."""
    if ci_system() != "github":
        return
    for where in failure.locations:
        place = f"file={escape_property(where.path)},line={where.line},col={where.column}"
        say(f"::error {place},title={escape_property(title)}::{escape_data(where.message)}")


@contextmanager
def folded(title: str) -> Iterator[None]:
    """Fold a block of output in the CI log; a plain header elsewhere."""
    member = here()
    system = ci_system() if member is None or member.output is None else None
    fold_id = "".join(ch if ch.isalnum() else "_" for ch in title)
    if system == "github":
        say(f"::group::{title}")
    elif system == "travis":
        say(f"travis_fold:start:{fold_id}")
        say(f"==> {title}")
    else:
        # A member's own output is folded whole when it ends (MembersConsole).
        say(f"==> {title}", milestone=True)
    try:
        yield
    finally:
        if system == "github":
            say("::endgroup::")
        elif system == "travis":
            say(f"travis_fold:end:{fold_id}")


class MaskedStream:
    """A text stream that masks secrets before they reach the real one.

    Handed to `c.run(out_stream=..., err_stream=...)` so the output of the
    commands the pipeline runs is masked too. Buffers by line so a secret
    split across two writes is still caught. invoke writes to it from
    threads of its own, so the run's masker and the member whose command
    this is are taken when it is made.
    """

    def __init__(self, target: TextIO) -> None:
        self._target = target
        self._masker = current().masker
        self._member = here()
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            complete, self._pending = self._pending.rsplit("\n", 1)
            self._emit(complete + "\n")
        return len(text)

    def flush(self) -> None:
        # A member's lines are prefixed with its name: a line cut in two would be
        # shown as two lines, so its part waits for the rest (or for `end`).
        if self._member is None or self._member.output is None:
            self.end()
        self._target.flush()

    def end(self) -> None:
        """The command ended: show what is left of its last line."""
        if self._pending:
            self._emit(self._pending)
            self._pending = ""

    def isatty(self) -> bool:
        return self._target.isatty()

    def _emit(self, text: str) -> None:
        masked = self._masker.mask(text)
        if self._member is not None and self._member.output is not None:
            self._member.output.write(masked.rstrip("\n"), err=self._target is sys.stderr)
        else:
            self._target.write(masked)


# -- a federation's members, side by side ------------------------------------------

LINES = "lines"
TERMINAL = "terminal"
CI = "ci"


def members_mode(dry_run: bool) -> str:
    """How the members' output is shown: folded per member in CI, a status line per member on
    a terminal, prefixed lines anywhere else (and in a dry run, which is read whole)."""
    if ci_system():
        return CI
    if sys.stdout.isatty() and not dry_run:
        return TERMINAL
    return LINES


class MemberOutput:
    """Where one member's lines go while the members run side by side."""

    def __init__(self, console: MembersConsole, name: str) -> None:
        self.console = console
        self.name = name
        self.status = "starting"
        self.status_since = time.monotonic()
        self.last = ""
        self.verdict = ""
        self._buffer: list[str] = []
        self._log: TextIO | None = None
        self.log_path: Path | None = None
        if console.mode == TERMINAL and console.log_dir is not None:
            self.log_path = console.log_dir / f"{console.prefix}-{name}.log"
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("w")

    def write(self, text: str, *, err: bool = False, milestone: bool = False) -> None:
        lines = text.split("\n")
        console = self.console
        with console.lock:
            if milestone:
                # "==> upgrade [local-prod]": the status line names the member already.
                self.status = lines[0].removeprefix("==> ").removesuffix(f" [{self.name}]")
                self.status_since = time.monotonic()
                self.last = ""
            elif lines[-1].strip():
                self.last = lines[-1].strip()
            if console.mode == LINES or (console.mode == CI and milestone):
                stream = sys.stderr if err and console.mode == LINES else sys.stdout
                stream.write("".join(f"{self.tag} {line}\n" for line in lines))
                stream.flush()
            if console.mode == CI:
                self._buffer += lines
            elif self._log is not None:
                self._log.write(text + "\n")
                self._log.flush()

    @property
    def tag(self) -> str:
        return f"[{self.name}]".ljust(self.console.width + 2)

    def finish(self, verdict: str) -> None:
        """The member ended: in CI its whole output, folded; on a terminal, its verdict."""
        console = self.console
        with console.lock:
            self.verdict = verdict
            if self._log is not None:
                self._log.close()
                self._log = None
            if console.mode != CI:
                return
            title = f"{self.name}: {verdict}"
            system = ci_system()
            start, end = (
                (f"::group::{title}", "::endgroup::")
                if system == "github"
                else (f"travis_fold:start:{self.name}\n==> {title}", f"travis_fold:end:{self.name}")
                if system == "travis"
                else (f"==> {title}", f"<== {self.name}")
            )
            sys.stdout.write("\n".join([start, *self._buffer, end]) + "\n")
            sys.stdout.flush()
            self._buffer = []


class MembersConsole:
    """The screen while a federation's members deploy side by side.

    lines     every line as it comes, prefixed with its member's name
    terminal  one status line per member, redrawn in place: the step it is at
              and its last line; each member's whole output goes to its log
              under reports/
    ci        each step's start and end as they come, prefixed; each member's
              whole output folded in one block when it ends (a CI log's folds
              can neither nest nor interleave)
    """

    REDRAW_SECONDS = 0.5

    def __init__(self, names: list[str], mode: str, prefix: str, log_dir: Path | None) -> None:
        self.mode = mode
        self.prefix = prefix
        self.log_dir = log_dir
        self.width = max((len(n) for n in names), default=0)
        self.lock = threading.RLock()
        self.members = {name: MemberOutput(self, name) for name in names}
        self._drawn = 0
        self._drawn_at = 0.0

    def logs(self) -> dict[str, Path]:
        """Each member's log, where its whole output goes (terminal mode)."""
        return {name: m.log_path for name, m in self.members.items() if m.log_path}

    def refresh(self, force: bool = False) -> None:
        """Redraw the status lines (terminal mode; the main thread calls it while it waits)."""
        if self.mode != TERMINAL:
            return
        now = time.monotonic()
        if not force and now - self._drawn_at < self.REDRAW_SECONDS:
            return
        columns = shutil.get_terminal_size((100, 20)).columns
        with self.lock:
            lines = []
            for member in self.members.values():
                if member.verdict:
                    state = member.verdict
                else:
                    took = format_seconds(now - member.status_since)
                    state = f"{member.status} ({took})" + (
                        f"  {member.last}" if member.last else ""
                    )
                line = f"  {member.name.ljust(self.width)}  {state}"
                lines.append(line[: columns - 1])
            # Cursor up over the previous drawing, erase to the end of the screen, draw again.
            prefix = f"\x1b[{self._drawn}F\x1b[J" if self._drawn else ""
            sys.stdout.write(prefix + "\n".join(lines) + "\n")
            sys.stdout.flush()
            self._drawn = len(lines)
            self._drawn_at = now


def confirm(question: str) -> bool:
    """Ask the operator; outside a terminal, the answer is no."""
    if not sys.stdin.isatty():
        return False
    answer = input(f"{question} [y/N] ").strip().lower()
    return answer in ("y", "yes")
