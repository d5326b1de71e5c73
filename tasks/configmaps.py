"""The pipeline's own bookkeeping in the cluster: small ConfigMaps in the release's namespace.

The deploy lock and the record of verified revisions live there, so every CI
runner and laptop deploying the environment sees the same state.
"""

from __future__ import annotations

import json
import tempfile
from typing import Any

from tasks.pipeline import StepContext


def read(ctx: StepContext, name: str) -> dict[str, Any] | None:
    """The ConfigMap as the API server has it (resourceVersion included), or None."""
    result = ctx.runner.run(
        [
            "kubectl",
            "--namespace",
            ctx.environment.namespace,
            "get",
            "configmap",
            name,
            "-o",
            "json",
        ],
        quiet=True,
        check=False,
    )
    if result.dry_run or not result.ok:
        return None
    return json.loads(result.stdout)


def write(ctx: StepContext, configmap: dict[str, Any], verb: str = "apply") -> bool:
    """`kubectl apply` (or `replace`, which fails if the resourceVersion moved on)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="binder-configmap-") as file:
        json.dump(configmap, file)
        file.flush()
        result = ctx.runner.run(
            ["kubectl", "--namespace", ctx.environment.namespace, verb, "-f", file.name],
            quiet=True,
            check=False,
        )
    return result.ok


def new(ctx: StepContext, name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ctx.environment.namespace},
        "data": data,
    }
