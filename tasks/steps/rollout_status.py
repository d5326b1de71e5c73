"""When a workload has rolled out, and when one of its pods never will.

Pure logic over the JSON objects the Kubernetes API returns, no I/O, so every
rule is tested without a cluster:

- the verdicts: `kubectl rollout status`'s own rules
  (kubectl/pkg/polymorphichelpers/rollout_status.go), which Argo CD and
  kstatus agree with, plus the same rules read from a workload's pods, which
  tell seconds before a busy controller updates the workload's status;
- the pod problems a kubelet never recovers from alone;
- `NamespaceView`, the objects as the watch streams last reported them, and
  `RolloutWaiter`, which decides from it: go on waiting, succeed, or fail.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from tasks.core.report import aligned, counted, format_seconds
from tasks.steps.rollout_fit import (
    ClusterFacts,
    Fit,
    Note,
    autoscaler_status,
    autoscaler_word,
    classify,
    event_time,
    placement,
)

Obj = dict[str, Any]

# How long a pod of the release may find the nodes full before the step fails,
# when no cluster autoscaler runs: long enough for the scheduler to place it once
# a terminating pod frees its node (the waiter also holds off while a pod of the
# release terminates), short enough to fail in well under a minute. A pod that
# can never fit fails at once; one the autoscaler is adding a node for is waited
# on until the deadline (tasks/steps/rollout_fit.py).
UNSCHEDULABLE_GRACE = 20.0
# How often the nodes, claims and the autoscaler's status are read again while a
# pod of the release finds no node.
FACTS_SECONDS = 5.0
# A ReplicaFailure (quota, admission) often clears once old pods are gone.
REPLICA_FAILURE_GRACE = 20.0

WORKLOAD_KINDS = ("deployments", "daemonsets", "statefulsets")
# ReplicaSets and ControllerRevisions tell which pods belong to a workload's
# current revision: an old pod failing while it is replaced fails nothing.
WATCHED = (*WORKLOAD_KINDS, "replicasets", "controllerrevisions", "pods", "events")

WAITING = "waiting"
READY = "ready"
FAILED = "failed"
# kubectl refuses to wait on these; they are reported, never failed.
UNWAITABLE = "unwaitable"

# Container waiting reasons a kubelet does not recover from without a change to
# the pod's spec, the image or the objects it refers to. All but a crash loop
# leave the container unstarted, so asking for its logs is pointless.
_NOT_STARTED = (
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
)
FAILING_WAIT_REASONS = ("CrashLoopBackOff", *_NOT_STARTED)
UNSCHEDULABLE = "Unschedulable"
NEVER_STARTED = (*_NOT_STARTED, UNSCHEDULABLE)
PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"

_PULL_FIX = (
    "The cluster cannot pull the container's image. Check the image name and tag in the "
    "values (was that tag built and pushed?) and that the cluster may pull from its registry."
)
FIXES = {
    "CrashLoopBackOff": (
        "The container starts and exits, again and again: a bug or a configuration error in "
        "the version just deployed. Its logs from the crashed run say which; fix or revert "
        "the change that brought it (waiting longer would not help: it would crash forever)."
    ),
    "ImagePullBackOff": _PULL_FIX,
    "ErrImagePull": _PULL_FIX,
    "InvalidImageName": "The image reference is malformed; correct it in the values.",
    "ErrImageNeverPull": (
        "The pod's imagePullPolicy is Never and the node lacks the image; allow pulling it."
    ),
    "CreateContainerConfigError": (
        "The container refers to a Secret or ConfigMap, or a key of one, that does not exist. "
        "Check the names in the values and that the secrets are deployed "
        "(invoke decrypt-secrets, then the upgrade again)."
    ),
    PROGRESS_DEADLINE_EXCEEDED: (
        "The Deployment made no progress within its progressDeadlineSeconds. Look at its new "
        "pods (kubectl describe pod) and its events below; a pod that never gets ready is the "
        "usual cause."
    ),
    "ReplicaFailure": (
        "The cluster refused to create the Deployment's pods (quota, admission policy or "
        "security rules); the message says which."
    ),
}


@dataclass(frozen=True)
class Verdict:
    """Where a workload's rollout stands, in kubectl's words."""

    state: str
    ready: int
    desired: int
    message: str


def workload_key(obj: Obj) -> str:
    """`deployment/hub`: how the operator names a workload on the command line."""
    return f"{obj.get('kind', '?').lower()}/{obj['metadata']['name']}"


def workload_verdict(obj: Obj) -> Verdict:
    """The rollout state of a Deployment, DaemonSet or StatefulSet."""
    kind = obj.get("kind")
    if kind == "Deployment":
        return deployment_verdict(obj)
    if kind == "DaemonSet":
        return daemonset_verdict(obj)
    if kind == "StatefulSet":
        return statefulset_verdict(obj)
    raise ValueError(f"not a workload kind: {kind!r}")


def _generation_observed(obj: Obj) -> bool:
    status = obj.get("status") or {}
    return obj["metadata"].get("generation", 0) <= status.get("observedGeneration", 0)


def condition(obj: Obj, kind: str) -> Obj | None:
    """The status condition of type `kind`, if the object has one."""
    for found in (obj.get("status") or {}).get("conditions") or ():
        if found.get("type") == kind:
            return found
    return None


def deployment_verdict(obj: Obj) -> Verdict:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    desired = spec.get("replicas", 1)
    updated = status.get("updatedReplicas", 0)
    available = status.get("availableReplicas", 0)
    ready = min(updated, available)
    if not _generation_observed(obj):
        return Verdict(WAITING, ready, desired, "waiting for the spec update to be observed")
    progressing = condition(obj, "Progressing")
    if progressing and progressing.get("reason") == PROGRESS_DEADLINE_EXCEEDED:
        return Verdict(FAILED, ready, desired, progressing.get("message") or "")
    if updated < desired:
        return Verdict(WAITING, ready, desired, f"{updated} of {desired} new replicas updated")
    if status.get("replicas", 0) > updated:
        old = status.get("replicas", 0) - updated
        return Verdict(WAITING, ready, desired, f"{old} old replicas pending termination")
    if available < updated:
        return Verdict(WAITING, ready, desired, f"{available} of {updated} updated available")
    if spec.get("paused"):
        # Only reached when nothing is left to roll out: a paused Deployment
        # with changes pending never progresses, which the progress checks
        # above already show as waiting.
        return Verdict(READY, ready, desired, "rolled out (paused)")
    return Verdict(READY, ready, desired, "rolled out")


def daemonset_verdict(obj: Obj) -> Verdict:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    desired = status.get("desiredNumberScheduled", 0)
    updated = status.get("updatedNumberScheduled", 0)
    available = status.get("numberAvailable", 0)
    ready = min(updated, available)
    strategy = (spec.get("updateStrategy") or {}).get("type", "RollingUpdate")
    if strategy != "RollingUpdate":
        return _not_waited(strategy, ready, desired)
    if not _generation_observed(obj):
        return Verdict(WAITING, ready, desired, "waiting for the spec update to be observed")
    if updated < desired:
        return Verdict(WAITING, ready, desired, f"{updated} of {desired} new pods updated")
    if available < desired:
        return Verdict(WAITING, ready, desired, f"{available} of {desired} updated available")
    return Verdict(READY, ready, desired, "rolled out")


def statefulset_verdict(obj: Obj) -> Verdict:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    desired = spec.get("replicas", 1)
    ready_count = status.get("readyReplicas", 0)
    strategy = spec.get("updateStrategy") or {}
    kind = strategy.get("type", "RollingUpdate")
    if kind != "RollingUpdate":
        return _not_waited(kind, ready_count, desired)
    if status.get("observedGeneration", 0) == 0 or not _generation_observed(obj):
        return Verdict(WAITING, ready_count, desired, "waiting for the spec update to be observed")
    if ready_count < desired:
        return Verdict(WAITING, ready_count, desired, f"{ready_count} of {desired} pods ready")
    rolling = strategy.get("rollingUpdate")
    if rolling is not None:
        partition = rolling.get("partition") or 0
        updated = status.get("updatedReplicas", 0)
        if updated < desired - partition:
            message = f"partitioned roll out: {updated} of {desired - partition} new pods updated"
            return Verdict(WAITING, ready_count, desired, message)
        return Verdict(READY, ready_count, desired, "rolled out")
    if status.get("updateRevision") != status.get("currentRevision"):
        message = f"rolling update to revision {status.get('updateRevision')} in progress"
        return Verdict(WAITING, ready_count, desired, message)
    return Verdict(READY, ready_count, desired, "rolled out")


def _not_waited(strategy: str, ready: int, desired: int) -> Verdict:
    message = f"update strategy {strategy}: pods change only when deleted, nothing to wait for"
    return Verdict(UNWAITABLE, ready, desired, message)


@dataclass(frozen=True)
class PodProblem:
    """A pod that will not get ready by itself."""

    pod: str
    container: str  # "" when the whole pod is stuck (unschedulable)
    reason: str
    message: str
    restarts: int = 0
    last_exit: str = ""

    @property
    def never_started(self) -> bool:
        return self.reason in NEVER_STARTED


def _container_statuses(pod: Obj) -> list[Obj]:
    status = pod.get("status") or {}
    return [*(status.get("initContainerStatuses") or ()), *(status.get("containerStatuses") or ())]


def _last_exit(container: Obj) -> str:
    terminated = (container.get("lastState") or {}).get("terminated") or (
        container.get("state") or {}
    ).get("terminated")
    if not terminated:
        return ""
    return f"exit code {terminated.get('exitCode', '?')} ({terminated.get('reason', 'no reason')})"


def container_problem(pod: Obj) -> PodProblem | None:
    """The first container of the pod stuck in a state it will not leave alone."""
    if pod["metadata"].get("deletionTimestamp"):
        return None
    for container in _container_statuses(pod):
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in FAILING_WAIT_REASONS:
            return PodProblem(
                pod=pod["metadata"]["name"],
                container=container.get("name", ""),
                reason=waiting["reason"],
                message=waiting.get("message") or "",
                restarts=container.get("restartCount", 0),
                last_exit=_last_exit(container),
            )
    return None


def unschedulable(pod: Obj) -> PodProblem | None:
    """The scheduler's verdict on a pod no node can take; time decides if it is final."""
    if pod["metadata"].get("deletionTimestamp"):
        return None
    scheduled = condition(pod, "PodScheduled") or {}
    if scheduled.get("status") == "False" and scheduled.get("reason") == UNSCHEDULABLE:
        message = scheduled.get("message") or ""
        return PodProblem(pod["metadata"]["name"], "", UNSCHEDULABLE, message)
    return None


