"""A stand-in for the Kubernetes cluster-autoscaler, at its documented contract, over the real API.

The cluster-autoscaler cannot be built here (its Go module is not served) and
needs a cloud provider to add machines. This stand-in looks, every
`scan_seconds`, for pods the real kube-scheduler marked Unschedulable, and
answers the way the autoscaler does (its FAQ, "What events are emitted by CA?",
and its EventingScaleUpStatusProcessor and scale-up executor):

- events on the pod, source component `cluster-autoscaler`:
      TriggeredScaleUp   pod triggered scale-up: [{pool-1 1->2 (max: 3)}]
      NotTriggerScaleUp  pod didn't trigger scale-up: 1 max node group size reached
                         pod didn't trigger scale-up: 1 Insufficient cpu   (a new node
                         of the group would not take it either)
  a pod that fits on a node already on its way gets no event, as with the real one;
- its status ConfigMap `kube-system/cluster-autoscaler-status`, rewritten every
  loop: `data.status` in the YAML form of cluster-autoscaler 1.30 and later
  (time, autoscalerStatus, clusterWide.{health,scaleUp,scaleDown}, nodeGroups),
  annotation `cluster-autoscaler.kubernetes.io/last-updated`; and on it the
  event ScaledUpGroup "Scale-up: setting group pool-1 size to 2 instead of 1 (max: 3)";
- `provision_seconds` after a scale-up, the new node: a Node of the group's shape
  (sandbox/nodes.py) that KWOK adopts and the scheduler then fills.

`refuse="..."` answers every pod with NotTriggerScaleUp and that reason. Only pods
of `namespaces` are looked at, so a test's autoscaler does not act on another's
pods. On exit it deletes its ConfigMap and every node it added.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from sandbox import nodes
from tasks.steps.rollout_fit import (
    AUTOSCALER_CONFIGMAP,
    AUTOSCALER_NAMESPACE,
    AUTOSCALER_UPDATED,
    node_rejection,
    pod_requests,
)
from tests.fakes.kube import KubeApi, KubeError

COMPONENT = "cluster-autoscaler"
STATUS_PATH = f"/api/v1/namespaces/{AUTOSCALER_NAMESPACE}/configmaps"
# kube-scheduler's podMaxBackoffSeconds: an unschedulable pod is retried within it.
SCHEDULER_BACKOFF_SECONDS = 10.0


class FakeClusterAutoscaler:
    """One node group, `group`, of nodes shaped like `template` (a `nodes.node(...)`)."""

    def __init__(
        self,
        kubeconfig: Path,
        *,
        namespaces: list[str],
        group: str,
        template: dict[str, Any],
        max_size: int,
        provision_seconds: float = 3.0,
        scan_seconds: float = 1.0,
        refuse: str | None = None,
    ) -> None:
        self.api = KubeApi(kubeconfig)
        self.namespaces = namespaces
        self.group = group
        self.template = template
        self.max_size = max_size
        self.provision_seconds = provision_seconds
        self.scan_seconds = scan_seconds
        self.refuse = refuse
        self.upcoming: list[tuple[float, str]] = []  # (when it appears, node name)
        self.added: list[str] = []
        # uid of a pod bound for a new node -> until when it is left to the scheduler
        self.expecting: dict[str, float] = {}
        self.said: set[tuple[str, str, str]] = set()
        self.events: list[dict[str, Any]] = []  # everything it emitted, for the tests
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="fake-autoscaler")
        self.errors: list[str] = []
        self.since = _rfc3339()

    def __enter__(self) -> FakeClusterAutoscaler:
        self._write_status()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.api.delete(f"{STATUS_PATH}/{AUTOSCALER_CONFIGMAP}")
        for name in self.added:
            self.api.delete(f"/api/v1/nodes/{name}")

    # --- The loop --------------------------------------------------------------------------

    def _run(self) -> None:
        while not self.stop.wait(self.scan_seconds):
            try:
                self._loop()
            except Exception as error:  # a stand-in that dies silently would hide the cause
                self.errors.append(repr(error))

    def _loop(self) -> None:
        now = time.monotonic()
        for due, name in [u for u in self.upcoming if u[0] <= now]:
            self.api.create("/api/v1/nodes", self._node(name))
            self.added.append(name)
            self.upcoming.remove((due, name))
        size = len(self._group_nodes()) + len(self.upcoming)
        triggered = []
        for pod in self._unschedulable():
            uid = pod["metadata"]["uid"]
            if self.expecting.get(uid, 0.0) > now:
                continue
            why = self.refuse or self._would_not_fit(pod)
            if why is None and size >= self.max_size:
                why = "1 max node group size reached"
            if why is None:
                triggered.append(pod)
            else:
                self._event(pod, "NotTriggerScaleUp", f"pod didn't trigger scale-up: {why}")
        if triggered:
            self._scale_up(triggered, size)
        self._write_status()

    def _scale_up(self, pods: list[dict[str, Any]], size: int) -> None:
        per_node = int(self.template["status"]["allocatable"]["pods"])
        new = min(self.max_size, size + math.ceil(len(pods) / per_node))
        self._status_event(
            "ScaledUpGroup",
            f"Scale-up: setting group {self.group} size to {new} instead of {size} "
            f"(max: {self.max_size})",
        )
        info = f"[{{{self.group} {size}->{new} (max: {self.max_size})}}]"
        due = time.monotonic() + self.provision_seconds
        for pod in pods[: (new - size) * per_node]:
            self._event(pod, "TriggeredScaleUp", f"pod triggered scale-up: {info}")
            # The scheduler places it once the node is Ready, within its backoff (10 s at most).
            self.expecting[pod["metadata"]["uid"]] = due + SCHEDULER_BACKOFF_SECONDS
        for _ in range(new - size):
            self.upcoming.append((due, f"{self.group}-{uuid.uuid4().hex[:5]}"))

    def _unschedulable(self) -> list[dict[str, Any]]:
        found = []
        for namespace in self.namespaces:
            pending = self.api.items(
                f"/api/v1/namespaces/{namespace}/pods", fieldSelector="status.phase=Pending"
            )
            for pod in pending:
                for c in (pod.get("status") or {}).get("conditions") or ():
                    if c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable":
                        found.append(pod)
        return found

    def _would_not_fit(self, pod: dict[str, Any]) -> str | None:
        """The reason, in the scheduler's words, why a new node of the group would not take it."""
        rejection = node_rejection(pod, self.template, pod_requests(pod))
        if rejection is None:
            return None
        if rejection.kind == "resource":
            return (
                "1 Too many pods"
                if rejection.text == "pods"
                else f"1 Insufficient {rejection.text}"
            )
        if rejection.kind == "taint":
            return "1 node(s) had untolerated taint(s)"
        return "1 node(s) didn't match Pod's node affinity/selector"

    def _group_nodes(self) -> list[dict[str, Any]]:
        pool = self.template["metadata"]["labels"][nodes.POOL_LABEL]
        return self.api.items("/api/v1/nodes", labelSelector=f"{nodes.POOL_LABEL}={pool}")

    def _node(self, name: str) -> dict[str, Any]:
        made = yaml.safe_load(yaml.safe_dump(self.template))
        made["metadata"]["name"] = name
        made["metadata"]["labels"]["kubernetes.io/hostname"] = name
        return made

    # --- What it says ----------------------------------------------------------------------

    def _event(self, pod: dict[str, Any], reason: str, message: str) -> None:
        meta = pod["metadata"]
        if (meta["uid"], reason, message) in self.said:
            return  # the real one repeats itself; a count of one says as much
        self.said.add((meta["uid"], reason, message))
        about = {"apiVersion": "v1", "kind": "Pod", **_ref(meta)}
        self._emit(meta["namespace"], about, reason, message, "Normal")

    def _status_event(self, reason: str, message: str) -> None:
        status = self.api.get(f"{STATUS_PATH}/{AUTOSCALER_CONFIGMAP}")
        about = {"apiVersion": "v1", "kind": "ConfigMap", **_ref(status["metadata"])}
        self._emit(AUTOSCALER_NAMESPACE, about, reason, message, "Normal")

    def _emit(
        self, namespace: str, about: dict[str, Any], reason: str, message: str, kind: str
    ) -> None:
        stamp = _rfc3339()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{about['name']}.{uuid.uuid4().hex[:16]}"},
            "involvedObject": about,
            "reason": reason,
            "message": message,
            "type": kind,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": f"{COMPONENT}-stand-in",
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        self.api.create(f"/api/v1/namespaces/{namespace}/events", event)
        self.events.append(event)

    def _write_status(self) -> None:
        probe = _rfc3339()
        ready = len(self._group_nodes())
        scaling = "InProgress" if self.upcoming else "NoActivity"
        counts = {
            "registered": {"total": ready, "ready": ready, "notStarted": 0},
            "longUnregistered": 0,
            "unregistered": len(self.upcoming),
        }
        times = {"lastProbeTime": probe, "lastTransitionTime": self.since}
        status = {
            "time": _go_time(),
            "autoscalerStatus": "Running",
            "clusterWide": {
                "health": {"status": "Healthy", "nodeCounts": counts, **times},
                "scaleUp": {"status": scaling, **times},
                "scaleDown": {"status": "NoCandidates", "candidates": 0, **times},
            },
            "nodeGroups": [
                {
                    "name": self.group,
                    "health": {
                        "status": "Healthy",
                        "nodeCounts": counts,
                        "cloudProviderTarget": ready + len(self.upcoming),
                        "minSize": 0,
                        "maxSize": self.max_size,
                        **times,
                    },
                    "scaleUp": {"status": scaling, **times},
                    "scaleDown": {"status": "NoCandidates", "candidates": 0, **times},
                }
            ],
        }
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": AUTOSCALER_CONFIGMAP,
                "annotations": {AUTOSCALER_UPDATED: status["time"]},
            },
            "data": {"status": yaml.safe_dump(status, sort_keys=False)},
        }
        try:
            self.api.create(STATUS_PATH, body)
        except KubeError as error:
            if error.status != 409:
                raise
            self.api.patch(f"{STATUS_PATH}/{AUTOSCALER_CONFIGMAP}", body)


def _ref(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion") if k in meta}


def _rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _go_time() -> str:
    """Go's `2006-01-02 15:04:05.999999999 -0700 MST`, as the autoscaler writes its times."""
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%d %H:%M:%S.%f") + "000 +0000 UTC"
