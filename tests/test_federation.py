"""A federation: its gate deployed once, then every member at once, each on its own.

The cluster tests deploy the demo's federation for real (`invoke deploy
--env=fed` in a subprocess): local-staging on binder-staging, then local-prod
and local-prod-b on binder-prod and binder-prod-b, in fresh namespaces.
"""

from __future__ import annotations

import _thread
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from invoke import Context

from sandbox import clusters
from tasks.cli import chain
from tasks.config import registry
from tasks.core.output import CI, LINES, TERMINAL, MembersConsole, say
from tasks.core.report import FAILED, INTERRUPTED, OK, MemberOutcome
from tasks.core.run import current, here, member_thread
from tasks.core.runner import PROJECT_ROOT, Runner
from tasks.flows import federation
from tests.fakes.grafana_server import FakeGrafana
from tests.fixtures.chain import (
    change_environment,
    federation_registry,
    invoke,
    lock_exists,
    release_exists,
    values,
)
from tests.test_chain import described

REPORT = PROJECT_ROOT / "reports" / "run-deploy.json"
CRASH = "static:\n  podLabels:\n    kwok.binder.test/fail: crashloop\n"
NEVER_READY = "static:\n  podLabels:\n    kwok.binder.test/fail: notready\n"
CLUSTER_OF = {"local-staging": "binder-staging", "local-prod": "binder-prod"}
CLUSTER_OF["local-prod-b"] = "binder-prod-b"


# -- the plan ------------------------------------------------------------------------


def test_a_group_deploys_its_gate_once_checking_every_member_first():
    steps = described(chain.plan(registry.load(), "federation"))
    assert steps[:6] == [
        "decrypt-secrets[staging]",
        "helm-deps",
        "validate[staging]",
        "validate[prod]",
        "preflight[staging]",
        "preflight[prod]",
    ]
    assert steps[-2:] == ["deploy-staging", "deploy-federation"]
    assert steps.count("upgrade[staging]") == 1 and "upgrade[prod]" not in steps


def test_an_experimental_member_is_checked_in_its_own_stage(tmp_path):
    env, _ = federation_registry(tmp_path, experimental=("local-prod-b",))
    loaded = registry.load(PROJECT_ROOT, Path(env["DEPLOY_REGISTRY"]))
    steps = described(chain.plan(loaded, "fed"))
    assert "validate[local-prod]" in steps and "validate[local-prod-b]" not in steps
    member = chain.member_stage(loaded.get("local-prod-b"), chain.Options(), experimental=True)
    assert [described([c])[0] for c in member.pre][:3] == [
        "validate[local-prod-b]",
        "preflight[local-prod-b]",
        "check-promotion[local-prod-b]",
    ]


# -- who fails the run ---------------------------------------------------------------


def test_only_a_member_that_is_not_experimental_fails_the_run():
    assert MemberOutcome("prod", False, FAILED).fails_the_run
    assert MemberOutcome("prod", False, INTERRUPTED).fails_the_run
    assert not MemberOutcome("prod", False, OK).fails_the_run
    experimental = MemberOutcome("gesis", True, FAILED, "wait-rollout", "pods crash")
    assert not experimental.fails_the_run
    assert experimental.verdict() == (
        "FAILED at wait-rollout (experimental: does not fail the run): pods crash"
    )


# -- output while members run side by side ------------------------------------------


