"""The state of a run, and of each environment inside it.

A run is one outermost invocation of a task (`invoke deploy`, `invoke
upgrade`, ...). Everything it accumulates lives in a `Run`, and what belongs
to one environment in that environment's `EnvironmentRun`.

`current()` is the run in progress; `here()` the environment whose member
thread asks (None outside a federation's members' phase). Both come from one
context variable: a member runs in a thread made by `member_thread()`, whose
context names its environment, so no two members share a lock, a region or
credentials. A test starts a fresh run with `fresh()`; nothing is reset by
hand.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from tasks.core.masking import SecretMasker
from tasks.core.report import Summary
from tasks.core.step import Step

T = TypeVar("T")


class Interruptible(Protocol):
    """A running command that can be asked to stop (tasks/core/runner.py's ForwardingLocal)."""

    def send_interrupt(self, interrupt: KeyboardInterrupt) -> None: ...


class MemberLines(Protocol):
    """Where a member's lines go while the members run side by side (tasks/core/output.py's
    MemberOutput)."""

    def write(self, text: str, *, err: bool = False, milestone: bool = False) -> None: ...

    def finish(self, verdict: str) -> None: ...


class Kept:
    """What the floors above keep for the run, one value per type: the registry a run
    loaded, an environment's open Grafana region, what its deploy verified. The type is the
    key, so each module keeps and finds its own values without this one knowing them."""

    def __init__(self) -> None:
        self._values: dict[type, Any] = {}
        self._keeping = threading.RLock()

    def kept(self, kind: type[T]) -> T | None:
        with self._keeping:
            return self._values.get(kind)

    def keep(self, kind: type[T], value: T | None) -> None:
        with self._keeping:
            if value is None:
                self._values.pop(kind, None)
            else:
                self._values[kind] = value

    def once(self, kind: type[T], load: Callable[[], T]) -> T:
        """The value of type `kind`, loaded by `load` the first time it is asked for."""
        with self._keeping:
            if kind not in self._values:
                self._values[kind] = load()
            return self._values[kind]


class EnvironmentRun(Kept):
    """What one environment holds during a run, and how its work is interrupted.

    Only the main thread receives signals. During a federation's members'
    phase it calls `interrupt()` on every member: the member's running
    commands get SIGINT, and its next `checkpoint()` (the rollout watch
    checks every tick) raises KeyboardInterrupt in the member's own thread,
    once, so the cleanup that follows runs its commands to the end.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.lock_held = False
        self.lock_waited = 0.0  # seconds this run waited for its deploy lock so far
        self.promotion_checked = False
        # Where this environment's lines go while members run side by side; None: as is.
        self.output: MemberLines | None = None
        self.step: Step | None = None  # the step it runs, or ran last
        self._held: dict[Hashable, Any] = {}
        self._stack = ExitStack()
        self._holding = threading.RLock()
        # Apart from `_holding`: an interrupt must reach a command that runs while opening.
        self._guard = threading.Lock()
        self._interrupt_asked = False
        self._commands: set[Interruptible] = set()

    @property
    def step_name(self) -> str:
        return self.step.name if self.step else ""

    def hold(self, key: Hashable, opener: Callable[[], AbstractContextManager[T]]) -> T:
        """Enter `opener()` once per run under `key`; later calls get the same value.

        What is held (credentials, a tunnel, a lock taken by a step run alone)
        is given back by `close_held()`, in the reverse order.
        """
        with self._holding:
            if key not in self._held:
                self._held[key] = self._stack.enter_context(opener())
            return self._held[key]

    def close_held(self) -> None:
        """Give back everything held, newest first; raises what closing raised."""
        with self._holding:
            closing, self._stack = self._stack, ExitStack()
            self._held.clear()
        closing.close()

    def interrupt(self) -> None:
        """Ask the environment's work to stop: SIGINT to its commands, then at its checkpoint."""
        with self._guard:
            self._interrupt_asked = True
            commands = list(self._commands)
        for command in commands:
            command.send_interrupt(KeyboardInterrupt())

    def checkpoint(self) -> None:
        """Raise KeyboardInterrupt if an interrupt was asked since the last checkpoint."""
        with self._guard:
            asked, self._interrupt_asked = self._interrupt_asked, False
        if asked:
            raise KeyboardInterrupt

    @contextmanager
    def running(self, command: Interruptible) -> Iterator[None]:
        """Track `command` while it runs, for `interrupt()`; refuse it if already asked to stop."""
        with self._guard:
            if self._interrupt_asked:
                self._interrupt_asked = False
                raise KeyboardInterrupt
            self._commands.add(command)
        try:
            yield
        finally:
            with self._guard:
                self._commands.discard(command)


class Run(Kept):
    """What one run accumulates, across every step and thread of it."""

    def __init__(self, *, masker: SecretMasker | None = None) -> None:
        super().__init__()
        self.masker = masker or SecretMasker()
        self.summary = Summary(self.masker)
        # Grafana URLs that took a request and did not answer in time: each further
        # request would cost the deploy another timeout, so none is sent.
        self.unresponsive_grafana: set[str] = set()
        self.task = ""  # the outermost task, which names the run's report
        self.target = ""  # what it deploys: an environment or a group
        self.dry_run = False  # a dry run touches nothing, not even reports/
        # --wait-for-lock: False, True (as long as the lock can last) or a number of seconds.
        self.wait_for_lock: bool | int = False
        self.begun = False
        # This run holds the checkout (tasks/core/checkout.py): the steps inside it share it.
        self.holds_checkout = False
        self._environments: dict[str, EnvironmentRun] = {}
        self._guard = threading.Lock()

    def environment(self, name: str) -> EnvironmentRun:
        with self._guard:
            if name not in self._environments:
                self._environments[name] = EnvironmentRun(name)
            return self._environments[name]

    @property
    def environments(self) -> list[EnvironmentRun]:
        with self._guard:
            return list(self._environments.values())


@dataclass(frozen=True)
class _Place:
    run: Run
    environment: EnvironmentRun | None = None
    depth: int = 0  # invocations entered: the outermost one owns the run


_place: contextvars.ContextVar[_Place | None] = contextvars.ContextVar(
    "binder_deploy_run", default=None
)


def _now() -> _Place:
    place = _place.get()
    if place is None:
        place = _Place(Run())
        _place.set(place)
    return place


def current() -> Run:
    """The run in progress (one is started for this context if none is)."""
    return _now().run


def here() -> EnvironmentRun | None:
    """The member whose thread this is; None outside a federation's members' phase."""
    return _now().environment


@contextmanager
def fresh(**settings: Any) -> Iterator[Run]:
    """A new run for the block (tests: instead of resetting state by hand); the old one after."""
    run = Run(**settings)
    token = _place.set(_Place(run))
    try:
        yield run
    finally:
        _place.reset(token)


@contextmanager
def invoked(task: str) -> Iterator[bool]:
    """Enter an invocation of a task; yields True for the outermost one, which owns the run.

    The outermost invocation of a run already used starts a new run, which
    keeps the masker (secrets registered earlier stay masked) and stays
    current after the invocation, for whoever reads its summary.
    """
    place = _now()
    outermost = place.depth == 0
    if outermost:
        if place.run.begun:
            place = replace(place, run=Run(masker=place.run.masker))
            _place.set(place)
        place.run.begun = True
        place.run.task = task
    token = _place.set(replace(place, depth=place.depth + 1))
    try:
        yield outermost
    finally:
        _place.reset(token)


def member_thread(environment: EnvironmentRun, target: Callable[[], None]) -> threading.Thread:
    """A thread that runs `target` as `environment`'s part of the current run.

    It starts from a copy of the caller's context, so it sees the same run at
    the same depth, with `here()` naming its environment.
    """
    place = _now()
    context = contextvars.copy_context()

    def body() -> None:
        _place.set(replace(place, environment=environment))
        target()

    return threading.Thread(
        target=context.run, args=(body,), name=f"member-{environment.name}", daemon=True
    )
