"""The project's own checks: lint, format, types, and the test suite.

The tests run as two shards at once: the cluster tests mostly wait on the local
clusters and the others on their own subprocesses, and two cores can wait for two.
The second shard runs in a copy of the checkout, so that each has its own working
tree, reports, chart dependencies and checkout lock. Both use the same local
clusters, started before them (and stopped after them where this task started
them); every test deploys into namespaces of its own. tests/conftest.py says which
tests each shard runs.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import cast

from invoke import Context, task
from invoke.exceptions import Exit
from invoke.runners import Promise

from sandbox import chartrepo, clusters
from tasks.core.output import say
from tasks.core.report import Stopwatch, format_seconds
from tasks.core.runner import PROJECT_ROOT, invoke_dry_refusal, sigterm_as_interrupt

SHARD_VARIABLE = "BINDER_TEST_SHARD"
# What the copy shares with the checkout: the local clusters' state, which both shards use.
SHARED_STATE = ("clusters", "kwok", "kube-cache")
NOT_COPIED = (".local", "reports", "__pycache__", ".pytest_cache", ".ruff_cache")
# After an interrupt, what is left of a shard gets each signal in turn, then this long to end.
STOPS = ((signal.SIGINT, 20.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0))
# What the checkout finds beside itself (../shared), the copy, elsewhere, is told.
BESIDE_THE_CHECKOUT = {
    "BINDER_DEPLOY_SHARED": PROJECT_ROOT.parent / "shared",
    chartrepo.FOLDER_VARIABLE: chartrepo.SHARED_FOLDER,
    chartrepo.OCI_FOLDER_VARIABLE: chartrepo.OCI_SHARED_FOLDER,
}


@task(
    help={
        "quick": "Leave out the tests that need a local cluster (marked `cluster`).",
        "pytest_args": "Extra arguments for pytest, e.g. '-k grafana -x' (runs one shard).",
    }
)
def test(c: Context, quick: bool = False, pytest_args: str = "") -> None:
    """Lint, check formatting and types, and run every test (what .ci/run runs)."""
    refusal = invoke_dry_refusal(c, "test")
    if refusal:
        raise Exit(refusal)
    watch = Stopwatch()
    c.run("ruff check .", echo=True)
    c.run("ruff format --check .", echo=True)
    # The type checker runs beside the tests; its report follows theirs. What it checks
    # is in pyproject.toml ([tool.pyright]).
    say("$ pyright  (beside the tests; its report follows theirs)")
    types = cast(Promise, c.run("pyright", hide=True, warn=True, asynchronous=True))
    if pytest_args:
        marker = "-m 'not cluster'" if quick else ""
        tests = c.run(
            f"python3 -m pytest -q {marker} {pytest_args}".strip(), echo=True, pty=False, warn=True
        )
        passed = bool(tests and tests.ok)
    else:
        passed = _in_two_shards(quick)
    typed = types.join()
    say(typed.stdout.rstrip())
    ran = {"pytest": passed, "pyright": typed.ok}
    failed = [name for name, ok in ran.items() if not ok]
    if failed:
        raise Exit(f"checks failed: {', '.join(failed)}", code=1)
    say(f"checks passed in {format_seconds(watch.seconds)}")


def _in_two_shards(quick: bool) -> bool:
    """Both shards at once; the second's output follows the first's. True if both passed."""
    clusters_up = nullcontext() if quick else _demo_clusters()
    # Ctrl-C, or SIGTERM (a cancelled CI job), ends both: the copy and the clusters go too.
    with (
        sigterm_as_interrupt(),
        clusters_up,
        tempfile.TemporaryDirectory(prefix="binder-deploy-tests-") as folder,
    ):
        copy = _checkout_copy(Path(folder))
        log = Path(folder) / "second-shard.log"
        mode = "-quick" if quick else ""
        command = [sys.executable, "-m", "pytest", "-q", *(["-m", "not cluster"] if quick else [])]
        say(f"$ {shlex.join(command)}  (and a second shard in a copy of the checkout: {copy})")
        beside = {name: str(path) for name, path in BESIDE_THE_CHECKOUT.items()}
        shards: list[subprocess.Popen[bytes]] = []
        try:
            with log.open("w") as output:
                shards.append(
                    subprocess.Popen(
                        command,
                        cwd=copy,
                        env={**beside, **os.environ, SHARD_VARIABLE: f"2{mode}"},
                        stdout=output,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            shards.append(
                subprocess.Popen(
                    command,
                    env={**os.environ, SHARD_VARIABLE: f"1{mode}"},
                    start_new_session=True,
                )
            )
            codes = [shard.wait() for shard in reversed(shards)]
        finally:
            _stopped(shards)
        say("second shard:")
        say(log.read_text().rstrip())
        return codes == [0, 0]


def _stopped(shards: list[subprocess.Popen[bytes]]) -> None:
    """Each shard runs in a process group of its own: after an interrupt, what is left of
    one (its pytest, the servers its tests started) gets SIGINT, then SIGTERM, then SIGKILL."""
    for stop, grace in STOPS:
        for shard in shards:
            with suppress(ProcessLookupError):
                os.killpg(shard.pid, stop)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            for shard in shards:
                shard.poll()  # reaps a shard that ended: its group is empty once it is
            if not any(_group_alive(shard.pid) for shard in shards):
                return
            time.sleep(0.2)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


@contextmanager
def _demo_clusters() -> Iterator[None]:
    """The demo clusters up for both shards; those started here are stopped after."""
    started = [name for name in clusters.DEMO_CLUSTERS if not clusters.is_up(name)]
    try:
        for name in clusters.DEMO_CLUSTERS:
            clusters.up(name)
        yield
    finally:
        for name in started:
            clusters.down(name)


def _checkout_copy(folder: Path) -> Path:
    """A copy of the working tree as it is (uncommitted changes, unlocked secrets and all)
    that shares the local clusters' state with the checkout."""
    copy = folder / PROJECT_ROOT.name
    shutil.copytree(PROJECT_ROOT, copy, symlinks=True, ignore=shutil.ignore_patterns(*NOT_COPIED))
    (copy / ".local").mkdir()
    for name in SHARED_STATE:
        shared = PROJECT_ROOT / ".local" / name
        shared.mkdir(parents=True, exist_ok=True)
        (copy / ".local" / name).symlink_to(shared)
    return copy
