"""Read-only kubectl queries against the environment's cluster, for the cluster checks.

kubectl is the pinned one (SMOKE_KUBECTL, set by `invoke smoke-test`, else the
project's cached build); the credentials are KUBECONFIG, which the task opens
for the run. The suite never changes anything in the cluster.

The namespace's workloads, pods, services, endpoint slices and claims are read
with one kubectl call and kept: the checks read that snapshot, and a check that
waits for something to change takes a fresh one (`refresh`) before looking
again. Secrets are read one by one, and only where a check needs one.
"""

from __future__ import annotations

import base64
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.smoke.probes import mask

_KUBECTL_SECONDS = 60
# What the snapshot holds: each kind as `kubectl get` names it, with the `kind` its objects carry.
SNAPSHOT = {
    "pods": "Pod",
    "services": "Service",
    "endpointslices": "EndpointSlice",
    "deployments": "Deployment",
    "daemonsets": "DaemonSet",
    "statefulsets": "StatefulSet",
    "persistentvolumeclaims": "PersistentVolumeClaim",
}


@dataclass(frozen=True)
class ContainerRestarts:
    """One container of a pod: how often it restarted and why it waits, if it does."""

    pod: str
    container: str
    restarts: int
    waiting_reason: str
    last_exit: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.pod, self.container)


class Kube:
    """kubectl for one namespace, through one kubeconfig."""

    def __init__(self, kubectl: str, kubeconfig: Path, namespace: str, cache_dir: Path) -> None:
        self.kubectl = kubectl
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.cache_dir = cache_dir
        self._snapshot: dict[str, list[dict[str, Any]]] | None = None

    def refresh(self) -> None:
        """Forget the snapshot: the next read takes a fresh one."""
        self._snapshot = None

    def get(self, *what: str) -> dict[str, Any]:
        """`kubectl get <what> -o json` in the namespace; fail the test if kubectl does."""
        command = [
            self.kubectl,
            f"--kubeconfig={self.kubeconfig}",
            # kubectl would otherwise keep its discovery cache in ~/.kube.
            f"--cache-dir={self.cache_dir}",
            f"--namespace={self.namespace}",
            "get",
            *what,
            "--output=json",
        ]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=_KUBECTL_SECONDS
            )
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"`kubectl get {' '.join(what)}` in {self.namespace} did not answer within "
                f"{_KUBECTL_SECONDS}s: is the cluster reachable?",
                pytrace=False,
            )
        if result.returncode != 0:
            pytest.fail(
                f"`kubectl get {' '.join(what)}` in {self.namespace} exited with "
                f"{result.returncode}: {mask(result.stderr.strip())}",
                pytrace=False,
            )
        return json.loads(result.stdout)

    def items(self, kind: str, labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """The namespace's objects of `kind` (one of SNAPSHOT), those with `labels` if given."""
        if self._snapshot is None:
            snapshot: dict[str, list[dict[str, Any]]] = {name: [] for name in SNAPSHOT}
            named = {value: name for name, value in SNAPSHOT.items()}
            for item in self.get(",".join(SNAPSHOT)).get("items", []):
                snapshot[named[item["kind"]]].append(item)
            self._snapshot = snapshot
        return [
            item
            for item in self._snapshot[kind]
            if all(
                (item["metadata"].get("labels") or {}).get(key) == value
                for key, value in (labels or {}).items()
            )
        ]

    def find(self, kind: str, name: str) -> dict[str, Any] | None:
        """The object `kind/name`, or None when the namespace has none."""
        for item in self.items(kind):
            if item["metadata"]["name"] == name:
                return item
        return None

    def pods_of(self, workload: dict[str, Any]) -> list[dict[str, Any]]:
        """The pods a Deployment, DaemonSet or StatefulSet selects, terminating ones left out."""
        labels = ((workload.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        pods = self.items("pods", labels)
        return [pod for pod in pods if not pod["metadata"].get("deletionTimestamp")]

    def secret_data(self, name: str) -> dict[str, str] | None:
        """The Secret's values, decoded; None when there is no such Secret. Never print them."""
        found = self.get("secrets", f"--field-selector=metadata.name={name}").get("items", [])
        if not found:
            return None
        data = found[0].get("data") or {}
        return {key: base64.b64decode(raw).decode(errors="replace") for key, raw in data.items()}

    def ready_endpoints(self, service: str) -> int:
        """How many ready endpoints the EndpointSlices of `service` list."""
        slices = self.items("endpointslices", {"kubernetes.io/service-name": service})
        # A missing `ready` condition means ready, by the EndpointSlice API's definition.
        return sum(
            1
            for piece in slices
            for endpoint in piece.get("endpoints") or []
            if (endpoint.get("conditions") or {}).get("ready", True) is not False
        )

    def container_restarts(self) -> list[ContainerRestarts]:
        found = []
        for pod in self.items("pods"):
            for status in (pod.get("status") or {}).get("containerStatuses") or []:
                waiting = (status.get("state") or {}).get("waiting") or {}
                terminated = (status.get("lastState") or {}).get("terminated") or {}
                last_exit = ""
                if terminated:
                    last_exit = (
                        f"last exit {terminated.get('exitCode', '?')} "
                        f"({terminated.get('reason', 'unknown')})"
                    )
                found.append(
                    ContainerRestarts(
                        pod=pod["metadata"]["name"],
                        container=status.get("name", ""),
                        restarts=int(status.get("restartCount") or 0),
                        waiting_reason=waiting.get("reason", ""),
                        last_exit=last_exit,
                    )
                )
        return found
