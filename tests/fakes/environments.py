"""The one way tests build an environment to run a step in.

`use_registry` writes a registry file and makes the pipeline read it through
DEPLOY_REGISTRY like an operator's rehearsal: a test describes environments (a
kubeconfig in a temporary secrets folder, a bastion on loopback, a Grafana on
127.0.0.1) in the registry's own format, so they pass through the same loading
and checking as config/environments.yaml. `step_context` is a step's context
for one of them (or for an Environment a test made itself).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from invoke import Context

from tasks.adapters import toolchain
from tasks.config.context import StepContext, keep_registry, load_registry
from tasks.config.registry import Environment, Registry
from tasks.core.runner import Runner


def use_registry(
    monkeypatch: pytest.MonkeyPatch, folder: Path, environments: dict[str, dict[str, Any]]
) -> Path:
    """Write a registry of `environments` under `folder` and make the pipeline load it."""
    environments = copy.deepcopy(environments)
    for body in environments.values():
        body.setdefault("release", "binder")
        body.setdefault("namespace", "default")
        body.setdefault("secrets", {"dir": str(folder / "secrets")})
        # The public demo key: decrypt-secrets, run by a deploy, can use it in any checkout.
        body["secrets"].setdefault(
            "key", {"source": "file", "name": "demo", "path": "config/demo/git-crypt-demo.key"}
        )
    path = folder / "environments.yaml"
    path.write_text(
        yaml.safe_dump({"chart": "mybinder", "environments": environments}, sort_keys=False)
    )
    monkeypatch.setenv("DEPLOY_REGISTRY", str(path))
    keep_registry(None)
    return path


def step_context(
    env: str | Environment,
    step: str = "probe",
    *,
    runner: Runner | None = None,
    dry_run: bool = False,
) -> StepContext:
    """The context `step` runs in for `env`: an environment of the registry the pipeline
    loads, by name, or one the test made (in a registry of its own), with the pinned tools."""
    if isinstance(env, str):
        registry = load_registry()
        env = registry.get(env)
    else:
        registry = Registry({env.name: env}, Path("mybinder"))
    runner = runner or Runner(Context(), dry_run=dry_run, tool_dirs=toolchain.search_dirs())
    return StepContext(Context(), registry, env, runner, dry_run, step)
