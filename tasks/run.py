"""The state of a run, and of each environment inside it.

A run is one outermost invocation of a task (`invoke deploy`, `invoke
upgrade`, ...). Everything it accumulates lives in a `Run`, and what belongs
to one environment in that environment's `EnvironmentRun`:

    Run              the secret masker (safe to share between threads), the
                     summary (steps, warnings, what is left behind), the
                     registry as loaded for this run, the Grafana URLs that
                     hung, how steps open cluster credentials
    EnvironmentRun   what one environment holds: its open credentials and
                     tunnels, its deploy lock, its Grafana region, what it verified

`current()` is the run in progress, found through a context variable. A
test starts a fresh run with `fresh()`; nothing is reset by hand. With no
run started, `current()` starts one for the calling context (the smoke
suite's own process, say).
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from tasks.masking import SecretMasker
from tasks.report import Summary

if TYPE_CHECKING:
    from tasks.grafana import Region
    from tasks.pipeline import StepContext
    from tasks.promotion import Promotion
    from tasks.registry import Registry

T = TypeVar("T")

# Opens the credentials of a step's environment for the step's duration and yields
# the environment variables (KUBECONFIG, ...) its commands need.
ClusterAccessOpener = Callable[["StepContext"], AbstractContextManager[dict[str, str]]]


class EnvironmentRun:
    """What one environment holds during a run."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock_held = False
        self.region: Region | None = None
        # What this environment's deploy verified in this run: its members compare with it.
        self.verified: Promotion | None = None
        self.promotion_checked = False
        self._held: dict[Hashable, Any] = {}
        self._stack = ExitStack()
        self._guard = threading.RLock()

    def hold(self, key: Hashable, opener: Callable[[], AbstractContextManager[T]]) -> T:
        """Enter `opener()` once per run under `key`; later calls get the same value.

        What is held (credentials, a tunnel, a lock taken by a step run alone)
        is given back by `close_held()`, in the reverse order.
        """
        with self._guard:
            if key not in self._held:
                self._held[key] = self._stack.enter_context(opener())
            return self._held[key]

    def close_held(self) -> None:
        """Give back everything held, newest first; raises what closing raised."""
        with self._guard:
            closing, self._stack = self._stack, ExitStack()
            self._held.clear()
        closing.close()


class Run:
    """What one run accumulates, across every step and thread of it."""

    def __init__(
        self,
        *,
        masker: SecretMasker | None = None,
        registry: Registry | None = None,
        cluster_access: ClusterAccessOpener | None = None,
    ) -> None:
        self.masker = masker or SecretMasker()
        self.summary = Summary(self.masker)
        self.cluster_access = cluster_access
        # Grafana URLs that took a request and did not answer in time: each further
        # request would cost the deploy another timeout, so none is sent.
        self.unresponsive_grafana: set[str] = set()
        self.task = ""  # the outermost task, which names the run's report
        self.target = ""  # what it deploys: an environment (or a group)
        self.begun = False
        self._registry = registry
        self._environments: dict[str, EnvironmentRun] = {}
        self._guard = threading.Lock()

    @property
    def registry(self) -> Registry:
        """config/environments.yaml (or DEPLOY_REGISTRY's file), loaded once per run."""
        with self._guard:
            if self._registry is None:
                from tasks import registry
                from tasks.runner import PROJECT_ROOT

                self._registry = registry.load(PROJECT_ROOT)
            return self._registry

    def use_registry(self, registry: Registry | None) -> None:
        """Use `registry` for the rest of the run; None: read the file again when next asked
        (a test, or a rehearsal, that changed DEPLOY_REGISTRY)."""
        with self._guard:
            self._registry = registry

    def environment(self, name: str) -> EnvironmentRun:
        with self._guard:
            if name not in self._environments:
                self._environments[name] = EnvironmentRun(name)
            return self._environments[name]

    @property
    def environments(self) -> list[EnvironmentRun]:
        with self._guard:
            return list(self._environments.values())

    def open_cluster(self, ctx: StepContext) -> AbstractContextManager[dict[str, str]]:
        """The step's cluster credentials, by the run's opener (tasks/access.py by default)."""
        if self.cluster_access is None:
            from tasks.access import open_cluster

            self.cluster_access = open_cluster
        return self.cluster_access(ctx)


@dataclass(frozen=True)
class _Place:
    run: Run
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
