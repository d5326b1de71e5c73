"""Local Kubernetes clusters for the demo and the tests: `invoke cluster.<task>`.

    cluster.build    build and cache the pinned tools (config/tools.yaml)
    cluster.up       start binder-staging, binder-prod and binder-prod-b (or --name X)
    cluster.down     stop them and check that no process or port is left
    cluster.status   what runs, its API server URL, its kubeconfig

The Python API lives in `tasks/adapters/go_builds.py` (pinned binaries) and
`sandbox/clusters.py` (cluster lifecycle, failure labels).
"""

from __future__ import annotations

import time

from invoke import Collection, Context, task
from invoke.exceptions import Exit

from sandbox import clusters
from tasks.adapters import go_builds
from tasks.core.runner import invoke_dry_refusal

DEMO = ", ".join(clusters.DEMO_CLUSTERS)


def _names(name: str | None) -> list[str]:
    return [name] if name else list(clusters.DEMO_CLUSTERS)


def _took(started: float) -> str:
    return f"({time.monotonic() - started:.1f}s)"


def _refuse_invoke_dry(c: Context, task_name: str) -> None:
    # These tasks run their commands directly; invoke's --dry would not stop them.
    refusal = invoke_dry_refusal(c, f"cluster.{task_name}")
    if refusal:
        raise Exit(refusal)


@task
def build(c: Context) -> None:
    """Build the pinned Kubernetes, etcd, KWOK, Helm, OCI registry and actionlint (cached)."""
    _refuse_invoke_dry(c, "build")
    started = time.monotonic()
    paths = go_builds.ensure_built()
    versions = go_builds.pinned_versions()
    for name, path in paths.items():
        print(f"  {name:<24} {versions[go_builds.BINARIES[name].key]:<9} {path}")
    print(f"cluster.build done {_took(started)}")


@task(
    help={
        "name": f"Cluster to start (default: the demo clusters {DEMO}).",
        "nodes": f"Simulated nodes per cluster (default {clusters.NODES_PER_CLUSTER}).",
    }
)
def up(c: Context, name: str | None = None, nodes: int = clusters.NODES_PER_CLUSTER) -> None:
    """Start local clusters (building the pinned tools first if needed)."""
    _refuse_invoke_dry(c, "up")
    started = time.monotonic()
    for each in _names(name):
        one = time.monotonic()
        clusters.up(each, nodes=int(nodes))
        print(f"{each}: ready {_took(one)}")
    print(f"cluster.up done {_took(started)}")


@task(
    help={
        "name": f"Cluster to stop (default: the demo clusters {DEMO}).",
        "all": "Stop every local cluster that has state under .local/, not only the demo ones.",
    }
)
def down(c: Context, name: str | None = None, all: bool = False) -> None:
    """Stop local clusters, delete their state, and check no process or port is left."""
    _refuse_invoke_dry(c, "down")
    started = time.monotonic()
    names = clusters.known_clusters() if all else _names(name)
    for each in names:
        clusters.down(each)
    print(f"cluster.down done {_took(started)}")


@task(help={"name": "Only this cluster (default: the demo clusters and any other known one)."})
def status(c: Context, name: str | None = None) -> None:
    """Say which local clusters run, their API server URLs and where their kubeconfigs are."""
    _refuse_invoke_dry(c, "status")
    started = time.monotonic()
    names = [name] if name else sorted(set(clusters.DEMO_CLUSTERS) | set(clusters.known_clusters()))
    for each in names:
        state = clusters.status(each)
        running = state.running_pids
        if state.up:
            print(f"{each}: up")
            print(f"  API server  {state.server}")
            print(f"  kubeconfig  {state.kubeconfig}")
            print(f"  processes   {', '.join(f'{k}={v}' for k, v in sorted(running.items()))}")
        elif running:
            print(f"{each}: NOT answering, but processes run: {running} (try cluster.down)")
        else:
            print(f"{each}: down")
    print(f"cluster.status done {_took(started)}")


ns = Collection(build, up, down, status)