def pod_state(pod: Obj) -> str:
    """One line on why a pod is not ready yet, for the deadline report."""
    status = pod.get("status") or {}
    phase = status.get("phase", "Pending")
    if pod["metadata"].get("deletionTimestamp"):
        return "terminating"
    stuck = unschedulable(pod)
    if stuck:
        return f"unschedulable: {stuck.message}"
    for container in _container_statuses(pod):
        state = container.get("state") or {}
        if "waiting" in state:
            reason = state["waiting"].get("reason", "waiting")
            return f"{phase}, container {container.get('name')}: {reason}"
        if not container.get("ready") and "running" in state:
            return f"{phase}, container {container.get('name')}: running, not ready"
        if "terminated" in state:
            reason = state["terminated"].get("reason", "terminated")
            return f"{phase}, container {container.get('name')}: {reason}"
    if pod_ready(pod):
        return f"{phase}, ready"
    if not status.get("containerStatuses"):
        return f"{phase}, scheduled, containers not created yet" if scheduled_on(pod) else phase
    return phase


def pod_ready(pod: Obj) -> bool:
    ready = condition(pod, "Ready")
    return bool(ready and ready.get("status") == "True")


def _active(pod: Obj) -> bool:
    # What the controllers count as a replica: neither finished nor on its way out.
    phase = (pod.get("status") or {}).get("phase")
    return not pod["metadata"].get("deletionTimestamp") and phase not in ("Succeeded", "Failed")


