"""Queued deploys: a deploy asked to wait for the deploy lock takes its turn, or fails at its
bound naming the holder.

Two deploys of one environment come from two checkouts (one run at a time changes a
checkout: tasks/core/checkout.py), as two CI runners or two operators would start them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from sandbox import clusters
from tasks.core.runner import PROJECT_ROOT
from tests.fixtures.chain import (
    demo_registry,
    federation_registry,
    invoke,
    lock_exists,
    release_exists,
    run_and_act,
)
from tests.fixtures.site_chart import unique_release
from tests.test_chain import plant_lock


def git(*args: str, cwd: Path = PROJECT_ROOT) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def second_checkout(tmp_path: Path) -> Path:
    """Another clone of this checkout, its working tree included, using the same local clusters
    and the chart dependencies already fetched."""
    clone = tmp_path / "second-checkout"
    # The working tree as it is, uncommitted changes included, without touching it.
    snapshot = git("stash", "create") or "HEAD"
    git("clone", "-q", "--no-checkout", str(PROJECT_ROOT), str(clone))
    git("checkout", "-q", git("rev-parse", snapshot), cwd=clone)
    for name in ("clusters", "kwok"):
        (clone / ".local").mkdir(exist_ok=True)
        (clone / ".local" / name).symlink_to(PROJECT_ROOT / ".local" / name)
    shutil.copytree(PROJECT_ROOT / "mybinder" / "charts", clone / "mybinder" / "charts")
    return clone


def start_deploy(cwd: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "invoke", "deploy", "--env=local-staging", *args],
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_report(checkout: Path = PROJECT_ROOT) -> dict:
    return json.loads((checkout / "reports" / "run-deploy.json").read_text())


def steps(checkout: Path) -> dict[str, dict]:
    return {step["step"]: step for step in run_report(checkout)["steps"]}


def moment(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def give_the_lock_back(cluster: str, namespace: str) -> Callable[[subprocess.Popen], None]:
    """What the holder of a lock does when its deploy ends: it deletes the lock."""
    return lambda _deploy: clusters.kubectl(
        cluster, "delete", "configmap", "binder-deploy-lock", "-n", namespace
    )


@pytest.mark.cluster
def test_two_deploys_of_one_environment_started_together_take_turns(
    both_clusters, tmp_path, second_checkout
):
    env, namespaces = demo_registry(tmp_path)
    first = start_deploy(PROJECT_ROOT, env, "--wait-for-lock")
    second = start_deploy(second_checkout, env, "--wait-for-lock")
    outputs = [process.communicate(timeout=600)[0] for process in (first, second)]
    for process, out in zip((first, second), outputs, strict=True):
        assert process.returncode == 0, out[-4000:]
    waited = [i for i, out in enumerate(outputs) if "waiting for the deploy lock of" in out]
    assert len(waited) == 1, outputs
    waiter = (PROJECT_ROOT, second_checkout)[waited[0]]
    holder = (second_checkout, PROJECT_ROOT)[waited[0]]
    out = outputs[waited[0]]
    assert "waiting for the deploy lock of local-staging: held by" in out
    assert f"deploying {git('rev-parse', '--short', 'HEAD', cwd=holder)}" in out
    # The second upgraded only once the first had verified its deploy and let the lock go.
    assert moment(steps(waiter)["upgrade"]["start"]) >= moment(steps(holder)["unlock"]["end"])
    assert "after waiting" in steps(waiter)["lock"]["note"]
    history = clusters.kubectl(
        "binder-staging",
        "get",
        "secret",
        "-n",
        namespaces["local-staging"],
        "-l",
        f"owner=helm,name={unique_release(namespaces['local-staging'])}",
        "-o",
        "name",
    )
    assert len(history.split()) == 2, history
    assert not lock_exists(namespaces["local-staging"])


@pytest.mark.cluster
def test_a_deploy_that_waits_too_long_fails_naming_the_holder(both_clusters, tmp_path):
    env, namespaces = demo_registry(tmp_path)
    plant_lock(
        namespaces["local-staging"],
        "octocat on CI run 41",
        int(time.time()) + 600,
        commit="1a2b3c4",
    )
    result = invoke("deploy", "--env=local-staging", "--wait-for-lock=3", env=env)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-3000:]
    assert "waiting for the deploy lock of local-staging: held by octocat on CI run 41" in out
    assert "FAILED: preflight on local-staging" in out
    assert "for the deploy lock of local-staging, and it is still held by octocat on CI run 41" in (
        out
    )
    assert "deploying 1a2b3c4" in out and "Traceback" not in out
    assert not release_exists("binder-staging", namespaces["local-staging"])
    assert lock_exists(namespaces["local-staging"])


@pytest.mark.cluster
def test_in_ci_a_deploy_waits_for_the_lock_by_default_then_takes_it(both_clusters, tmp_path):
    env, namespaces = demo_registry(tmp_path)
    plant_lock(namespaces["local-staging"], "octocat on CI run 41", int(time.time()) + 600)
    deploy = run_and_act(
        ["deploy", "--env=local-staging"],
        {**env, "CI": "true"},
        "waiting for the deploy lock of local-staging: held by octocat on CI run 41",
        give_the_lock_back("binder-staging", namespaces["local-staging"]),
    )
    out = deploy.output
    assert deploy.returncode == 0, out[-4000:]
    assert "waiting for the deploy lock" in out
    assert release_exists("binder-staging", namespaces["local-staging"])
    assert not lock_exists(namespaces["local-staging"])


@pytest.mark.cluster
def test_a_federation_member_waits_for_its_own_lock_in_its_own_thread(demo_clusters, tmp_path):
    env, namespaces = federation_registry(tmp_path, experimental=("local-prod-b",))
    member_namespace = namespaces["local-prod-b"]
    plant_lock(member_namespace, "octocat on CI run 41", int(time.time()) + 600, "binder-prod-b")
    deploy = run_and_act(
        ["deploy", "--env=fed", "--yes", "--wait-for-lock"],
        env,
        "[local-prod-b] waiting for the deploy lock of local-prod-b: held by octocat",
        give_the_lock_back("binder-prod-b", member_namespace),
    )
    out = deploy.output
    assert deploy.returncode == 0, out[-5000:]
    members = {m["name"]: m["result"] for m in run_report()["members"]}
    assert members == {"local-prod": "ok", "local-prod-b": "ok"}, out[-5000:]
    assert "waiting for the deploy lock of local-prod:" not in out
    assert release_exists("binder-prod-b", member_namespace)
