"""Read-only kubectl queries against the environment's cluster, for the cluster checks.

kubectl is the pinned one (SMOKE_KUBECTL, set by `invoke smoke-test`, else the
project's cached build); the credentials are KUBECONFIG, which the task opens
for the run. The suite never changes anything in the cluster.
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

    def items(self, *what: str) -> list[dict[str, Any]]:
        return list(self.get(*what).get("items", []))

    def find(self, kind: str, name: str) -> dict[str, Any] | None:
        """The object `kind/name`, or None when the namespace has none."""
        for item in self.items(kind):
            if item["metadata"]["name"] == name:
                return item
        return None

    def pods_of(self, workload: dict[str, Any]) -> list[dict[str, Any]]:
        """The pods a Deployment, DaemonSet or StatefulSet selects, terminating ones left out."""
        labels = ((workload.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        selector = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
        pods = self.items("pods", f"--selector={selector}")
        return [pod for pod in pods if not pod["metadata"].get("deletionTimestamp")]

    def secret_data(self, name: str) -> dict[str, str] | None:
        """The Secret's values, decoded; None when there is no such Secret. Never print them."""
        found = self.items("secrets", f"--field-selector=metadata.name={name}")
        if not found:
            return None
        data = found[0].get("data") or {}
        return {key: base64.b64decode(raw).decode(errors="replace") for key, raw in data.items()}

    def ready_endpoints(self, service: str) -> int:
        """How many ready endpoints the EndpointSlices of `service` list."""
        slices = self.items("endpointslices", f"--selector=kubernetes.io/service-name={service}")
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
