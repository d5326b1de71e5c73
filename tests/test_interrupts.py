"""A cancelled run stops: SIGTERM from CI or Ctrl-C reaches the running command."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tasks.runner import PROJECT_ROOT
from tests.fixtures.chain import demo_registry, lock_exists, release_exists, values

SCRIPT = """
import os, signal, threading, time
import tasks
from invoke import Context
from tasks.chain import _sigterm_as_interrupt
from tasks.runner import Runner

threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
started = time.monotonic()
try:
    with _sigterm_as_interrupt():
        Runner(Context()).run(["sleep", "20"], quiet=True)
    print("finished normally")
except KeyboardInterrupt:
    print(f"interrupted after {time.monotonic() - started:.1f}s")
"""


def test_sigterm_stops_the_running_command_and_the_run():
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=30
    )
    assert "interrupted after" in result.stdout, result.stdout + result.stderr
    assert time.monotonic() - started < 10
    leftover = subprocess.run(["pgrep", "-f", "^sleep 20$"], capture_output=True, text=True)
    assert leftover.stdout == ""


@pytest.mark.cluster
def test_an_interrupted_deploy_says_where_it_stopped_and_releases_its_lock(both_clusters, tmp_path):
    never_ready = "static:\n  podLabels:\n    kwok.binder.test/fail: notready\n"
    env, namespaces = demo_registry(tmp_path, {"extra_values": values(tmp_path, never_ready)})
    process = subprocess.Popen(
        [sys.executable, "-m", "invoke", "deploy", "--env=local-prod", "--yes"],
        cwd=PROJECT_ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "==> wait-rollout [local-staging]" in line or time.monotonic() > deadline:
            break
    time.sleep(2)
    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=60)
    out = "".join(lines) + rest
    assert process.returncode == 130, out[-3000:]
    assert "INTERRUPTED: wait-rollout on local-staging" in out
    assert "Traceback" not in out
    assert not lock_exists(namespaces["local-staging"])
    assert not release_exists("binder-prod", namespaces["local-prod"])
