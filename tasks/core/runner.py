"""The one door through which the pipeline runs commands.

Dry-run, secret masking, the tool search path and error capture hook in here
once, so no step has to think about them.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from invoke import Context
from invoke.exceptions import CommandTimedOut
from invoke.runners import Local

from tasks.core.errors import CommandFailed, StepFailure
from tasks.core.output import MaskedStream, say
from tasks.core.run import current, here

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """CI cancels a job with SIGTERM: treat it like Ctrl-C so the run ends cleanly.

    Only the main thread may install signal handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def invoke_dry_refusal(c: Context, task: str) -> str:
    """Why `task`, which has no dry run, refuses invoke's own `--dry`; "" without `--dry`.

    invoke documents `--dry` as "echo commands instead of running"; a task that
    cannot honour it must not run for real instead.
    """
    if not c.config.run.dry:
        return ""
    return (
        f"`invoke --dry` asks for commands to be shown instead of run, and {task} has no "
        f"dry run: nothing was done. Run it without --dry (see `invoke --help {task}`)."
    )


class ForwardingLocal(Local):
    """invoke's local runner, forwarding an interrupt to the command as SIGINT.

    invoke's own writes Ctrl-C to the command's stdin, which a command reading
    no terminal ignores. An interrupt for a member (tasks/core/run.py) may come
    before the process has started: it is then sent as soon as it exists.
    """

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self.interrupted = False
        self._signalled = False
        self._guard = threading.Lock()

    def start(self, command: str, shell: str, env: dict[str, Any]) -> None:
        super().start(command, shell, env)
        with self._guard:
            self._forward()

    def send_interrupt(self, interrupt: KeyboardInterrupt) -> None:
        with self._guard:
            self.interrupted = True
            self._forward()

    def _forward(self) -> None:
        process = getattr(self, "process", None)
        if self.interrupted and not self._signalled and process is not None:
            self._signalled = True
            if process.poll() is None:
                process.send_signal(signal.SIGINT)


@dataclass
class Companion:
    """A running companion process (Runner.companion) and the file its stderr goes to."""

    process: subprocess.Popen[str]
    errors: IO[str]


def _die_with_parent() -> None:
    """In a companion's child process: have Linux end it when the deploy dies.

    Runner.companion's `finally` covers every Python exit; this covers the rest
    (SIGKILL, a CI runner's SIGTERM), which would otherwise leave, say, a proxy
    holding the deploy credentials open on a local port.
    """
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1
# Looked up here, not in the child: between fork and exec only the simplest
# calls are safe when other threads (the watch streams) exist.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


@dataclass
class Result:
    """What a command printed and how it ended."""

    stdout: str
    stderr: str
    exit_code: int
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass
class Runner:
    """Runs commands for one step, through the invoke context.

    With `dry_run`, a command that would change or reach anything is printed
    instead and an empty success comes back. `env` (KUBECONFIG, ...) is added
    to every command's environment; the operator's own is never modified.
    """

    c: Context
    dry_run: bool = False
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = PROJECT_ROOT
    tool_dirs: list[Path] = field(default_factory=list)

    def with_env(self, **extra: str) -> Runner:
        """A runner whose commands also get `extra` environment variables."""
        return Runner(self.c, self.dry_run, {**self.env, **extra}, self.cwd, self.tool_dirs)

    def describe(self, command: Sequence[str | Path]) -> str:
        return current().masker.mask(shlex.join(str(part) for part in command))

    def dry_run_line(self, command: Sequence[str | Path]) -> str:
        """What a dry run prints for `command`: its environment and itself, masked."""
        return f"[dry-run] {self._env_prefix()}{self.describe(command)}"

    def checkpoint(self) -> None:
        """Stop here if the run asked this member's work to stop (tasks/core/run.py)."""
        member = here()
        if member is not None:
            member.checkpoint()

    def run(
        self,
        command: Sequence[str | Path],
        *,
        check: bool = True,
        quiet: bool = False,
        timeout: float | None = None,
        touches_nothing: bool = False,
    ) -> Result:
        """Run `command` and return its result (CommandFailed on a non-zero exit with `check`).

        `quiet` captures the output instead of streaming it. `touches_nothing`
        marks a local, read-only command that runs even in a dry run.
        """
        line = shlex.join(str(part) for part in command)
        masker = current().masker
        if self.dry_run and not touches_nothing:
            say(self.dry_run_line(command))
            return Result("", "", 0, dry_run=True)
        if not quiet:
            say(f"$ {masker.mask(line)}")
        member = here()
        local = ForwardingLocal(self.c)
        streams = [] if quiet else [MaskedStream(sys.stdout), MaskedStream(sys.stderr)]
        with member.running(local) if member else nullcontext():
            try:
                result = local.run(
                    line,
                    env=self._command_env(),
                    hide=bool(quiet),
                    # The operator's `invoke --echo/--dry` must not print unmasked commands.
                    echo=False,
                    dry=False,
                    warn=True,
                    pty=False,
                    in_stream=False,
                    out_stream=streams[0] if streams else None,
                    err_stream=streams[1] if streams else None,
                    timeout=timeout,
                )
            except CommandTimedOut as timed_out:
                raise StepFailure(
                    f"`{masker.mask(line)}` did not finish within {timed_out.timeout:g} seconds.",
                    "Check the cluster and the network; raise the step's timeout in "
                    "config/environments.yaml if this environment is just slow.",
                ) from None
            finally:
                for stream in streams:
                    stream.end()
        # A member's interrupt is consumed here, so the cleanup's own commands run to their end.
        self.checkpoint()
        if local.interrupted:
            raise KeyboardInterrupt
        # invoke raises UnexpectedExit only without warn=True; failures arrive here, and
        # returns None only for disown=True, which is never asked.
        assert result is not None
        outcome = Result(result.stdout, result.stderr, result.exited)
        if check and not outcome.ok:
            raise CommandFailed(line, outcome.exit_code, outcome.stdout, outcome.stderr)
        return outcome

    @contextmanager
    def companion(self, command: Sequence[str | Path], fix: str) -> Iterator[Companion]:
        """Start a long-running companion of the step (`kubectl proxy`), stopped on the way out.

        Its output is a pipe for the caller to read; its complaints go to a file,
        because nobody reads them while it runs, and a full pipe would stall it.
        """
        env = {**os.environ, **self._command_env()}
        with tempfile.TemporaryFile("w+") as errors:
            try:
                process = subprocess.Popen(
                    [str(part) for part in command],
                    cwd=self.cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=errors,
                    text=True,
                    preexec_fn=_die_with_parent,
                )
            except OSError as error:
                raise StepFailure(
                    f"Could not start `{self.describe(command)}`: {error}.", fix
                ) from None
            try:
                yield Companion(process, errors)
            finally:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                if process.stdout:
                    process.stdout.close()

    def _command_env(self) -> dict[str, str]:
        env = dict(self.env)
        if self.tool_dirs:
            path = os.pathsep.join(str(d) for d in self.tool_dirs)
            env["PATH"] = path + os.pathsep + os.environ.get("PATH", "")
        return env

    def _env_prefix(self) -> str:
        shown = {k: v for k, v in self.env.items() if k != "PATH"}
        masker = current().masker
        return "".join(f"{k}={shlex.quote(masker.mask(v))} " for k, v in sorted(shown.items()))