def _workload_pod(pod: Obj) -> bool:
    # Pods nobody controls (a BinderHub's user servers and builds) come and go all
    # day; only workloads' pods are part of a rollout's comings and goings.
    owner = controller_of(pod)
    return owner is not None and owner.get("kind") in ("ReplicaSet", "DaemonSet", "StatefulSet")


def scheduled_on(pod: Obj) -> str:
    return (pod.get("spec") or {}).get("nodeName", "")


def controller_of(obj: Obj) -> Obj | None:
    """The ownerReference that controls `obj` (kind, name, uid), if any."""
    for owner in obj["metadata"].get("ownerReferences") or ():
        if owner.get("controller"):
            return owner
    return None


@dataclass
class Change:
    """What one watch stream reports: a fresh listing, one object's change, or its end."""

    resource: str
    type: str  # "SYNC" (objects is the full list), "ADDED", "MODIFIED", "DELETED", "ERROR"
    objects: list[Obj] = field(default_factory=list)
    error: Exception | None = None


# --- What the waiter knows about the namespace ---------------------------------------------


class NamespaceView:
    """The objects of the namespace as the watch streams last reported them."""

    def __init__(self) -> None:
        # objects["pods"] holds the pods some controller owns; the others are apart.
        self.objects: dict[str, dict[str, Obj]] = {name: {} for name in WATCHED}
        self.uncontrolled: dict[str, Obj] = {}
        self.synced: set[str] = set()
        self.last_pod_gone = 0.0
        # Read when a pod of the release finds no node; None until then.
        self.facts: ClusterFacts | None = None
        # resource -> controller uid -> objects it controls; rebuilt after changes,
        # so a check over 200 workloads costs one pass over the pods, not 200.
        self._children: dict[str, dict[str, list[Obj]]] | None = None
        # (kind, name) -> events, oldest first; rebuilt after the events change.
        self._events: dict[tuple[str, str], list[Obj]] | None = None

    def apply(self, change: Change, now: float) -> bool:
        """Take in what a watch stream reported; return whether it can change a verdict.

        Pods no workload controls (a BinderHub's user servers and builds, by the
        thousand at peak hours) are kept apart: they change no verdict, so their
        comings and goings, and their events, neither rebuild the index of the
        workloads' pods nor call for a new look at the workloads.
        """
        if change.resource == "pods":
            return self._apply_pods(change, now)
        if change.resource == "events":
            self._events = None
        else:
            self._children = None
        store = self.objects[change.resource]
        if change.type == "SYNC":
            store.clear()
            self.synced.add(change.resource)
        for obj in change.objects:
            if change.type == "DELETED":
                store.pop(_uid(obj), None)
            else:
                store[_uid(obj)] = obj
        # Events (one a user pod, at least) decide nothing alone: what they tell of a pod
        # waiting for a node is read at the next tick.
        return change.resource != "events" or change.type == "SYNC"

    def _apply_pods(self, change: Change, now: float) -> bool:
        controlled = self.objects["pods"]
        if change.type == "SYNC":
            listed = {_uid(o) for o in change.objects}
            if any(_workload_pod(p) for uid, p in controlled.items() if uid not in listed):
                self.last_pod_gone = now
            controlled.clear()
            self.uncontrolled.clear()
            self.synced.add("pods")
        matters = change.type == "SYNC"
        for pod in change.objects:
            uid = _uid(pod)
            # A pod may be adopted or orphaned: whichever store held it before matters too.
            matters = matters or uid in controlled or controller_of(pod) is not None
            if change.type == "DELETED":
                controlled.pop(uid, None)
                self.uncontrolled.pop(uid, None)
                if _workload_pod(pod):
                    self.last_pod_gone = now
            elif controller_of(pod) is not None:
                controlled[uid] = pod
                self.uncontrolled.pop(uid, None)
            else:
                self.uncontrolled[uid] = pod
                controlled.pop(uid, None)
        if matters:
            self._children = None
        return matters

    @property
    def complete(self) -> bool:
        return self.synced >= set(WATCHED)

    def workloads(self) -> list[Obj]:
        found = [obj for kind in WORKLOAD_KINDS for obj in self.objects[kind].values()]
        return sorted(found, key=workload_key)

    def pods_terminating(self) -> bool:
        """Whether a workload's pod is on its way out, about to free room on its node."""
        return any(
            p["metadata"].get("deletionTimestamp") and _workload_pod(p)
            for p in self.objects["pods"].values()
        )

    def children(self, resource: str, owner_uid: str) -> list[Obj]:
        """The objects of `resource` whose controller is the object `owner_uid`."""
        if self._children is None:
            index: dict[str, dict[str, list[Obj]]] = {}
            for name in ("replicasets", "controllerrevisions", "pods"):
                by_owner: dict[str, list[Obj]] = {}
                for obj in self.objects[name].values():
                    owner = controller_of(obj)
                    if owner is not None:
                        by_owner.setdefault(owner.get("uid", ""), []).append(obj)
                index[name] = by_owner
            self._children = index
        return self._children[resource].get(owner_uid, [])

    def current_replicaset(self, deployment: Obj) -> Obj | None:
        """The ReplicaSet made from the Deployment's pod template as it is now.

        Found the way the deployment controller finds it, by comparing templates
        (less the pod-template-hash label it adds), so it is known as soon as
        the ReplicaSet exists, not once the controller's status update, which
        can queue behind the controller's rate limit for seconds, says so.
        """
        template = (deployment.get("spec") or {}).get("template")
        sets = self.children("replicasets", _uid(deployment))
        matching = [rs for rs in sets if template and _template_without_hash(rs) == template]
        return min(
            matching, key=lambda rs: rs["metadata"].get("creationTimestamp", ""), default=None
        )

    def current_pods(self, workload: Obj) -> list[Obj]:
        """The pods of the workload's current revision.

        A Deployment's new revision has none before its ReplicaSet exists; a
        DaemonSet or StatefulSet whose revision is not known yet counts all its pods.
        """
        uid = _uid(workload)
        kind = workload.get("kind")
        if kind == "Deployment":
            current = self.current_replicaset(workload)
            return self.children("pods", _uid(current)) if current else []
        owned = self.children("pods", uid)
        if kind == "StatefulSet":
            revision = (workload.get("status") or {}).get("updateRevision")
        else:
            revisions = self.children("controllerrevisions", uid)
            newest = max(revisions, key=lambda r: r.get("revision", 0), default=None)
            revision = _revision_hash(newest) if newest else None
        if not revision:
            return owned
        return [p for p in owned if _revision_hash(p) == revision]

    def rolled_out_by_pods(self, workload: Obj) -> bool:
        """kubectl's rule for the workload, read from its pods instead of its status.

        The controllers fold pod readiness into a workload's status seconds later
        when busy: the deployment controller's API rate limit (20 requests a second
        by default) is shared by every Deployment. Used only where the pods carry
        the whole answer: the current revision is known and no minReadySeconds
        asks readiness to last.
        """
        spec = workload.get("spec") or {}
        kind = workload.get("kind")
        if spec.get("minReadySeconds") or spec.get("paused"):
            return False
        # The DaemonSet and StatefulSet controllers name the current revision only
        # once they have seen the spec.
        if kind != "Deployment" and not _generation_observed(workload):
            return False
        uid = _uid(workload)
        pods = [p for p in self.children("pods", uid) if _active(p)]
        if kind == "Deployment":
            current = self.current_replicaset(workload)
            if current is None:
                return False
            new, old = [], []
            for rs in self.children("replicasets", uid):
                active = [p for p in self.children("pods", _uid(rs)) if _active(p)]
                (new if rs is current else old).extend(active)
            # updatedReplicas, no old replicas left, availableReplicas: in pods.
            return len(new) >= spec.get("replicas", 1) and not old and all(map(pod_ready, new))
        if kind == "DaemonSet":
            revisions = self.children("controllerrevisions", uid)
            newest = max(revisions, key=lambda r: r.get("revision", 0), default=None)
            if newest is None:
                return False
            current = _revision_hash(newest)
            ready_nodes = {
                scheduled_on(p) for p in pods if _revision_hash(p) == current and pod_ready(p)
            }
            desired = (workload.get("status") or {}).get("desiredNumberScheduled", 0)
            return len(ready_nodes) >= desired
        if kind == "StatefulSet":
            status = workload.get("status") or {}
            strategy = spec.get("updateStrategy") or {}
            update = status.get("updateRevision")
            if strategy.get("type", "RollingUpdate") != "RollingUpdate" or not update:
                return False
            desired = spec.get("replicas", 1)
            updated = [p for p in pods if _revision_hash(p) == update]
            if sum(map(pod_ready, pods)) < desired:
                return False
            rolling = strategy.get("rollingUpdate")
            if rolling is not None:
                return len(updated) >= desired - (rolling.get("partition") or 0)
            return len(updated) == len(pods)
        return False

    def events_of(self, kind: str, name: str) -> list[Obj]:
        """The events about one object, oldest first."""
        if self._events is None:
            index: dict[tuple[str, str], list[Obj]] = {}
            for event in self.objects["events"].values():
                about = event.get("involvedObject") or {}
                index.setdefault((about.get("kind", ""), about.get("name", "")), []).append(event)
            for found in index.values():
                found.sort(key=event_time)
            self._events = index
        return self._events.get((kind, name), [])

    def neighbours(self) -> list[Obj]:
        """The namespace's pods that no workload controls: user servers, builds."""
        return [p for p in self.uncontrolled.values() if _active(p)]

    def owner_chain(self, pod: Obj) -> list[tuple[str, str]]:
        """(kind, name) of the pod's controller and, for a ReplicaSet, its Deployment."""
        chain: list[tuple[str, str]] = []
        owner = controller_of(pod)
        while owner is not None and len(chain) < 2:
            chain.append((owner["kind"], owner["name"]))
            parent = self.objects["replicasets"].get(owner.get("uid", ""))
            owner = controller_of(parent) if parent else None
        return chain


