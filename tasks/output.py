"""Everything the pipeline prints goes through here.

One door for output means one place where secret values are masked (with the
run's masker, tasks/run.py) and where CI log folding happens; each step's
duration is recorded for the run's summary (tasks/report.py).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from tasks.run import current


def say(message: str = "", *, stream: TextIO | None = None) -> None:
    """Print a line, secrets masked."""
    text = current().masker.mask(message)
    target = stream or sys.stdout
    target.write(text + "\n")
    target.flush()


def warn(message: str) -> None:
    """Print a warning and keep it for the run's summary."""
    say(f"WARNING: {message}", stream=sys.stderr)
    current().summary.warn(message)


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


class MaskedStream:
    """A text stream that masks secrets before they reach the real one.

    Handed to `c.run(out_stream=..., err_stream=...)` so the output of the
    commands the pipeline runs is masked too. Buffers by line so a secret
    split across two writes is still caught. invoke writes to it from
    threads of its own, so the run's masker is taken when it is made.
    """

    def __init__(self, target: TextIO) -> None:
        self._target = target
        self._masker = current().masker
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            complete, self._pending = self._pending.rsplit("\n", 1)
            self._emit(complete + "\n")
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self._emit(self._pending)
            self._pending = ""
        self._target.flush()

    def isatty(self) -> bool:
        return self._target.isatty()

    def _emit(self, text: str) -> None:
        self._target.write(self._masker.mask(text))