def members_say(console: MembersConsole, lines: dict[str, list[tuple[str, bool]]]) -> None:
    """Each member says its lines from its own thread, as the members' phase does."""

    def speak(name: str) -> None:
        for text, milestone in lines[name]:
            say(text, milestone=milestone)
        here().output.finish("deployed and validated")

    threads = []
    for name in lines:
        environment = current().environment(name)
        environment.output = console.members[name]
        threads.append(member_thread(environment, lambda name=name: speak(name)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


SAID = {
    "local-prod": [("==> upgrade [local-prod]", True), ("$ helm upgrade binder", False)],
    "local-prod-b": [("==> upgrade [local-prod-b]", True), ("release ready", False)],
}


def test_each_member_line_is_prefixed_with_its_name(capsys):
    members_say(MembersConsole(list(SAID), LINES, "deploy", None), SAID)
    out = capsys.readouterr().out.splitlines()
    assert "[local-prod]   $ helm upgrade binder" in out
    assert "[local-prod-b] release ready" in out
    assert len(out) == 4


def test_in_ci_each_members_output_is_folded_whole_and_its_steps_shown_as_they_come(
    capsys, monkeypatch
):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    members_say(MembersConsole(list(SAID), CI, "deploy", None), SAID)
    out = capsys.readouterr().out
    assert "[local-prod]   ==> upgrade [local-prod]" in out
    fold = re.search(
        r"^::group::local-prod: deployed and validated\n(.*?)^::endgroup::$", out, re.M | re.S
    )
    assert fold and fold.group(1).splitlines() == [
        "==> upgrade [local-prod]",
        "$ helm upgrade binder",
    ]
    assert out.count("::group::") == 2


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_each_member_has_one_status_line_and_a_log(tmp_path, monkeypatch):
    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    console = MembersConsole(list(SAID), TERMINAL, "deploy", tmp_path)
    members_say(console, {"local-prod": SAID["local-prod"], "local-prod-b": []})
    console.refresh(force=True)
    drawn = screen.getvalue().splitlines()
    assert drawn == [
        "  local-prod    deployed and validated",
        "  local-prod-b  deployed and validated",
    ]
    assert (tmp_path / "deploy-local-prod.log").read_text().splitlines() == [
        "==> upgrade [local-prod]",
        "$ helm upgrade binder",
    ]


# -- interrupts reach a member's command from the main thread ------------------------


def test_an_interrupt_asked_of_a_member_stops_its_command_and_then_lets_its_cleanup_run():
    environment = current().environment("local-prod")
    ended: list[str] = []

    def member() -> None:
        try:
            Runner(Context()).run(["sleep", "30"], quiet=True)
            ended.append("finished")
        except KeyboardInterrupt:
            ended.append("interrupted")
        # The cleanup's command runs to its end.
        ended.append(Runner(Context()).run(["echo", "cleaned up"], quiet=True).stdout.strip())

    thread = member_thread(environment, member)
    started = time.monotonic()
    thread.start()
    deadline = time.monotonic() + 20
    while not running("^sleep 30$") and time.monotonic() < deadline:
        time.sleep(0.05)
    environment.interrupt()
    thread.join(30)
    assert ended == ["interrupted", "cleaned up"]
    assert time.monotonic() - started < 25
    assert not running("^sleep 30$")


def running(pattern: str) -> bool:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return bool(found.stdout.strip())


def test_a_member_asked_to_stop_between_commands_starts_no_other():
    environment = current().environment("local-prod")
    environment.interrupt()
    outcome: list[str] = []

    def member() -> None:
        try:
            Runner(Context()).run(["touch", "/nonexistent/never"], quiet=True, check=False)
        except KeyboardInterrupt:
            outcome.append("stopped before starting")

    thread = member_thread(environment, member)
    thread.start()
    thread.join(10)
    assert outcome == ["stopped before starting"]


def test_a_ctrl_c_while_the_members_run_never_loses_sight_of_one_still_running() -> None:
    """On Python 3.11 a Ctrl-C that lands in `Thread.join` marks the thread as stopped while it
    still runs: its member was reported as never started, its cleanup still going."""

    class Member:
        def __init__(self) -> None:
            self.ended = threading.Event()

        def deploy(self) -> None:
            time.sleep(1.5)  # the member's cleanup, still running after the Ctrl-C
            self.ended.set()

    member = Member()
    threading.Thread(target=member.deploy, daemon=True).start()
    console = MembersConsole(["m"], LINES, "deploy", None)
    threading.Timer(0.3, _thread.interrupt_main).start()
    with pytest.raises(KeyboardInterrupt):
        federation._wait([member], console)  # type: ignore[list-item]
    # What the members' phase does next: wait for every member's cleanup to end.
    federation._wait([member], console)  # type: ignore[list-item]
    assert member.ended.is_set()


def test_a_member_thread_shares_the_run_and_names_its_environment():
    seen: list[object] = []
    environment = current().environment("local-prod-b")
    thread = member_thread(environment, lambda: seen.extend([current(), here()]))
    thread.start()
    thread.join()
    assert seen == [current(), environment]
    assert here() is None


# -- on the local clusters -------------------------------------------------------------


def steps_of(document: dict, step: str) -> dict[str, tuple[datetime, datetime]]:
    return {
        s["environment"]: (datetime.fromisoformat(s["start"]), datetime.fromisoformat(s["end"]))
        for s in document["steps"]
        if s["step"] == step
    }


@pytest.mark.cluster
def test_a_federation_deploys_staging_once_then_its_members_at_once(demo_clusters, tmp_path):
    env, namespaces = federation_registry(tmp_path, experimental=("local-prod-b",))
    result = invoke("deploy", "--env=fed", "--yes", env=env, timeout=600)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-5000:]
    assert out.count("==> upgrade [local-staging]") == 1
    assert "[local-prod]   ==> upgrade [local-prod]" in out
    assert "[local-prod-b] ==> upgrade [local-prod-b]" in out
    for name, namespace in namespaces.items():
        assert release_exists(CLUSTER_OF[name], namespace), name
        assert not lock_exists(namespace, CLUSTER_OF[name]), name

    document = json.loads(REPORT.read_text())
    assert document["target"] == "fed" and document["result"] == "ok"
    upgrades = steps_of(document, "upgrade")
    (a_start, a_end), (b_start, b_end) = upgrades["local-prod"], upgrades["local-prod-b"]
    assert upgrades["local-staging"][1] < min(a_start, b_start)
    assert a_start < b_end and b_start < a_end, "the members' upgrades did not overlap"
    members = {m["name"]: m["result"] for m in document["members"]}
    assert members == {"local-prod": "ok", "local-prod-b": "ok"}
    table = out[out.index("STEP  ") :]
    for member in ("local-prod", "local-prod-b"):
        for step in ("check-promotion", "lock", "upgrade", "wait-rollout", "smoke-test"):
            assert re.search(rf"^{step}\s+{member}\s+ok", table, re.M), (step, member)
    assert re.search(r"^  local-prod-b\s+deployed and validated$", table, re.M)


@pytest.mark.cluster
def test_a_crash_looping_member_fails_alone_and_is_rolled_back(demo_clusters, tmp_path):
    env, namespaces = federation_registry(tmp_path, experimental=("local-prod-b",))
    first = invoke("deploy", "--env=fed", "--yes", env=env, timeout=600)
    assert first.returncode == 0, (first.stdout + first.stderr)[-4000:]

    change_environment(env, "local-prod", extra_values=values(tmp_path, CRASH))
    result = invoke("deploy", "--env=fed", "--yes", "--rollback-on-failure", env=env, timeout=600)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-5000:]
    screen = out[out.index("FAILED: local-prod of fed failed") :]
    assert "local-prod: wait-rollout failed" in screen
    assert "CrashLoopBackOff" in screen and "static-files" in screen
    assert "local-prod-b" not in screen
    assert "local-prod was rolled back to its last good revision" in out
    assert "Traceback" not in out
    labels = clusters.kubectl(
        "binder-prod",
        "get",
        "deploy/static-files",
        "-n",
        namespaces["local-prod"],
        "-o",
        "jsonpath={.spec.template.metadata.labels}",
    )
    assert "kwok.binder.test/fail" not in labels
    document = json.loads(REPORT.read_text())
    members = {m["name"]: m for m in document["members"]}
    assert members["local-prod"]["result"] == "failed"
    assert members["local-prod"]["step"] == "wait-rollout"
    assert members["local-prod-b"]["result"] == "ok"
    for name, namespace in namespaces.items():
        assert not lock_exists(namespace, CLUSTER_OF[name]), name