def _uid(obj: Obj) -> str:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("uid") or f"{metadata.get('namespace')}/{metadata.get('name')}")


def _template_without_hash(replicaset: Obj) -> Obj | None:
    template = (replicaset.get("spec") or {}).get("template")
    if template is None:
        return None
    metadata = dict(template.get("metadata") or {})
    labels = {k: v for k, v in (metadata.get("labels") or {}).items() if k != "pod-template-hash"}
    return {**template, "metadata": {**metadata, "labels": labels}}


def _revision_hash(obj: Obj) -> str | None:
    return (obj["metadata"].get("labels") or {}).get("controller-revision-hash")


def describe_event(event: Obj) -> str:
    """`12:00:03 Warning BackOff: Back-off restarting failed container (x4)`."""
    stamp = event_time(event)
    clock = stamp[11:19] if len(stamp) >= 19 else stamp
    count = (event.get("series") or {}).get("count") or event.get("count") or 1
    repeat = f" (x{count})" if count > 1 else ""
    return (
        f"{clock} {event.get('type', '')} {event.get('reason', '')}: "
        f"{(event.get('message') or '').strip()}{repeat}"
    )


# --- The outcome --------------------------------------------------------------------------


@dataclass
class WorkloadResult:
    """How one workload's rollout ended."""

    key: str
    result: str  # "ready", "failed", "not ready", "not waited"
    seconds: float | None
    detail: str


