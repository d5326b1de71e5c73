"""A cancelled run stops: SIGTERM from CI or Ctrl-C reaches the running command.

It ends with a screen naming the step that was running, what the interrupt left
of the release, and what (if anything) is left behind for the next run; the
deploy lock is given back.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from invoke import Context

from tasks.core.errors import CommandFailed
from tasks.core.runner import PROJECT_ROOT, Runner
from tests.fakes.webhook import WebhookReceiver
from tests.fixtures.chain import (
    change_environment,
    command_line,
    demo_registry,
    descendants,
    lock_exists,
    once_helm_holds_the_release,
    release_exists,
    run_and_act,
    slow_chart,
    values,
)

SCRIPT = """
import os, signal, threading, time
import tasks
from invoke import Context
from tasks.core.runner import Runner, sigterm_as_interrupt

threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
started = time.monotonic()
try:
    with sigterm_as_interrupt():
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


def test_the_commands_after_an_interrupt_run_to_their_end():
    # The interrupt stops the command running then; the cleanup's commands that follow
    # (releasing the deploy lock, closing a Grafana region) run to their end.
    threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        Runner(Context()).run(["sleep", "20"], quiet=True)
    assert time.monotonic() - started < 15
    result = Runner(Context()).run(["echo", "cleanup ran"], quiet=True)
    assert result.stdout.strip() == "cleanup ran"


def test_a_command_killed_by_a_signal_is_named_with_the_signal():
    with pytest.raises(CommandFailed) as failed:
        Runner(Context()).run(["sh", "-c", "kill -KILL $$"], quiet=True)
    assert failed.value.ending == "was killed by SIGKILL (signal 9)"
    assert "out-of-memory killer" in failed.value.killed_advice


def deploy_env(tmp_path, **staging_changes):
    chart = slow_chart(tmp_path)
    return demo_registry(tmp_path, staging_changes, top={"chart": str(chart)})


@pytest.mark.cluster
def test_ctrl_c_during_helm_upgrade_names_the_upgrade_and_releases_the_lock(
    both_clusters, tmp_path
):
    env, namespaces = deploy_env(tmp_path)
    run = run_and_act(
        ["deploy", "--env=local-prod", "--yes"],
        env,
        "$ helm upgrade ",
        once_helm_holds_the_release(
            namespaces["local-staging"], lambda process: process.send_signal(signal.SIGINT)
        ),
    )
    out = run.output
    assert run.returncode == 130, out[-3000:]
    assert "INTERRUPTED: upgrade on local-staging" in out, out[-3000:]
    assert "helm cancelled the upgrade" in out and "is marked failed at revision 1" in out
    assert "Deploy again: it is the release's first revision" in out
    assert "Left behind: nothing." in out
    assert "Traceback" not in out
    assert not lock_exists(namespaces["local-staging"])
    assert not release_exists("binder-prod", namespaces["local-prod"])


@pytest.mark.cluster
def test_sigterm_during_the_smoke_suite_names_it_and_releases_the_lock(both_clusters, tmp_path):
    # No static-files pod: the suite waits, within its warm-up, for the Service's endpoints.
    env, namespaces = demo_registry(
        tmp_path, {"extra_values": values(tmp_path, "static:\n  replicas: 0\n")}
    )
    env["SMOKE_WARMUP_SECONDS"] = "50"
    suites: list[int] = []

    def cancel(process: subprocess.Popen) -> None:
        # The suite is collecting or waiting by now; an interrupt while Python still
        # imports pytest would test the interpreter's start-up, not the deploy.
        time.sleep(1)
        suites.extend(
            pid for pid in descendants(process.pid) if "tests/smoke" in " ".join(command_line(pid))
        )
        process.send_signal(signal.SIGTERM)

    change_environment(env, "local-prod", notify={"url_env": "DEPLOY_TEST_WEBHOOK"})
    with WebhookReceiver() as hook:
        env["DEPLOY_TEST_WEBHOOK"] = f"{hook.url}/services/interrupted-hook-token"
        run = run_and_act(
            ["deploy", "--env=local-prod", "--yes"], env, "test session starts", cancel
        )
    out = run.output
    assert suites, "the smoke suite was not running when the deploy was cancelled"
    assert run.returncode == 130, out[-3000:]
    assert "INTERRUPTED: smoke-test on local-staging" in out, out[-3000:]
    # The target's chat hears where the deploy was stopped, once.
    [(_, notice)] = hook.received
    assert notice["text"].startswith("Deploy of local-prod was INTERRUPTED (invoke deploy)\n")
    assert "- smoke-test interrupted on local-staging" in notice["text"]
    assert "invoke rollback --env=local-staging" in out
    assert "Left behind: nothing." in out
    assert "Traceback" not in out
    assert not lock_exists(namespaces["local-staging"])
    assert not any(os.path.exists(f"/proc/{pid}") for pid in suites)


@pytest.mark.cluster
def test_helm_killed_mid_upgrade_is_named_with_its_signal_and_the_stuck_release(
    both_clusters, tmp_path
):
    env, namespaces = deploy_env(tmp_path)

    def kill_helm(process: subprocess.Popen) -> None:
        for pid in descendants(process.pid):
            command = command_line(pid)
            if Path(command[0]).name == "helm" and "upgrade" in command:
                os.kill(pid, signal.SIGKILL)

    run = run_and_act(
        ["deploy", "--env=local-prod", "--yes"],
        env,
        "$ helm upgrade ",
        once_helm_holds_the_release(namespaces["local-staging"], kill_helm),
    )
    out = run.output
    assert run.returncode == 1, out[-3000:]
    assert "FAILED: upgrade on local-staging" in out
    assert "was killed by SIGKILL (signal 9)" in out
    assert "stuck in pending-install" in out
    assert "Left behind, for the next run to deal with:" in out
    assert "invoke recover-release --env=local-staging" in out
    assert not lock_exists(namespaces["local-staging"])


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