@pytest.mark.cluster
def test_an_experimental_member_may_fail_without_failing_ci_on_the_main_branch(
    demo_clusters, tmp_path
):
    env, namespaces = federation_registry(
        tmp_path,
        {"local-prod-b": {"extra_values": values(tmp_path, CRASH)}},
        experimental=("local-prod-b",),
    )
    env.update({"GITHUB_ACTIONS": "true", "GITHUB_EVENT_NAME": "push", "GITHUB_REF_NAME": "main"})
    result = invoke("ci", "--env=fed", env=env, timeout=600)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-5000:]
    assert "EXPERIMENTAL MEMBERS FAILED (the run does not fail for them):" in out
    assert "local-prod-b (experimental: does not fail the run): wait-rollout failed" in out
    assert re.search(
        r"^  local-prod-b\s+FAILED at wait-rollout \(experimental: does not fail the run\): "
        r".*CrashLoopBackOff",
        out,
        re.M,
    ), out[-3000:]
    assert re.search(r"^  local-prod\s+deployed and validated$", out, re.M)
    assert release_exists("binder-prod", namespaces["local-prod"])
    assert not lock_exists(namespaces["local-prod-b"], "binder-prod-b")
    # Each member's output folded whole, its steps shown as they came.
    assert "::group::local-prod: deployed and validated" in out
    assert re.search(r"^::group::local-prod-b: FAILED at wait-rollout", out, re.M)
    assert "[local-prod-b] ==> upgrade [local-prod-b]" in out
    assert out.count("::group::") == out.count("::endgroup::")


