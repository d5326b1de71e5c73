"""Where a step runs: the registry, its environment, and how it runs commands.

Every step's domain function takes a `StepContext`; the step's task makes
one (tasks/flows/pipeline.py), with the cluster's credentials in its
runner's environment when the step needs the cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from invoke import Context

from tasks.config.registry import Environment, Registry, Target
from tasks.config.registry import load as read_registry
from tasks.core.errors import StepFailure
from tasks.core.run import EnvironmentRun, Run, current
from tasks.core.runner import PROJECT_ROOT, Runner


@dataclass
class StepContext:
    """What a step's domain function gets: where it runs and how to run commands."""

    c: Context
    registry: Registry
    env: Environment | None
    runner: Runner
    dry_run: bool
    step: str
    # The run the step is part of: its masker, its summary, what each environment holds.
    run: Run = field(default_factory=current)
    # The release the step works on, of an environment that has several (None: the last
    # one, the site's).
    release: str | None = None

    @property
    def environment(self) -> Environment:
        if self.env is None:
            raise StepFailure("This step needs an environment.", "Pass --env=NAME.")
        return self.env

    @property
    def target(self) -> Target:
        """The environment and the release the step works on."""
        return self.environment.target(self.release)

    @property
    def held(self) -> EnvironmentRun:
        """What the step's environment holds in this run: its lock, region, credentials."""
        return self.run.environment(self.environment.name)


def load_registry() -> Registry:
    """config/environments.yaml (or DEPLOY_REGISTRY's file), loaded once per run."""
    return current().once(Registry, lambda: read_registry(PROJECT_ROOT))


def keep_registry(found: Registry | None) -> None:
    """Use `found` for the rest of the run; None: read the file again when next asked (a
    test, or a rehearsal, that changed DEPLOY_REGISTRY)."""
    current().keep(Registry, found)


def releases_of(env_name: str | None, release: str | None) -> list[str]:
    """The releases a step on `env_name` works on, in order: `release` when one is named, else
    every release of the environment ([] when the registry cannot say: the step itself then
    reports why, under its own name)."""
    if release:
        return [release]
    try:
        env = load_registry().environments.get(env_name or "")
    except StepFailure:
        return []
    return env.release_names() if env is not None else []


def listed_releases(env_name: str | None) -> list[str]:
    """The releases of an environment whose entry lists several (`releases:`), in order; none
    for an entry of one `release:`, whose steps are asked without --release."""
    try:
        env = load_registry().environments.get(env_name or "")
    except StepFailure:
        return []
    return env.release_names() if env is not None and env.listed else []