@dataclass
class RolloutReport:
    """Every workload's outcome, for the step's note and the per-object table."""

    namespace: str
    results: list[WorkloadResult]
    seconds: float

    def note(self) -> str:
        if not self.results:
            return f"no workloads in namespace {self.namespace}"
        ready = sum(r.result == "ready" for r in self.results)
        skipped = sum(r.result == "not waited" for r in self.results)
        text = f"{counted(ready, 'workload')} ready in {format_seconds(self.seconds)}"
        if skipped:
            text += f", {skipped} not waited on (OnDelete)"
        return text

    def table(self) -> str:
        """One row per workload: its result, its time to ready, what held it back."""
        rows = [("WORKLOAD", "RESULT", "TIME", "DETAIL")]
        rows += [
            (
                r.key,
                r.result,
                format_seconds(r.seconds) if r.seconds is not None else "-",
                r.detail,
            )
            for r in self.results
        ]
        return "\n".join(aligned(rows))


# --- The waiter ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Blocker:
    """A workload that will not roll out without a change, and why."""

    workload: Obj
    reason: str
    message: str
    problem: PodProblem | None = None
    fit: Fit | None = None  # Unschedulable: full, never, or a claim, and what to do


class RolloutWaiter:
    """Decides, from the namespace view, whether to go on waiting, succeed or fail.

    Time comes in as `now` (time.monotonic() seconds), so tests drive the
    grace periods without sleeping; `wall_offset` turns it into epoch seconds
    for the API's timestamps (the autoscaler's events and status).
    """

    def __init__(
        self,
        namespace: str,
        timeout: float,
        unschedulable_grace: float = UNSCHEDULABLE_GRACE,
        started: float | None = None,
        wall_offset: float | None = None,
    ) -> None:
        self.namespace = namespace
        self.timeout = timeout
        self.unschedulable_grace = unschedulable_grace
        self.view = NamespaceView()
        self.started = time.monotonic() if started is None else started
        self.wall_offset = time.time() - time.monotonic() if wall_offset is None else wall_offset
        self.ready_after: dict[str, float] = {}
        self.first_unschedulable: dict[str, float] = {}
        self.first_replica_failure: dict[str, float] = {}
        # What each waiting workload waits on beyond kubectl's words (a node, a claim).
        self.notes: dict[str, Note] = {}
        # pod uid -> (resourceVersion, facts read at, fit): a pod's fit changes with the
        # pod or the facts, not with every tick.
        self._fits: dict[str, tuple[str, float, Fit]] = {}

    def verdicts(self, now: float) -> dict[str, Verdict]:
        """Every workload's verdict; remembers when each was first seen rolled out."""
        verdicts = {}
        for workload in self.view.workloads():
            verdict = workload_verdict(workload)
            if verdict.state == WAITING and self.view.rolled_out_by_pods(workload):
                verdict = Verdict(
                    READY, verdict.desired, verdict.desired, "rolled out (its status catching up)"
                )
            verdicts[workload_key(workload)] = verdict
        for key, verdict in verdicts.items():
            if verdict.state == READY:
                self.ready_after.setdefault(key, now - self.started)
        return verdicts

    def blocker(self, verdicts: dict[str, Verdict], now: float) -> Blocker | None:
        """The first workload, by name, that will not roll out without a change."""
        terminating = self.view.pods_terminating()
        unschedulable_seen: set[str] = set()
        replica_failures: set[str] = set()
        found: Blocker | None = None
        self.notes = {}
        for workload in self.view.workloads():
            key = workload_key(workload)
            verdict = verdicts[key]
            if verdict.state in (READY, UNWAITABLE):
                continue
            if verdict.state == FAILED:
                found = found or Blocker(workload, PROGRESS_DEADLINE_EXCEEDED, verdict.message)
                continue
            if workload.get("kind") != "Deployment" and not _generation_observed(workload):
                # Until the controller has seen the new spec, the pods at hand are the old ones.
                continue
            replica_failure = condition(workload, "ReplicaFailure")
            if replica_failure and replica_failure.get("status") == "True":
                replica_failures.add(key)
                since = self.first_replica_failure.setdefault(key, now)
                if now - since >= REPLICA_FAILURE_GRACE:
                    message = replica_failure.get("message") or ""
                    found = found or Blocker(workload, "ReplicaFailure", message)
            pods = sorted(self.view.current_pods(workload), key=lambda p: p["metadata"]["name"])
            for pod in pods:
                problem = container_problem(pod)
                if problem:
                    found = found or Blocker(workload, problem.reason, problem.message, problem)
                    continue
                stuck = unschedulable(pod)
                if not stuck:
                    continue
                uid = _uid(pod)
                unschedulable_seen.add(uid)
                first = self.first_unschedulable.setdefault(uid, now)
                if self.view.facts is None:
                    continue  # the nodes are being read; the verdict waits for them
                decided = placement(
                    self._fit(pod, stuck.message),
                    autoscaler_word(self.view.events_of("Pod", pod["metadata"]["name"])),
                    autoscaler_status(self.view.facts.autoscaler_status),
                    waited=now - first,
                    # A pod that just went away may have freed the room this one needs.
                    waited_for_room=now - max(first, self.view.last_pod_gone),
                    room_coming=terminating,
                    grace=self.unschedulable_grace,
                    wall_now=now + self.wall_offset,
                )
                if decided.fail:
                    found = found or Blocker(
                        workload, UNSCHEDULABLE, stuck.message, stuck, decided.fit
                    )
                elif decided.note is not None:
                    self.notes.setdefault(key, decided.note)
        for uid in set(self.first_unschedulable) - unschedulable_seen:
            del self.first_unschedulable[uid]
        for uid in set(self._fits) - unschedulable_seen:
            del self._fits[uid]
        for key in set(self.first_replica_failure) - replica_failures:
            del self.first_replica_failure[key]
        return found

    def wants_facts(self, now: float) -> bool:
        """Whether to read the nodes, claims and autoscaler status (again) before deciding."""
        if not self.first_unschedulable:
            return False
        facts = self.view.facts
        return facts is None or now - facts.read_at >= FACTS_SECONDS

    def _fit(self, pod: Obj, message: str) -> Fit:
        assert self.view.facts is not None
        uid = _uid(pod)
        version = str(pod["metadata"].get("resourceVersion", ""))
        cached = self._fits.get(uid)
        if cached and cached[:2] == (version, self.view.facts.read_at):
            return cached[2]
        fit = classify(pod, message, self.view.facts, self.view.events_of, self.view.neighbours())
        self._fits[uid] = (version, self.view.facts.read_at, fit)
        return fit

    def results(
        self, verdicts: dict[str, Verdict], blocker: Blocker | None = None
    ) -> list[WorkloadResult]:
        """Per workload: ready and when, failed and why, or still waiting on what."""
        failed = workload_key(blocker.workload) if blocker else ""
        results = []
        for key, verdict in verdicts.items():
            if key == failed and blocker is not None:
                pod = f" (pod {blocker.problem.pod})" if blocker.problem else ""
                results.append(WorkloadResult(key, "failed", None, blocker.reason + pod))
            elif verdict.state == READY:
                results.append(WorkloadResult(key, "ready", self.ready_after.get(key), ""))
            elif verdict.state == UNWAITABLE:
                results.append(WorkloadResult(key, "not waited", None, verdict.message))
            else:
                detail = f"{verdict.ready}/{verdict.desired} ready: {verdict.message}"
                if key in self.notes:
                    detail += f"; {self.notes[key].text}"
                results.append(WorkloadResult(key, "not ready", None, detail))
        return results
