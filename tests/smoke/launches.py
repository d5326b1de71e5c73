"""Launching through BinderHub, as the launch page does, and pushing a scratch commit.

BinderHub's build endpoint, `GET {binder}/build/<provider>/<spec>`, answers a
text/event-stream of `data: {"phase": ..., "message": ...}` lines. A build
starts with `waiting`, relays repo2docker's log lines (fetching, building,
pushing) and ends with `built`; an image the registry already holds starts at
`built` ("Found built image"). Then `launching`, and finally `ready`, which
carries the server's `url` and its `token`; or `failed` at any point. Every 25
seconds it sends a `:keepalive` comment, so a stalled build is one with no
*event* for a while, even though bytes still arrive.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import urllib3

from tasks.core.run import current
from tests.smoke.probes import Probe, describe, excerpt, mask

_LOG_LINES_SHOWN = 8
# Phases after the image exists: a failure from here on is the launch's.
LAUNCH_PHASES = frozenset({"built", "launching"})


@dataclass
class Launch:
    """A server BinderHub reported ready."""

    url: str
    token: str
    phases: list[str] = field(default_factory=list)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}


def build_url(binder_url: str, spec: str) -> str:
    """`<provider>/<spec>` -> BinderHub's event-stream URL for it."""
    return f"{binder_url}/build/{spec}"


def launch(probe: Probe, binder_url: str, spec: str, deadline_seconds: float) -> Launch:
    """Follow the build event stream of `spec` to `ready`; fail naming the phase otherwise."""
    url = build_url(binder_url, spec)
    stall = probe.target.settings.stall_seconds
    started = time.monotonic()
    response = probe.expect(
        url,
        200,
        headers={"Accept": "text/event-stream"},
        stream=True,
        # A silent stream ends the wait at the deadline too, not only at the stall limit.
        read_seconds=min(stall, deadline_seconds),
    )
    last_event = time.monotonic()
    phases: list[str] = []
    log: deque[str] = deque(maxlen=_LOG_LINES_SHOWN)
    try:
        for line in _lines(response):
            now = time.monotonic()
            if now - last_event > stall:
                pytest.fail(_stalled(url, stall, phases, log), pytrace=False)
            if now - started > deadline_seconds:
                pytest.fail(_late(url, deadline_seconds, phases, log), pytrace=False)
            event = _event(line)
            if event is None:
                continue
            last_event = now
            phase = str(event.get("phase", ""))
            message = str(event.get("message", "")).rstrip()
            if message:
                log.extend(mask(m) for m in message.splitlines() if m.strip())
            if phase == "failed":
                pytest.fail(_failed(spec, url, message, phases, log), pytrace=False)
            if phase and (not phases or phases[-1] != phase):
                phases.append(phase)
            if phase == "ready":
                return _ready(url, event, phases)
    except (requests.RequestException, urllib3.exceptions.HTTPError):
        # A read that waited longer than the stall limit, or past the deadline, raises.
        silent = True
    else:
        silent = False
    finally:
        response.close()
    # Failed outside the handler, so that the message is not chained to the read's error.
    if silent and time.monotonic() - started > deadline_seconds:
        pytest.fail(_late(url, deadline_seconds, phases, log), pytrace=False)
    if silent:
        pytest.fail(_stalled(url, stall, phases, log), pytrace=False)
    pytest.fail(
        f"the build stream {mask(url)} ended before 'ready'{_after(phases)}.{_log(log)}",
        pytrace=False,
    )


def _lines(response: requests.Response) -> Iterator[str]:
    """The stream's lines as soon as each arrives.

    requests' iter_lines() waits for a full chunk of bytes first, which would
    hold back the events of a slow build and hide the heartbeats.
    """
    raw = response.raw
    if hasattr(raw, "read1"):
        read = lambda: raw.read1(65536, decode_content=True)  # noqa: E731
    else:
        # urllib3 1.x has no read1(); a byte at a time is slow but never holds an event back.
        read = lambda: raw.read(1, decode_content=True)  # noqa: E731
    pending = b""
    while chunk := read():
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line.rstrip(b"\r").decode("utf-8", errors="replace")
    if pending:
        yield pending.decode("utf-8", errors="replace")


def _event(line: str) -> dict[str, Any] | None:
    if not line.startswith("data:"):
        return None
    try:
        event = json.loads(line[len("data:") :])
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


def _ready(url: str, event: dict[str, Any], phases: list[str]) -> Launch:
    missing = [key for key in ("url", "token") if not event.get(key)]
    if missing:
        pytest.fail(
            f"the 'ready' event of {mask(url)} carries no {' and no '.join(missing)}",
            pytrace=False,
        )
    token = str(event["token"])
    current().masker.register(token)
    server = str(event["url"])
    return Launch(url=server if server.endswith("/") else server + "/", token=token, phases=phases)


