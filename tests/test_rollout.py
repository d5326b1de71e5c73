"""The rollout waiter: kubectl's rollout rules, fast failure diagnoses, one deadline.

The first half judges API objects shaped as the local cluster returns them,
without a cluster. The second half (marked `cluster`) runs the waiter against
the local cluster, whose KWOK stages make pods crash-loop, fail to pull their
image, miss their Secret, or find no node, on the label `kwok.binder.test/fail`.
"""

from __future__ import annotations

import io
import os
import queue
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from invoke import Context

from sandbox import clusters, nodes
from tasks.adapters import go_builds
from tasks.cli.steps import wait_rollout
from tasks.core.errors import StepFailure
from tasks.core.runner import Runner
from tasks.steps.rollout import (
    Progress,
    WatchStream,
    compact_details,
    kube_proxy,
    seconds,
    wait_for_rollout,
)
from tasks.steps.rollout_fit import ClusterFacts, Note
from tasks.steps.rollout_status import (
    FAILED,
    READY,
    UNWAITABLE,
    WAITING,
    Change,
    RolloutReport,
    RolloutWaiter,
    Verdict,
    WorkloadResult,
    container_problem,
    daemonset_verdict,
    deployment_verdict,
    statefulset_verdict,
)
from tests.fakes.cluster_autoscaler import FakeClusterAutoscaler
from tests.fixtures.cluster import LocalCluster

FAIL_LABEL = "kwok.binder.test/fail"

# --- Objects as the API returns them ---------------------------------------------------------


def template(image: str) -> dict[str, Any]:
    return {"metadata": {"labels": {"app": "hub"}}, "spec": {"containers": [{"image": image}]}}


def deployment(
    name: str = "hub",
    *,
    uid: str = "d-1",
    image: str = "hub:1",
    replicas: int = 1,
    generation: int = 1,
    observed: int = 1,
    updated: int = 1,
    total: int = 1,
    available: int = 1,
    conditions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "kind": "Deployment",
        "metadata": {"name": name, "uid": uid, "generation": generation},
        "spec": {
            "replicas": replicas,
            "strategy": {"type": "RollingUpdate"},
            "template": template(image),
        },
        "status": {
            "observedGeneration": observed,
            "replicas": total,
            "updatedReplicas": updated,
            "availableReplicas": available,
            "readyReplicas": available,
            "conditions": conditions or [],
        },
    }


def replicaset(name: str, *, uid: str, image: str, owner_uid: str = "d-1") -> dict[str, Any]:
    made = template(image)
    # The deployment controller labels what it makes with the template's hash.
    made["metadata"]["labels"]["pod-template-hash"] = uid
    return {
        "kind": "ReplicaSet",
        "metadata": {
            "name": name,
            "uid": uid,
            "ownerReferences": [
                {"kind": "Deployment", "name": "hub", "uid": owner_uid, "controller": True}
            ],
        },
        "spec": {"template": made},
    }


def pod(
    name: str,
    *,
    owner: tuple[str, str, str],
    waiting: str | None = None,
    unschedulable: str | None = None,
    terminating: bool = False,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    kind, owner_name, owner_uid = owner
    metadata: dict[str, Any] = {
        "name": name,
        "uid": f"uid-{name}",
        "labels": labels or {},
        "ownerReferences": [
            {"kind": kind, "name": owner_name, "uid": owner_uid, "controller": True}
        ],
    }
    if terminating:
        metadata["deletionTimestamp"] = "2026-11-27T00:07:52Z"
    status: dict[str, Any] = {"phase": "Pending", "conditions": []}
    if unschedulable:
        status["conditions"].append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": unschedulable,
            }
        )
    if waiting:
        status["phase"] = "Running"
        status["containerStatuses"] = [
            {
                "name": "main",
                "ready": False,
                "restartCount": 3,
                "state": {"waiting": {"reason": waiting, "message": f"{waiting} message"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
            }
        ]
    return {"kind": "Pod", "metadata": metadata, "spec": {}, "status": status}


# The scheduler's words (Kubernetes v1.36) for nodes that are full, and for nodes none of
# which the pod selects.
TOO_MANY_PODS = (
    "0/2 nodes are available: 2 Too many pods. no new claims to deallocate, preemption: 0/2 "
    "nodes are available: 2 No preemption victims found for incoming pod."
)
NO_NODE_SELECTED = (
    "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector. no new "
    "claims to deallocate, preemption: 0/2 nodes are available: 2 Preemption is not helpful "
    "for scheduling."
)
# What wait-rollout reads about the cluster once a pod finds no node: two of the local
# cluster's nodes, no autoscaler.
TWO_NODES = ClusterFacts(
    read_at=0.0,
    nodes=tuple(
        {
            "metadata": {"name": f"node-00000{i}", "labels": {}},
            "spec": {},
            "status": {"allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"}},
        }
        for i in range(2)
    ),
    storage_classes=(),
    claims=(),
)
# Epoch seconds at the waiter's clock's zero, for the API's timestamps.
EPOCH = 1_800_000_000.0


def waiter_with(
    objects: dict[str, list[dict[str, Any]]],
    started: float = 0.0,
    facts: ClusterFacts | None = TWO_NODES,
) -> RolloutWaiter:
    waiter = RolloutWaiter(
        "ns", timeout=600, unschedulable_grace=20, started=started, wall_offset=EPOCH
    )
    waiter.view.facts = facts
    for resource in ("deployments", "daemonsets", "statefulsets", "replicasets"):
        waiter.view.apply(Change(resource, "SYNC", objects.get(resource, [])), started)
    for resource in ("controllerrevisions", "pods", "events"):
        waiter.view.apply(Change(resource, "SYNC", objects.get(resource, [])), started)
    return waiter


# --- kubectl's rollout rules -------------------------------------------------------------------


def test_deployment_waits_until_its_spec_update_is_observed() -> None:
    verdict = deployment_verdict(deployment(generation=2, observed=1))
    assert verdict.state == WAITING
    assert "observed" in verdict.message


def test_deployment_waits_for_new_replicas_then_old_ones_to_go_then_availability() -> None:
    assert deployment_verdict(deployment(replicas=3, updated=2, total=3)).state == WAITING
    leftover = deployment_verdict(deployment(replicas=2, updated=2, total=3, available=2))
    assert leftover.state == WAITING
    assert "old replicas" in leftover.message
    assert deployment_verdict(deployment(replicas=2, updated=2, total=2, available=1)).state == (
        WAITING
    )


def test_deployment_is_rolled_out_when_every_replica_is_new_and_available() -> None:
    verdict = deployment_verdict(deployment(replicas=2, updated=2, total=2, available=2))
    assert verdict == Verdict(READY, 2, 2, "rolled out")


def test_progress_deadline_exceeded_is_a_failure() -> None:
    stuck = deployment(
        available=0,
        conditions=[
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": 'ReplicaSet "hub-1" has timed out progressing.',
            }
        ],
    )
    verdict = deployment_verdict(stuck)
    assert verdict.state == FAILED
    assert "timed out progressing" in verdict.message


