"""The pipeline's own bookkeeping in the cluster: small ConfigMaps in the release's namespace.

The deploy lock and the record of verified revisions live there, so every CI
runner and laptop deploying the environment sees the same state.
"""

from __future__ import annotations

import json
import tempfile
from typing import Any

from tasks.config.context import StepContext
from tasks.core.runner import Result


def _kubectl(ctx: StepContext, *args: str) -> Result:
    namespace = ctx.target.namespace
    return ctx.runner.run(["kubectl", "--namespace", namespace, *args], quiet=True, check=False)


def read(ctx: StepContext, name: str) -> dict[str, Any] | None:
    """The ConfigMap as the API server has it (resourceVersion included), or None."""
    result = _kubectl(ctx, "get", "configmap", name, "-o", "json")
    if result.dry_run or not result.ok:
        return None
    return json.loads(result.stdout)


def write(ctx: StepContext, configmap: dict[str, Any], verb: str = "apply") -> bool:
    """`kubectl apply` (or `replace`, which fails if the resourceVersion moved on)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="binder-configmap-") as file:
        json.dump(configmap, file)
        file.flush()
        return _kubectl(ctx, verb, "-f", file.name).ok


def new(ctx: StepContext, name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ctx.target.namespace},
        "data": data,
    }
