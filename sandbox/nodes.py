"""Simulated nodes of a chosen shape, added to and removed from a local cluster at will.

`clusters.up` gives every cluster alike nodes (32 cpu, 256Gi, 110 pods). A
node pool of another shape is a Node object made here, which the cluster's KWOK
controller adopts and marks Ready. A tainted pool takes only the pods that
tolerate its taint, so a test can fill its own pool without crowding the
cluster's other nodes; the stand-in cluster autoscaler (tests/fakes) adds its
nodes the same way.
"""

from __future__ import annotations

import tempfile
from typing import Any

import yaml

from sandbox import clusters

# kwokctl starts the KWOK controller with --manage-nodes-with-annotation-selector on this.
KWOK_ANNOTATION = {"kwok.x-k8s.io/node": "fake"}
POOL_LABEL = clusters.POOL_LABEL


def node(
    name: str,
    *,
    pool: str,
    cpu: str = "4",
    memory: str = "16Gi",
    pods: int = 110,
    labels: dict[str, str] | None = None,
    tainted: bool = False,
) -> dict[str, Any]:
    """A Node for KWOK to adopt: labelled with its pool and, when `tainted`, only for pods that
    tolerate `kwok.binder.test/pool=<pool>:NoSchedule`."""
    capacity = {"cpu": cpu, "memory": memory, "pods": str(pods)}
    spec: dict[str, Any] = {}
    if tainted:
        spec["taints"] = [{"key": POOL_LABEL, "value": pool, "effect": "NoSchedule"}]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": dict(KWOK_ANNOTATION),
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "type": "kwok",
                POOL_LABEL: pool,
                **(labels or {}),
            },
        },
        "spec": spec,
        # KWOK keeps the capacity it finds (sandbox/stages.yaml, node-initialize).
        "status": {"allocatable": dict(capacity), "capacity": dict(capacity)},
    }


def placed_on(pool: str) -> dict[str, Any]:
    """The pod spec fields that send a pod to the (tainted) pool and nowhere else."""
    return {
        "nodeSelector": {POOL_LABEL: pool},
        "tolerations": [
            {"key": POOL_LABEL, "operator": "Equal", "value": pool, "effect": "NoSchedule"}
        ],
    }


def add(cluster: str, *nodes: dict[str, Any]) -> None:
    """Create the nodes and wait until KWOK reports them Ready."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as manifest:
        manifest.write(yaml.safe_dump_all(nodes))
        manifest.flush()
        clusters.kubectl(cluster, "apply", "-f", manifest.name)
    names = [f"node/{n['metadata']['name']}" for n in nodes]
    clusters.kubectl(cluster, "wait", "--for=condition=Ready", "--timeout=60s", *names, timeout=70)


def remove(cluster: str, pool: str) -> None:
    """Delete every node of the pool, the ones an autoscaler added to it included."""
    clusters.kubectl(cluster, "delete", "nodes", "-l", f"{POOL_LABEL}={pool}", "--wait=false")
