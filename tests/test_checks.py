"""`invoke test`'s two shards: every test runs in exactly one, and an interrupt leaves no
process of either behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tasks.cli import checks
from tasks.core.runner import PROJECT_ROOT


def collected(*args: str, shard: str = "") -> set[str]:
    env = {key: value for key, value in os.environ.items() if key != checks.SHARD_VARIABLE}
    if shard:
        env[checks.SHARD_VARIABLE] = shard
    listed = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line for line in listed.splitlines() if "::" in line}


@pytest.mark.parametrize("marker", [(), ("-m", "not cluster")], ids=["whole", "quick"])
def test_every_test_runs_in_exactly_one_shard(marker: tuple[str, ...]) -> None:
    mode = "-quick" if marker else ""
    every = collected(*marker)
    first = collected(*marker, shard=f"1{mode}")
    second = collected(*marker, shard=f"2{mode}")
    assert first and second
    assert not first & second
    assert first | second == every


def test_an_interrupted_shard_leaves_no_process_of_its_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(checks, "STOPS", tuple((stop, 1.0) for stop, _ in checks.STOPS))
    # A shard whose test started a server that ignores SIGINT, as a stuck one would.
    shard = subprocess.Popen(["sh", "-c", "trap '' INT; sleep 60 & wait"], start_new_session=True)
    time.sleep(0.3)
    checks._stopped([shard])
    # SIGINT is ignored, so SIGTERM, the next, ended it, and what it had started.
    assert shard.returncode == -signal.SIGTERM
    with pytest.raises(ProcessLookupError):
        os.killpg(shard.pid, 0)