def wait_for_lines(process: subprocess.Popen, markers: list[str], seconds: float) -> str:
    """Read the process's output until every marker has been seen; return what was read."""
    assert process.stdout is not None
    seen = ""
    deadline = time.monotonic() + seconds
    for line in process.stdout:
        seen += line
        if all(marker in seen for marker in markers) or time.monotonic() > deadline:
            break
    missing = [marker for marker in markers if marker not in seen]
    assert not missing, f"never printed {missing}:\n{seen[-3000:]}"
    return seen


@pytest.mark.cluster
def test_ctrl_c_during_the_members_phase_stops_every_member_and_leaves_nothing(
    demo_clusters, tmp_path
):
    with FakeGrafana(token="federation-token-0123456789") as grafana:
        settings = {"url": grafana.url, "token_env": "TEST_GRAFANA_TOKEN"}
        hangs = {"grafana": settings, "extra_values": values(tmp_path, NEVER_READY)}
        env, namespaces = federation_registry(
            tmp_path,
            {"local-staging": {"grafana": settings}, "local-prod": hangs, "local-prod-b": hangs},
            experimental=("local-prod-b",),
        )
        env["TEST_GRAFANA_TOKEN"] = "federation-token-0123456789"
        process = subprocess.Popen(
            [sys.executable, "-m", "invoke", "deploy", "--env=fed", "--yes"],
            cwd=PROJECT_ROOT,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        before = wait_for_lines(
            process,
            ["[local-prod]   ==> wait-rollout", "[local-prod-b] ==> wait-rollout"],
            300,
        )
        time.sleep(2)
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=180)
        out = before + rest
        assert process.returncode == 130, out[-5000:]
        assert "INTERRUPTED: the members of fed" in out, out[-3000:]
        for member in ("local-prod", "local-prod-b"):
            assert re.search(rf"^  {member}: interrupted at wait-rollout", out, re.M), out[-3000:]
        assert "Left behind: nothing." in out and "Traceback" not in out
        for name, namespace in namespaces.items():
            assert not lock_exists(namespace, CLUSTER_OF[name]), name
        closes = {r.path: r.json["tags"] for r in grafana.requests if r.method == "PATCH"}
        assert len(closes) == 3
        outcomes = sorted(tags[-1] for tags in closes.values())
        assert outcomes == ["interrupted", "interrupted", "success"]

    # The next run goes through without anything done by hand.
    for name in namespaces:
        change_environment(env, name, extra_values=[], grafana=None)
    again = invoke("deploy", "--env=fed", "--yes", env=env, timeout=600)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]


def test_a_members_command_output_is_shown_in_whole_lines(capsys):
    console = MembersConsole(["local-prod"], LINES, "deploy", None)
    environment = current().environment("local-prod")
    environment.output = console.members["local-prod"]
    command = ["sh", "-c", "printf 'half a'; sleep 0.3; printf ' line\\n'; printf 'no newline'"]
    thread = member_thread(environment, lambda: Runner(Context()).run(command))
    thread.start()
    thread.join(30)
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == ["[local-prod] half a line", "[local-prod] no newline"]