def test_daemonset_rules_and_ondelete_cannot_be_waited_on() -> None:
    base = {
        "kind": "DaemonSet",
        "metadata": {"name": "proxy", "generation": 1},
        "spec": {"updateStrategy": {"type": "RollingUpdate"}},
        "status": {
            "observedGeneration": 1,
            "desiredNumberScheduled": 2,
            "updatedNumberScheduled": 2,
            "numberAvailable": 1,
        },
    }
    assert daemonset_verdict(base).state == WAITING
    base["status"]["numberAvailable"] = 2
    assert daemonset_verdict(base).state == READY
    base["spec"]["updateStrategy"] = {"type": "OnDelete"}
    verdict = daemonset_verdict(base)
    assert verdict.state == UNWAITABLE
    assert "OnDelete" in verdict.message


def test_statefulset_follows_kubectls_partition_rule() -> None:
    sts = {
        "kind": "StatefulSet",
        "metadata": {"name": "db", "generation": 2},
        "spec": {
            "replicas": 3,
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}},
        },
        "status": {"observedGeneration": 2, "readyReplicas": 3, "updatedReplicas": 1},
    }
    assert statefulset_verdict(sts).state == WAITING
    sts["status"]["updatedReplicas"] = 2
    assert statefulset_verdict(sts).state == READY
    sts["status"]["observedGeneration"] = 1
    assert statefulset_verdict(sts).state == WAITING
    sts["spec"]["updateStrategy"] = {"type": "OnDelete"}
    assert statefulset_verdict(sts).state == UNWAITABLE


def test_statefulset_without_rolling_update_settings_waits_for_the_revisions_to_match() -> None:
    sts = {
        "kind": "StatefulSet",
        "metadata": {"name": "db", "generation": 1},
        "spec": {"replicas": 1, "updateStrategy": {"type": "RollingUpdate"}},
        "status": {
            "observedGeneration": 1,
            "readyReplicas": 1,
            "currentRevision": "db-1",
            "updateRevision": "db-2",
        },
    }
    assert statefulset_verdict(sts).state == WAITING
    sts["status"]["currentRevision"] = "db-2"
    assert statefulset_verdict(sts).state == READY


# --- Pods that will not get ready ------------------------------------------------------------


@pytest.mark.parametrize(
    "reason",
    ["CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError"],
)
def test_a_container_stuck_for_good_is_a_problem(reason: str) -> None:
    problem = container_problem(
        pod("hub-1-a", owner=("ReplicaSet", "hub-1", "rs-1"), waiting=reason)
    )
    assert problem is not None
    assert (problem.pod, problem.container, problem.reason) == ("hub-1-a", "main", reason)


def test_a_terminating_or_merely_creating_pod_is_no_problem() -> None:
    owner = ("ReplicaSet", "hub-1", "rs-1")
    assert (
        container_problem(pod("a", owner=owner, waiting="CrashLoopBackOff", terminating=True))
        is None
    )
    assert container_problem(pod("b", owner=owner, waiting="ContainerCreating")) is None


def test_only_pods_of_the_current_replicaset_can_fail_a_deployment() -> None:
    objects = {
        "deployments": [deployment(image="hub:2", available=0, updated=1, total=2)],
        "replicasets": [
            replicaset("hub-old", uid="rs-old", image="hub:1"),
            replicaset("hub-new", uid="rs-new", image="hub:2"),
        ],
        "pods": [
            pod("hub-old-a", owner=("ReplicaSet", "hub-old", "rs-old"), waiting="CrashLoopBackOff")
        ],
    }
    waiter = waiter_with(objects)
    assert waiter.blocker(waiter.verdicts(1.0), 1.0) is None
    objects["pods"].append(
        pod("hub-new-a", owner=("ReplicaSet", "hub-new", "rs-new"), waiting="ImagePullBackOff")
    )
    waiter = waiter_with(objects)
    blocker = waiter.blocker(waiter.verdicts(1.0), 1.0)
    assert blocker is not None
    assert blocker.problem is not None
    assert (blocker.reason, blocker.problem.pod) == ("ImagePullBackOff", "hub-new-a")