def _after(phases: list[str]) -> str:
    return f" (after phase {phases[-1]!r}; phases seen: {', '.join(phases)})" if phases else ""


def _log(log: deque[str]) -> str:
    if not log:
        return ""
    return "\n  last log lines:\n" + "\n".join(f"    {line}" for line in log)


def _failed(spec: str, url: str, message: str, phases: list[str], log: deque[str]) -> str:
    """Which part failed: the build, or the launch of the built image."""
    launching = any(phase in LAUNCH_PHASES for phase in phases)
    part = "launch" if launching else "build"
    # BinderHub relays a failed build pod as a bare `failed`: the reason is in the log.
    reason = mask(message) or f"the {part} ended in failure (BinderHub gave no reason)"
    stream = f"\n  stream: {mask(url)}"
    return f"BinderHub failed to {part} {spec}{_after(phases)}: {reason}{stream}{_log(log)}"


def _late(url: str, deadline: float, phases: list[str], log: deque[str]) -> str:
    return (
        f"the build stream {mask(url)} did not reach 'ready' within "
        f"{deadline:g}s{_after(phases)}.{_log(log)}"
    )


def _stalled(url: str, stall: float, phases: list[str], log: deque[str]) -> str:
    last = repr(phases[-1]) if phases else "none yet"
    return (
        f"the build stream {mask(url)} stalled: no event for {stall:g}s "
        f"(last phase: {last}).{_log(log)}"
    )


def check_server_api(probe: Probe, server: Launch) -> dict[str, Any]:
    """The launched server's API answers its token: the server really runs."""
    response = probe.expect(f"{server.url}api/status", 200, headers=server.auth)
    try:
        status = response.json()
    except ValueError:
        pytest.fail(
            f"{describe(response)} but not with JSON\n  body: {excerpt(response)}",
            pytrace=False,
        )
    return status


def shut_down(probe: Probe, server: Launch) -> None:
    """Stop the launched server through its own API, so no test server lingers."""
    probe.expect(f"{server.url}api/shutdown", 200, method="POST", headers=server.auth)


def stop_quietly(probe: Probe, server: Launch) -> None:
    """Shut the server down after a failed check, keeping that check's message."""
    with suppress(pytest.fail.Exception):
        shut_down(probe, server)


# --- the forced fresh build: a scratch commit BinderHub has never seen ---------------------


def git_environment(key: Path, known_hosts: Path) -> dict[str, str]:
    """Variables that make git push with `key` alone and never prompt.

    Host keys are trusted on first use and kept in `known_hosts`, the run's own
    file: the operator's ~/.ssh is neither read nor changed.
    """
    ssh = shlex.join(
        [
            "ssh",
            "-i",
            str(key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            "BatchMode=yes",
        ]
    )
    return {
        "GIT_SSH_COMMAND": ssh,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "binder-deploy smoke test",
        "GIT_AUTHOR_EMAIL": "smoke-test@binder-deploy.invalid",
        "GIT_COMMITTER_NAME": "binder-deploy smoke test",
        "GIT_COMMITTER_EMAIL": "smoke-test@binder-deploy.invalid",
    }


def scratch_commands(remote: str, branch: str, clone: Path) -> list[list[str]]:
    """The git commands that put a new commit on `branch` of the scratch repository."""
    return [
        ["git", "clone", "--quiet", "--depth=1", remote, str(clone)],
        ["git", "-C", str(clone), "add", "branchname"],
        ["git", "-C", str(clone), "commit", "--quiet", "-m", f"Scratch commit for {branch}"],
        ["git", "-C", str(clone), "push", "--quiet", "origin", f"HEAD:refs/heads/{branch}"],
    ]


def cleanup_command(branch: str, clone: Path) -> list[str]:
    return ["git", "-C", str(clone), "push", "--quiet", "origin", f":refs/heads/{branch}"]


@contextmanager
def scratch_branch(remote: str, branch: str, key: Path) -> Iterator[None]:
    """A new commit on a new branch of the scratch repository, deleted afterwards."""
    with tempfile.TemporaryDirectory(prefix="smoke-scratch-") as workdir:
        env = {**os.environ, **git_environment(key, Path(workdir) / "known_hosts")}
        clone = Path(workdir) / "repo"
        clone_command, *commit_commands = scratch_commands(remote, branch, clone)
        _git(clone_command, env)
        # The file's content is what makes the commit, and so the image, new.
        (clone / "branchname").write_text(branch + "\n")
        pushed = False
        try:
            for command in commit_commands:
                _git(command, env)
            pushed = True
            yield
        finally:
            if pushed:
                _git(cleanup_command(branch, clone), env)


def _git(command: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        output = "\n".join((result.stderr or result.stdout).strip().splitlines()[-6:])
        pytest.fail(
            f"`{mask(shlex.join(command))}` exited with {result.returncode}:\n  {mask(output)}",
            pytrace=False,
        )
