"""One run at a time changes a checkout's working tree.

Two deploys started from one checkout would both run git-crypt on the same
files, rewrite `mybinder/charts/` and lock the secrets again under each
other's feet, long before either reaches the cluster's deploy lock. A run that
changes the checkout (a deploy, decrypt-secrets, lock-secrets, helm-deps)
holds an exclusive `flock` on `.local/checkout.lock` from its start. The
kernel releases it when the process ends, however it ends, so an interrupt or
a crash leaves nothing to clean up; the file's text only says who holds it.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from tasks.core.errors import StepFailure
from tasks.core.run import current
from tasks.core.runner import PROJECT_ROOT

LOCK_FILE = Path(".local/checkout.lock")


def holder_text() -> str:
    """Who holds the lock, as the process refused it will print it."""
    shown = shlex.join(["invoke", *sys.argv[1:]])
    started = datetime.now(UTC).isoformat(timespec="seconds")
    return f"pid {os.getpid()}, `{shown}`, since {started}"


@contextmanager
def held(root: Path = PROJECT_ROOT) -> Iterator[None]:
    """Hold the checkout for the block, or fail at once naming the run that holds it."""
    run = current()
    if run.holds_checkout:
        # The deploy holds it already; its decrypt-secrets and helm-deps run under it.
        yield
        return
    path = root / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not opened with truncation: the holder's text must survive our attempt.
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(descriptor, 4096, 0).decode(errors="replace").strip()
            raise StepFailure(
                f"Another run is changing this checkout ({root}): "
                f"{other or 'a process that has not said who it is yet'}. Two runs from one "
                "checkout would decrypt, lock and rewrite the same files under each other.",
                "Wait for it to finish, or run from another clone of the repository.",
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, (holder_text() + "\n").encode(), 0)
        run.holds_checkout = True
        try:
            yield
        finally:
            run.holds_checkout = False
            os.ftruncate(descriptor, 0)
    finally:
        os.close(descriptor)