def _ready(obj: dict[str, Any]) -> dict[str, Any]:
    obj["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    return obj


def test_ready_pods_roll_a_deployment_out_before_its_status_catches_up() -> None:
    lagging = deployment(image="hub:2", replicas=2, updated=1, total=2, available=1)
    new = ("ReplicaSet", "hub-new", "rs-new")
    objects = {
        "deployments": [lagging],
        "replicasets": [
            replicaset("hub-old", uid="rs-old", image="hub:1"),
            replicaset("hub-new", uid="rs-new", image="hub:2"),
        ],
        "pods": [
            _ready(pod("hub-new-a", owner=new)),
            _ready(pod("hub-new-b", owner=new)),
            _ready(pod("hub-old-a", owner=("ReplicaSet", "hub-old", "rs-old"), terminating=True)),
        ],
    }
    assert waiter_with(objects).verdicts(1.0)["deployment/hub"].state == READY
    # An old replica still serving means the rollout is not over, whatever the new ones say.
    objects["pods"][2] = _ready(pod("hub-old-a", owner=("ReplicaSet", "hub-old", "rs-old")))
    assert waiter_with(objects).verdicts(1.0)["deployment/hub"].state == WAITING
    # Nor is it while the ReplicaSet of a newer template is still to be made.
    objects["pods"].pop()
    objects["deployments"] = [deployment(image="hub:3", generation=3, observed=2, available=1)]
    assert waiter_with(objects).verdicts(1.0)["deployment/hub"].state == WAITING


def test_the_current_replicaset_is_known_by_its_template_before_the_status_says_so() -> None:
    # The controller has made the new ReplicaSet and its pod is ready, but its status
    # update (observedGeneration) is still queued behind its rate limit.
    busy = deployment(image="hub:2", generation=2, observed=1, available=1)
    objects = {
        "deployments": [busy],
        "replicasets": [
            replicaset("hub-old", uid="rs-old", image="hub:1"),
            replicaset("hub-new", uid="rs-new", image="hub:2"),
        ],
        "pods": [_ready(pod("hub-new-a", owner=("ReplicaSet", "hub-new", "rs-new")))],
    }
    waiter = waiter_with(objects)
    assert waiter.view.current_replicaset(busy)["metadata"]["name"] == "hub-new"
    assert waiter.verdicts(1.0)["deployment/hub"].state == READY


def _unschedulable_objects(
    *extra_pods: dict[str, Any], message: str = TOO_MANY_PODS
) -> dict[str, list[dict[str, Any]]]:
    return {
        "deployments": [deployment(available=0)],
        "replicasets": [replicaset("hub-1", uid="rs-1", image="hub:1")],
        "pods": [
            pod("hub-1-a", owner=("ReplicaSet", "hub-1", "rs-1"), unschedulable=message),
            *extra_pods,
        ],
    }


def _autoscaler_event(reason: str, message: str, at: float) -> dict[str, Any]:
    stamp = datetime.fromtimestamp(EPOCH + at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "metadata": {"uid": f"e-{reason}-{at}", "creationTimestamp": stamp},
        "involvedObject": {"kind": "Pod", "name": "hub-1-a"},
        "reason": reason,
        "message": message,
        "type": "Normal",
        "source": {"component": "cluster-autoscaler"},
        "lastTimestamp": stamp,
    }


def test_a_pod_finding_the_nodes_full_fails_only_after_the_grace_period() -> None:
    waiter = waiter_with(_unschedulable_objects())
    assert waiter.blocker(waiter.verdicts(0.0), 0.0) is None
    assert waiter.blocker(waiter.verdicts(19.0), 19.0) is None
    assert waiter.notes["deployment/hub"].text == (
        "no room right now (2 Too many pods); waiting 1.0s more for room"
    )
    blocker = waiter.blocker(waiter.verdicts(20.5), 20.5)
    assert blocker is not None and blocker.fit is not None
    assert blocker.reason == "Unschedulable"
    assert blocker.fit.summary == "no node has room for it right now (2 Too many pods)"


def test_a_pod_no_node_can_ever_take_fails_at_once() -> None:
    waiter = waiter_with(_unschedulable_objects(message=NO_NODE_SELECTED))
    blocker = waiter.blocker(waiter.verdicts(0.0), 0.0)
    assert blocker is not None and blocker.fit is not None
    assert blocker.fit.kind == "never"


def test_the_verdict_on_an_unschedulable_pod_waits_until_the_nodes_are_read() -> None:
    waiter = waiter_with(_unschedulable_objects(message=NO_NODE_SELECTED), facts=None)
    assert not waiter.wants_facts(0.0)  # nothing is unschedulable until the waiter looks
    assert waiter.blocker(waiter.verdicts(0.0), 0.0) is None
    assert waiter.wants_facts(0.0)
    waiter.view.facts = TWO_NODES
    assert waiter.blocker(waiter.verdicts(0.1), 0.1) is not None
    assert not waiter.wants_facts(1.0)
    assert waiter.wants_facts(5.0)  # read again every few seconds while the pod waits


def test_an_unschedulable_pod_waits_while_another_pod_terminates() -> None:
    leaving = pod("old-a", owner=("ReplicaSet", "other", "rs-9"), terminating=True)
    waiter = waiter_with(_unschedulable_objects(leaving))
    waiter.blocker(waiter.verdicts(0.0), 0.0)
    assert waiter.blocker(waiter.verdicts(60.0), 60.0) is None


def test_user_pods_coming_and_going_do_not_hold_off_an_unschedulable_verdict() -> None:
    user = pod("jupyter-someone", owner=("ReplicaSet", "x", "x"), terminating=True)
    user["metadata"]["ownerReferences"] = []
    waiter = waiter_with(_unschedulable_objects(user))
    waiter.blocker(waiter.verdicts(0.0), 0.0)
    waiter.view.apply(Change("pods", "DELETED", [user]), 10.0)
    assert waiter.blocker(waiter.verdicts(25.0), 25.0) is not None


def test_user_pods_changing_call_for_no_new_look_at_the_workloads() -> None:
    waiter = waiter_with(_unschedulable_objects())
    index = waiter.view.children("pods", "rs-1")
    user = pod("jupyter-someone", owner=("ReplicaSet", "x", "x"))
    user["metadata"]["ownerReferences"] = []
    assert not waiter.view.apply(Change("pods", "ADDED", [user]), 1.0)
    assert not waiter.view.apply(Change("pods", "DELETED", [user]), 2.0)
    assert waiter.view.children("pods", "rs-1") is index  # not rebuilt
    assert waiter.view.last_pod_gone == 0.0
    # Adopted by a ReplicaSet, it is a workload's pod from then on; orphaned, no longer.
    adopted = pod("jupyter-someone", owner=("ReplicaSet", "hub-1", "rs-1"))
    assert waiter.view.apply(Change("pods", "MODIFIED", [adopted]), 3.0)
    assert len(waiter.view.children("pods", "rs-1")) == 2
    assert waiter.view.apply(Change("pods", "MODIFIED", [user]), 4.0)
    assert len(waiter.view.children("pods", "rs-1")) == 1
    assert waiter.view.neighbours() == [user]


def test_a_pod_the_autoscaler_adds_a_node_for_is_waited_on_and_said_so() -> None:
    waiter = waiter_with(_unschedulable_objects())
    waiter.blocker(waiter.verdicts(0.0), 0.0)
    triggered = _autoscaler_event(
        "TriggeredScaleUp", "pod triggered scale-up: [{pool-1 1->2 (max: 3)}]", 2.0
    )
    waiter.view.apply(Change("events", "ADDED", [triggered]), 2.0)
    assert waiter.blocker(waiter.verdicts(60.0), 60.0) is None
    assert waiter.notes["deployment/hub"].text == (
        "waiting for a node: scale-up of pool-1 (1->2 nodes) triggered 58.0s ago"
    )
    assert "triggered 58.0s ago" in waiter.results(waiter.verdicts(60.0))[0].detail


def test_a_pod_the_autoscaler_will_not_add_a_node_for_fails_at_once_with_its_reason() -> None:
    waiter = waiter_with(_unschedulable_objects())
    refused = _autoscaler_event(
        "NotTriggerScaleUp", "pod didn't trigger scale-up: 1 max node group size reached", 1.0
    )
    waiter.view.apply(Change("events", "ADDED", [refused]), 1.0)
    blocker = waiter.blocker(waiter.verdicts(1.0), 1.0)
    assert blocker is not None and blocker.fit is not None
    assert blocker.fit.summary.endswith(
        "the cluster autoscaler will not add a node: pod didn't trigger scale-up: 1 max node "
        "group size reached"
    )


# --- What the operator sees ------------------------------------------------------------------


def test_progress_outside_a_terminal_prints_only_changes() -> None:
    out = io.StringIO()
    progress = Progress(out, deadline_seconds=600)
    waiting = {"deployment/hub": Verdict(WAITING, 0, 1, "0 of 1 updated available")}
    progress.update(waiting, 1.0)
    progress.update(waiting, 2.0)
    progress.update({"deployment/hub": Verdict(READY, 1, 1, "rolled out")}, 3.0)
    lines = out.getvalue().splitlines()
    assert lines == [
        "deployment/hub: 0/1 ready (0 of 1 updated available)",
        "deployment/hub: 1/1 ready, rolled out after 3.0s",
    ]


def test_progress_says_what_a_workload_waits_on_once_and_in_the_heartbeat() -> None:
    out = io.StringIO()
    progress = Progress(out, deadline_seconds=600)
    waiting = {"deployment/hub": Verdict(WAITING, 2, 3, "2 of 3 updated available")}
    room = Note("room", "no room right now (2 Too many pods); waiting 1m00s more for room")
    node = Note(
        "scale-up", "waiting for a node: scale-up of pool-1 (1->2 nodes) triggered 1.0s ago"
    )
    later = Note(
        "scale-up", "waiting for a node: scale-up of pool-1 (1->2 nodes) triggered 40.0s ago"
    )
    progress.update(waiting, 1.0, {"deployment/hub": room})
    progress.update(waiting, 2.0, {"deployment/hub": node})
    progress.update(waiting, 3.0, {"deployment/hub": node})
    progress.update(waiting, 41.0, {"deployment/hub": later})
    assert out.getvalue().splitlines() == [
        f"deployment/hub: 2/3 ready (2 of 3 updated available); {room.text}",
        f"deployment/hub: 2/3 ready (2 of 3 updated available); {node.text}",
        f"still waiting after 41.0s: deployment/hub ({later.text})",
    ]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_redraws_in_place() -> None:
    out = _Terminal()
    progress = Progress(out, deadline_seconds=600)
    verdicts = {
        "deployment/hub": Verdict(WAITING, 0, 1, "0 of 1 updated available"),
        "deployment/proxy": Verdict(READY, 1, 1, "rolled out"),
    }
    progress.update(verdicts, 1.0)
    progress.update(verdicts, 2.0)
    first, second = out.getvalue().split("\n", 2)[:2], out.getvalue()
    assert first[0].startswith("rollout: 1/2 workloads ready")
    # The second drawing moves the cursor up over the first's two lines and clears them.
    assert "\x1b[2F\x1b[J" in second


def test_the_details_fit_the_failure_screen() -> None:
    events = {
        ("Deployment", "hub"): [],
        ("Pod", "hub-1-a"): [
            {
                "metadata": {"creationTimestamp": f"2026-11-27T00:00:0{i}Z"},
                "involvedObject": {"kind": "Pod", "name": "hub-1-a"},
                "type": "Warning",
                "reason": "BackOff",
                "message": "Back-off restarting failed container",
            }
            for i in range(5)
        ],
    }
    logs = ("last log lines of container hub (previous run):", [f"line {i}" for i in range(20)])
    details = compact_details(["message: boom", "last exit: exit code 1 (Error)"], events, logs)
    lines = details.splitlines()
    assert len(lines) <= 12
    assert lines[0] == "message: boom"
    assert lines[-1] == "  line 19"


def test_the_note_counts_ready_and_unwaitable_workloads() -> None:
    report = RolloutReport(
        "ns",
        [
            WorkloadResult("deployment/hub", "ready", 1.5, ""),
            WorkloadResult("daemonset/pull", "not waited", None, "OnDelete"),
        ],
        3.2,
    )
    assert report.note() == "1 workload ready in 3.2s, 1 not waited on (OnDelete)"
    assert RolloutReport("ns", [], 0.1).note() == "no workloads in namespace ns"


def test_dry_run_prints_the_proxy_and_the_watches_and_touches_nothing() -> None:
    out = io.StringIO()
    runner = Runner(Context(), dry_run=True, env={"KUBECONFIG": "/nonexistent/kubeconfig"})
    report = wait_for_rollout(runner, "staging", timeout=600, kubectl="kubectl", stream=out)
    text = out.getvalue()
    assert "[dry-run] KUBECONFIG=/nonexistent/kubeconfig kubectl proxy --port=0" in text
    assert "GET /apis/apps/v1/namespaces/staging/deployments" in text
    assert "GET /api/v1/namespaces/staging/pods" in text
    assert report.results == []


def test_the_task_in_dry_run_names_the_environments_namespace(
    capsys: pytest.CaptureFixture[str],
) -> None:
    wait_rollout(Context(), env="local-staging", dry_run=True)
    out = capsys.readouterr().out
    assert "kubectl proxy --port=0" in out
    # local-staging's releases, each in its own namespace, in their order.
    traefik = out.index("GET /apis/apps/v1/namespaces/traefik/deployments")
    site = out.index("GET /apis/apps/v1/namespaces/binder-staging/deployments")
    assert out.index("wait-rollout traefik: dry-run") < site
    assert traefik < out.index("wait-rollout binder: dry-run")


def test_a_flag_that_is_not_seconds_is_refused() -> None:
    assert seconds("15", "--timeout") == 15.0
    assert seconds(None, "--timeout") is None
    with pytest.raises(StepFailure, match="--timeout must be a positive number of seconds"):
        seconds("ten", "--timeout")


# --- On the local cluster ----------------------------------------------------------------------


def _labels(app: str, fail: str | None) -> dict[str, str]:
    return {"app": app, **({FAIL_LABEL: fail} if fail else {})}


def deployment_manifest(
    name: str,
    *,
    replicas: int = 1,
    fail: str | None = None,
    progress_deadline: int | None = None,
    pool: str | None = None,
    cpu: str | None = None,
    claim: str | None = None,
) -> dict[str, Any]:
    """`pool`: run only on that node pool's nodes; `cpu`: request that much; `claim`: mount
    that PersistentVolumeClaim."""
    container: dict[str, Any] = {"name": name, "image": f"example.org/{name}:1"}
    pod_spec: dict[str, Any] = {
        "containers": [container],
        **(nodes.placed_on(pool) if pool else {}),
    }
    if cpu:
        container["resources"] = {"requests": {"cpu": cpu}}
    if claim:
        pod_spec["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]
    spec: dict[str, Any] = {
        "replicas": replicas,
        "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": _labels(name, fail)}, "spec": pod_spec},
    }
    if progress_deadline is not None:
        spec["progressDeadlineSeconds"] = progress_deadline
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": spec}


