"""`kind: local`: a cluster of this machine, started by `invoke cluster.up --name=NAME`."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from tasks.config.cluster_kind import ClusterKind
from tasks.config.context import StepContext
from tasks.core.errors import StepFailure
from tasks.core.runner import PROJECT_ROOT

# Where `invoke cluster.up --name=NAME` (sandbox/clusters.py) leaves each cluster's kubeconfig.
CLUSTERS_DIR = PROJECT_ROOT / ".local" / "clusters"


def kubeconfig(ctx: StepContext) -> Path:
    name = ctx.environment.cluster["name"]
    path = CLUSTERS_DIR / name / "kubeconfig"
    if not ctx.dry_run and not path.exists():
        raise StepFailure(
            f"The local cluster {name!r} is not running (no kubeconfig at {path}).",
            f"Start it: invoke cluster.up --name={name}",
        )
    return path


@contextmanager
def _open(ctx: StepContext) -> Iterator[dict[str, str]]:
    yield {"KUBECONFIG": str(kubeconfig(ctx))}


def _problem(fields: Mapping[str, str]) -> tuple[str, str] | None:
    if re.fullmatch(r"[A-Za-z0-9][-A-Za-z0-9]*", fields["name"]):
        return None
    return "name", (
        f"cluster.name {fields['name']!r} is not a local cluster name: letters, digits "
        "and '-', as `invoke cluster.up --name=NAME` takes."
    )


KIND = ClusterKind[StepContext](
    required=("name",),
    open=_open,
    credentials=lambda ctx: (kubeconfig(ctx), f"local cluster {ctx.environment.cluster['name']}"),
    problem=_problem,
    when_down=lambda fields: f"Start it: invoke cluster.up --name={fields['name']}",
)