def user_pod(
    name: str,
    *,
    component: str = "singleuser-server",
    pool: str | None = None,
    fail: str | None = None,
) -> dict[str, Any]:
    """A pod as a BinderHub's JupyterHub starts one for a user (or as BinderHub starts a build):
    labelled like z2jh's, controlled by no workload."""
    labels = {"app": "jupyterhub", "component": component, "release": "binder"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {**labels, **({FAIL_LABEL: fail} if fail else {})}},
        "spec": {
            "containers": [{"name": "notebook", "image": "example.org/user-image:1"}],
            **(nodes.placed_on(pool) if pool else {}),
        },
    }


def daemonset_manifest(
    name: str, *, strategy: str = "RollingUpdate", fail: str | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "updateStrategy": {"type": strategy},
            "template": {
                "metadata": {"labels": _labels(name, fail)},
                "spec": {"containers": [{"name": name, "image": f"example.org/{name}:1"}]},
            },
        },
    }


def statefulset_manifest(
    name: str, *, replicas: int = 2, fail: str | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": _labels(name, fail)},
                "spec": {"containers": [{"name": name, "image": f"example.org/{name}:1"}]},
            },
        },
    }


class Namespace:
    """A fresh namespace on the local cluster, and the waiter run against it."""

    def __init__(self, cluster: LocalCluster, name: str, folder: Path) -> None:
        self.cluster = cluster
        self.name = name
        self.folder = folder
        self.output = ""

    def apply(self, *manifests: dict[str, Any]) -> None:
        path = self.folder / f"{uuid.uuid4().hex}.yaml"
        path.write_text(yaml.safe_dump_all(manifests))
        self.cluster.kubectl("apply", "-n", self.name, "-f", str(path))

    def get_pods(self, app: str, *args: str) -> str:
        return self.cluster.kubectl("get", "pods", "-n", self.name, "-l", f"app={app}", *args)

    def pod_names(self, app: str, *, pending: bool = False) -> list[str]:
        phase = ["--field-selector=status.phase=Pending"] if pending else []
        found = self.get_pods(app, *phase, "-o", "name")
        return [line.removeprefix("pod/") for line in found.split()]

    def wait_until(self, what: str, check: Callable[[], bool], seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while not check():
            assert time.monotonic() < deadline, f"namespace {self.name}: never {what}"
            time.sleep(0.5)

    def bound(self, app: str) -> int:
        """How many pods of `app` the scheduler has put on a node."""
        names = self.get_pods(app, "-o", 'jsonpath={range .items[*]}{.spec.nodeName}{"\\n"}{end}')
        return sum(1 for line in names.splitlines() if line.strip())

    def wait(self, *, timeout: float = 60, grace: float = 20) -> RolloutReport:
        out = io.StringIO()
        runner = Runner(Context(), env={"KUBECONFIG": str(self.cluster.kubeconfig)})
        try:
            return wait_for_rollout(
                runner,
                self.name,
                timeout=timeout,
                unschedulable_grace=grace,
                kubectl=go_builds.binary("kubectl"),
                stream=out,
            )
        finally:
            self.output = out.getvalue()

    def failure(self, *, timeout: float = 120, grace: float = 20) -> tuple[StepFailure, float]:
        started = time.monotonic()
        with pytest.raises(StepFailure) as caught:
            self.wait(timeout=timeout, grace=grace)
        return caught.value, time.monotonic() - started


@pytest.fixture
def namespace(local_cluster: LocalCluster, tmp_path: Path) -> Iterator[Namespace]:
    name = f"rollout-test-{uuid.uuid4().hex[:8]}"
    local_cluster.kubectl("create", "namespace", name)
    try:
        yield Namespace(local_cluster, name, tmp_path)
    finally:
        local_cluster.kubectl("delete", "namespace", name, "--wait=false")


# Well under the default ten-minute deadline; the waiter's targets are seconds.
FAST = 30


@pytest.mark.cluster
def test_deployments_daemonsets_and_a_statefulset_roll_out(namespace: Namespace) -> None:
    namespace.apply(
        deployment_manifest("hub", replicas=2),
        deployment_manifest("binder"),
        daemonset_manifest("image-puller"),
        statefulset_manifest("db"),
    )
    report = namespace.wait()
    assert {r.key: r.result for r in report.results} == {
        "daemonset/image-puller": "ready",
        "deployment/binder": "ready",
        "deployment/hub": "ready",
        "statefulset/db": "ready",
    }
    assert report.note().startswith("4 workloads ready in ")
    assert "deployment/hub: 2/2 ready, rolled out" in namespace.output
    assert "WORKLOAD" in namespace.output


@pytest.mark.cluster
def test_an_empty_namespace_passes_and_says_so(namespace: Namespace) -> None:
    report = namespace.wait()
    assert report.results == []
    assert "has no Deployment, DaemonSet or StatefulSet" in namespace.output


@pytest.mark.cluster
def test_a_namespace_that_does_not_exist_is_named(local_cluster: LocalCluster) -> None:
    runner = Runner(Context(), env={"KUBECONFIG": str(local_cluster.kubeconfig)})
    with pytest.raises(StepFailure, match="Namespace no-such-namespace does not exist"):
        wait_for_rollout(
            runner,
            "no-such-namespace",
            timeout=10,
            kubectl=go_builds.binary("kubectl"),
            stream=io.StringIO(),
        )


@pytest.mark.cluster
def test_a_crash_loop_is_reported_within_seconds_with_pod_container_and_logs(
    namespace: Namespace,
) -> None:
    namespace.apply(deployment_manifest("hub", fail="crashloop"), deployment_manifest("proxy"))
    failure, seconds = namespace.failure()
    (pod_name,) = namespace.pod_names("hub")
    assert seconds < FAST
    assert failure.why.startswith(
        f"deployment/hub: pod {pod_name}, container hub: CrashLoopBackOff"
    )
    assert "a bug or a configuration error in the version just deployed" in failure.fix
    assert "kubectl logs --previous" in failure.fix
    assert "last exit: exit code 1 (Error)" in failure.details
    assert "the cluster has no logs for this container" in failure.details
    assert "deployment/proxy  ready" in namespace.output


@pytest.mark.cluster
@pytest.mark.parametrize("kind", ["daemonset", "statefulset"])
def test_a_crash_in_a_daemonset_or_statefulset_is_reported(namespace: Namespace, kind: str) -> None:
    make = daemonset_manifest if kind == "daemonset" else statefulset_manifest
    namespace.apply(make("proxy", fail="crashloop"))
    failure, seconds = namespace.failure()
    assert seconds < FAST
    assert failure.why.startswith(f"{kind}/proxy: pod proxy-")
    assert "container proxy: CrashLoopBackOff" in failure.why


@pytest.mark.cluster
def test_an_image_that_cannot_be_pulled_is_reported(namespace: Namespace) -> None:
    namespace.apply(deployment_manifest("binder", fail="imagepull"))
    failure, seconds = namespace.failure()
    (pod_name,) = namespace.pod_names("binder")
    assert seconds < FAST
    assert f"pod {pod_name}, container binder:" in failure.why
    assert "ErrImagePull" in failure.why or "ImagePullBackOff" in failure.why
    assert "example.org/binder:1" in failure.details
    # The container's message says it at once; the kubelet's event may still be on its way.
    assert "failed to pull image" in failure.details.lower()
    assert "the container never started" in failure.details


@pytest.mark.cluster
def test_a_missing_secret_is_reported_as_a_config_error(namespace: Namespace) -> None:
    namespace.apply(deployment_manifest("hub", fail="configerror"))
    failure, seconds = namespace.failure()
    assert seconds < FAST
    assert "container hub: CreateContainerConfigError" in failure.why
    assert "Secret or ConfigMap" in failure.fix
    assert "configmap or secret" in failure.details


@pytest.mark.cluster
def test_a_pod_no_node_selects_fails_at_once_naming_the_selector(namespace: Namespace) -> None:
    # The label's admission policy gives the pod a node selector no node carries.
    namespace.apply(deployment_manifest("user-placeholder", fail="unschedulable"))
    failure, seconds = namespace.failure(grace=60)
    (pod_name,) = namespace.pod_names("user-placeholder")
    assert seconds < FAST  # at once, not after the 60 s grace
    assert failure.why.startswith(
        f"deployment/user-placeholder: pod {pod_name}: Unschedulable: it can never fit: "
    )
    assert (
        "labels of its node selector missing (kwok.binder.test/unschedulable=true)" in failure.why
    )
    assert "nodeSelector" in failure.fix
    assert "didn't match Pod's node affinity/selector" in failure.details
    assert "the pod was never scheduled, so no container started" in failure.details


# A pool's node takes this many pods; its taint keeps every other pod off it.
POOL_PODS = 4


@pytest.fixture
def pool(local_cluster: LocalCluster) -> Iterator[str]:
    """A node pool of one small tainted node, for pods sent there to fill up."""
    name = f"pool-{uuid.uuid4().hex[:6]}"
    nodes.add(local_cluster.name, nodes.node(f"{name}-0", pool=name, pods=POOL_PODS, tainted=True))
    try:
        yield name
    finally:
        nodes.remove(local_cluster.name, name)


@pytest.mark.cluster
def test_a_deployment_past_its_progress_deadline_fails(namespace: Namespace, pool: str) -> None:
    # One replica more than the pool holds; the long grace leaves the verdict to the Deployment.
    namespace.apply(
        deployment_manifest("hub", replicas=POOL_PODS + 1, pool=pool, progress_deadline=3)
    )
    failure, seconds = namespace.failure(grace=600)
    (pending,) = namespace.pod_names("hub", pending=True)
    assert seconds < FAST
    assert failure.why.startswith("deployment/hub: ProgressDeadlineExceeded")
    assert f"pod {pending} is unschedulable" in failure.why
    assert "has timed out progressing" in failure.details


@pytest.mark.cluster
def test_the_overall_deadline_names_what_was_not_ready(namespace: Namespace, pool: str) -> None:
    namespace.apply(
        deployment_manifest("hub", replicas=POOL_PODS + 1, pool=pool), deployment_manifest("proxy")
    )
    failure, seconds = namespace.failure(timeout=4, grace=600)
    (pending,) = namespace.pod_names("hub", pending=True)
    assert 4 <= seconds < FAST
    assert failure.why == "Not rolled out within 4.0s: deployment/hub."
    assert "timeouts.rollout" in failure.fix
    assert f"deployment/hub: {POOL_PODS}/{POOL_PODS + 1} ready" in failure.details
    assert "no room right now (1 Too many pods)" in failure.details
    assert f"pod {pending}: unschedulable" in failure.details
    assert "deployment/proxy  ready" in namespace.output


@pytest.mark.cluster
def test_a_pod_whose_containers_never_start_holds_the_rollout_until_the_deadline(
    namespace: Namespace,
) -> None:
    namespace.apply(deployment_manifest("hub", fail="notready"))
    failure, seconds = namespace.failure(timeout=4)
    (pod_name,) = namespace.pod_names("hub")
    assert 4 <= seconds < FAST
    assert failure.why == "Not rolled out within 4.0s: deployment/hub."
    assert f"pod {pod_name}: Pending, scheduled, containers not created yet" in failure.details


@pytest.mark.cluster
def test_an_ondelete_daemonset_is_reported_not_waited_on(namespace: Namespace) -> None:
    namespace.apply(
        daemonset_manifest("image-puller", strategy="OnDelete"), deployment_manifest("hub")
    )
    report = namespace.wait()
    results = {r.key: r for r in report.results}
    assert results["daemonset/image-puller"].result == "not waited"
    assert "OnDelete" in results["daemonset/image-puller"].detail
    assert results["deployment/hub"].result == "ready"
    assert report.note().endswith("1 not waited on (OnDelete)")


@pytest.mark.cluster
def test_a_watch_from_an_expired_version_asks_for_a_fresh_list() -> None:
    # A restarted API server's watch cache begins at the restart, so a watch from version 1
    # is answered 410 Gone (a fresh cluster's cache still holds version 1 and replays it).
    # The restart is done on a cluster of the test's own, which no other test shares.
    name = f"binder-watch-{uuid.uuid4().hex[:6]}"
    config = clusters.up(name, nodes=1)
    try:
        os.kill(clusters.cluster_pids(name)["kube-apiserver"], signal.SIGTERM)
        while clusters.is_up(name):
            time.sleep(0.2)
        clusters.up(name, nodes=1)
        runner = Runner(Context(), env={"KUBECONFIG": str(config)})
        changes: queue.Queue[Change] = queue.Queue()
        with kube_proxy(runner, go_builds.binary("kubectl"), "default") as base:
            stream = WatchStream(base, "pods", "default", changes, threading.Event())
            started = time.monotonic()
            stream.follow("1")
            assert time.monotonic() - started < 5
            version = stream.list_all()
    finally:
        clusters.down(name)
    assert changes.get_nowait().type == "SYNC"
    assert version.isdigit()


@pytest.mark.cluster
def test_the_proxy_and_the_watch_threads_end_with_the_wait(namespace: Namespace) -> None:
    namespace.apply(deployment_manifest("hub"))
    namespace.wait()
    assert not [t for t in threading.enumerate() if t.name.startswith("watch-") and t.is_alive()]
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
                children.append((entry / "cmdline").read_bytes().replace(b"\0", b" "))
    assert not [c for c in children if b" proxy " in c]


# --- A busy BinderHub namespace: full nodes, the autoscaler, claims, failing user pods ---------


def fill_the_pool_then_add_a_replica(namespace: Namespace, pool: str) -> None:
    """The deploy of the issue, in small: static-files at 2 replicas, users fill the rest of the
    nodes (one more waits for room), then the deploy raises static-files to 3."""
    namespace.apply(deployment_manifest("static-files", replicas=2, pool=pool))
    namespace.wait()
    free = POOL_PODS - 2
    namespace.apply(*(user_pod(f"jupyter-user-{i}", pool=pool) for i in range(free + 1)))
    namespace.wait_until("filled the pool", lambda: namespace.bound("jupyterhub") == free)
    namespace.apply(deployment_manifest("static-files", replicas=3, pool=pool))


def autoscaler(namespace: Namespace, pool: str, **behaviour: Any) -> FakeClusterAutoscaler:
    """The stand-in autoscaler for the pool: nodes like its first, at most 3."""
    return FakeClusterAutoscaler(
        namespace.cluster.kubeconfig,
        namespaces=[namespace.name],
        group=pool,
        template=nodes.node(f"{pool}-template", pool=pool, pods=POOL_PODS, tainted=True),
        max_size=3,
        **behaviour,
    )


@pytest.mark.cluster
def test_full_nodes_without_an_autoscaler_fail_after_the_grace_saying_the_nodes_are_full(
    namespace: Namespace, pool: str
) -> None:
    fill_the_pool_then_add_a_replica(namespace, pool)
    failure, seconds = namespace.failure(grace=3)
    assert 3 <= seconds < FAST
    assert failure.why.startswith("deployment/static-files: pod static-files-")
    assert failure.why.endswith(
        ": Unschedulable: no node has room for it right now (1 Too many pods)"
    )
    assert "The nodes are full, not misconfigured" in failure.fix
    assert "toleration" not in failure.fix
    assert f"nodes that could take it once room frees up: 1 node ({pool}-0)" in failure.details
    assert "2 component=singleuser-server" in failure.details
    assert "cluster autoscaler: none found" in failure.details
    assert "no room right now (1 Too many pods); waiting" in namespace.output


@pytest.mark.cluster
def test_full_nodes_roll_out_once_the_autoscaler_adds_a_node_and_the_wait_is_shown(
    namespace: Namespace, pool: str
) -> None:
    fill_the_pool_then_add_a_replica(namespace, pool)
    with autoscaler(namespace, pool, provision_seconds=3) as scaling:
        report = namespace.wait(timeout=120, grace=3)
    assert not scaling.errors
    assert {r.key: r.result for r in report.results} == {"deployment/static-files": "ready"}
    assert f"waiting for a node: scale-up of {pool} (1->2 nodes) triggered" in namespace.output
    assert [e["reason"] for e in scaling.events if e["involvedObject"]["kind"] == "Pod"].count(
        "TriggeredScaleUp"
    ) == 2  # the new replica, and the user waiting for room


@pytest.mark.cluster
def test_an_autoscaler_that_will_not_add_a_node_fails_the_rollout_at_once_with_its_reason(
    namespace: Namespace, pool: str
) -> None:
    fill_the_pool_then_add_a_replica(namespace, pool)
    with autoscaler(namespace, pool, refuse="1 max node group size reached"):
        failure, seconds = namespace.failure(grace=60)
    assert seconds < FAST  # at once, not after the grace
    assert failure.why.endswith(
        "Unschedulable: no room right now (1 Too many pods) and the cluster autoscaler will "
        "not add a node: pod didn't trigger scale-up: 1 max node group size reached"
    )
    assert "The node pools are at their maximum size" in failure.fix


@pytest.mark.cluster
def test_a_pod_requesting_more_cpu_than_any_node_has_fails_at_once_naming_both(
    namespace: Namespace,
) -> None:
    namespace.apply(deployment_manifest("hub", cpu="64"))
    failure, seconds = namespace.failure(grace=60)
    assert seconds < FAST
    assert "Unschedulable: it can never fit: it requests cpu 64, more than any node has" in (
        failure.why
    )
    assert re.search(r"\(the largest, node-\d+, has 32\)$", failure.why)
    assert "Lower the pod's resource requests (cpu 64)" in failure.fix


def claim_manifest(name: str, storage_class: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {
            "storageClassName": storage_class,
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }


@pytest.mark.cluster
def test_a_claim_whose_storage_class_does_not_exist_fails_at_once_naming_claim_and_class(
    namespace: Namespace,
) -> None:
    missing = f"fast-ssd-{uuid.uuid4().hex[:6]}"
    namespace.apply(claim_manifest("hub-db", missing), deployment_manifest("hub", claim="hub-db"))
    failure, seconds = namespace.failure(grace=60)
    assert seconds < FAST
    assert (
        f"Unschedulable: its claim hub-db asks for StorageClass {missing}, which does not exist, "
        "so nothing provisions the claim" in failure.why
    )
    assert f"Create StorageClass {missing}" in failure.fix
    assert "unbound immediate PersistentVolumeClaims" in failure.details


@pytest.mark.cluster
def test_a_claim_nothing_provisions_fails_after_the_grace_naming_the_provisioner(
    namespace: Namespace, local_cluster: LocalCluster, tmp_path: Path
) -> None:
    name = f"nobody-{uuid.uuid4().hex[:6]}"
    provisioner = f"example.org/{name}"
    storage_class = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name},
        "provisioner": provisioner,
    }
    path = tmp_path / "class.yaml"
    path.write_text(yaml.safe_dump(storage_class))
    local_cluster.kubectl("apply", "-f", str(path))
    try:
        namespace.apply(claim_manifest("hub-db", name), deployment_manifest("hub", claim="hub-db"))
        failure, seconds = namespace.failure(grace=3)
    finally:
        local_cluster.kubectl("delete", "storageclass", name)
    assert 3 <= seconds < FAST
    assert f"its claim hub-db (StorageClass {name}) is not bound" in failure.why
    assert f"provisioner {provisioner} did not" in failure.why
    assert f"Check that the provisioner {provisioner} runs" in failure.fix
    assert f"its claim hub-db (StorageClass {name}) is not bound" in namespace.output


@pytest.mark.cluster
def test_user_servers_crashing_and_builds_failing_to_pull_do_not_fail_the_deploy(
    namespace: Namespace,
) -> None:
    namespace.apply(
        user_pod("jupyter-crashing", fail="crashloop"),
        user_pod("build-missing-image", component="binderhub-build", fail="imagepull"),
        user_pod("jupyter-no-room", fail="unschedulable"),
    )
    namespace.wait_until(
        "showed the user pods' failures",
        lambda: (
            "CrashLoopBackOff" in namespace.cluster.kubectl("get", "pods", "-n", namespace.name)
        ),
    )
    namespace.apply(deployment_manifest("hub"), deployment_manifest("binder", replicas=2))
    report = namespace.wait()
    assert {r.key: r.result for r in report.results} == {
        "deployment/binder": "ready",
        "deployment/hub": "ready",
    }
