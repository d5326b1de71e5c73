"""Whether an unschedulable pod will ever find a node, and what the autoscaler says about it.

Pure rules over API objects shaped as the local cluster (Kubernetes v1.36) and
the cluster autoscaler return them; the real-cluster side is in test_rollout.py.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tasks.steps.rollout_fit import (
    AUTOSCALER_SECONDS,
    FULL,
    NEVER,
    VOLUME,
    AutoscalerWord,
    ClusterFacts,
    Fit,
    Placement,
    autoscaler_status,
    autoscaler_word,
    classify,
    epoch,
    format_quantity,
    node_rejection,
    parse_quantity,
    parse_scheduler_message,
    placement,
    pod_requests,
)

# Messages as kube-scheduler v1.36 writes them.
TOO_MANY_PODS = (
    "0/2 nodes are available: 2 Too many pods. no new claims to deallocate, preemption: 0/2 "
    "nodes are available: 2 No preemption victims found for incoming pod."
)
INSUFFICIENT_CPU = (
    "0/2 nodes are available: 2 Insufficient cpu. no new claims to deallocate, preemption: 0/2 "
    "nodes are available: 2 Preemption is not helpful for scheduling."
)
POOL_FULL = (
    "0/3 nodes are available: 1 Too many pods, 2 node(s) didn't match Pod's node "
    "affinity/selector. no new claims to deallocate, preemption: 0/3 nodes are available: 1 No "
    "preemption victims found for incoming pod, 2 Preemption is not helpful for scheduling."
)
SELECTOR = (
    "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector. no new "
    "claims to deallocate, preemption: 0/2 nodes are available: 2 Preemption is not helpful "
    "for scheduling."
)
UNBOUND = "0/2 nodes are available: pod has unbound immediate PersistentVolumeClaims. not found"
NO_CLAIM = '0/2 nodes are available: persistentvolumeclaim "data" not found. not found'


def node(
    name: str,
    *,
    cpu: str = "32",
    memory: str = "256Gi",
    pods: str = "110",
    labels: dict[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
        "spec": {"taints": taints} if taints else {},
        "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": pods}},
    }


def pod(
    name: str = "static-files-1",
    *,
    cpu: str | None = None,
    selector: dict[str, str] | None = None,
    tolerations: list[dict[str, str]] | None = None,
    claims: tuple[str, ...] = (),
    node_name: str = "",
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "example.org/x:1"}
    if cpu:
        container["resources"] = {"requests": {"cpu": cpu, "memory": "32Mi"}}
    spec: dict[str, Any] = {"containers": [container]}
    if selector:
        spec["nodeSelector"] = selector
    if tolerations:
        spec["tolerations"] = tolerations
    if claims:
        spec["volumes"] = [
            {"name": f"v{i}", "persistentVolumeClaim": {"claimName": c}}
            for i, c in enumerate(claims)
        ]
    if node_name:
        spec["nodeName"] = node_name
    return {"metadata": {"name": name, "uid": f"uid-{name}", "labels": labels or {}}, "spec": spec}


def claim(name: str, storage_class: str | None, phase: str = "Pending") -> dict[str, Any]:
    spec = {} if storage_class is None else {"storageClassName": storage_class}
    return {"metadata": {"name": name}, "spec": spec, "status": {"phase": phase}}


def storage_class(name: str, provisioner: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "provisioner": provisioner}


TWO_NODES = (node("node-000000"), node("node-000001"))


def facts(**kwargs: Any) -> ClusterFacts:
    return ClusterFacts(read_at=0.0, **{"nodes": TWO_NODES, **kwargs})


def no_events(kind: str, name: str) -> list[dict[str, Any]]:
    return []


# --- Reading what the API says ----------------------------------------------------------------


def test_quantities_read_and_written_as_kubectl_does() -> None:
    assert parse_quantity("500m") == 0.5
    assert parse_quantity("16Gi") == 16 * 2**30
    assert parse_quantity("1e3") == 1000
    assert parse_quantity("2E") == 2e18
    assert format_quantity("cpu", 64) == "64"
    assert format_quantity("cpu", 0.25) == "250m"
    assert format_quantity("memory", 1.5 * 2**30) == "1.5Gi"
    with pytest.raises(ValueError):
        parse_quantity("lots")


def test_requests_add_containers_and_sidecars_against_the_largest_init_container() -> None:
    spec = {
        "initContainers": [
            {"name": "fetch", "resources": {"requests": {"cpu": "3"}}},
            {"name": "proxy", "restartPolicy": "Always", "resources": {"requests": {"cpu": "1"}}},
        ],
        "containers": [
            {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}},
            {"name": "b", "resources": {"limits": {"cpu": "1"}}},  # a limit alone is the request
        ],
        "overhead": {"memory": "100Mi"},
    }
    assert pod_requests({"spec": spec}) == {
        "cpu": 3.0,  # the init container's 3 beats 0.5 + 1 + 1 running
        "memory": 2**30 + 100 * 2**20,
        "pods": 1.0,
    }


def test_the_schedulers_message_is_taken_apart_per_node_and_per_pod() -> None:
    said = parse_scheduler_message(POOL_FULL)
    assert said.nodes == 3
    assert said.reasons == (
        (1, "Too many pods"),
        (2, "node(s) didn't match Pod's node affinity/selector"),
    )
    assert said.room_reasons == ["1 Too many pods"]
    assert not said.only_permanent
    assert parse_scheduler_message(SELECTOR).only_permanent
    claimed = parse_scheduler_message(UNBOUND)
    assert claimed.reasons == () and claimed.pod_reasons == (
        "pod has unbound immediate PersistentVolumeClaims",
    )
    taint = parse_scheduler_message(
        "0/1 nodes are available: 1 node(s) had untolerated taint {a: b, c}."
    )
    assert taint.reasons == ((1, "node(s) had untolerated taint {a: b, c}"),)


def test_a_node_rejects_for_good_on_taints_selectors_affinity_and_size_only() -> None:
    requests = {"cpu": 2.0, "pods": 1.0}
    gpu = node(
        "gpu-0",
        cpu="8",
        labels={"pool": "gpu"},
        taints=[{"key": "pool", "value": "gpu", "effect": "NoSchedule"}],
    )
    assert node_rejection(pod(), gpu, requests).text == "pool=gpu:NoSchedule"
    tolerating = pod(tolerations=[{"key": "pool", "operator": "Exists"}])
    assert node_rejection(tolerating, gpu, requests) is None
    # In the scheduler's order: the taint first, then the labels, then the size.
    assert node_rejection(pod(selector={"pool": "user"}), gpu, requests).kind == "taint"
    plain = node("plain-0", cpu="8", labels={"pool": "gpu"})
    assert node_rejection(pod(selector={"pool": "user"}), plain, requests).kind == "selector"
    assert node_rejection(pod(), plain, {"cpu": 16.0}).text == "cpu"
    # Not ready, cordoned, under pressure: passing states, never a reason.
    passing = node("n", taints=[{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}])
    assert node_rejection(pod(), passing, requests) is None
    affine = pod()
    affine["spec"]["affinity"] = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["user"]}]},
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n"]}]},
                ]
            }
        }
    }
    assert node_rejection(affine, plain, requests).kind == "affinity"
    assert node_rejection(affine, node("n"), requests) is None  # the second term matches


# --- Full right now, or never ----------------------------------------------------------------


def test_nodes_full_of_pods_are_full_right_now_and_say_what_fills_them() -> None:
    users = [
        pod(f"jupyter-{i}", node_name="node-000000", labels={"component": "singleuser-server"})
        for i in range(3)
    ]
    fit = classify(pod(), TOO_MANY_PODS, facts(), no_events, users)
    assert fit.kind == FULL
    assert fit.summary == "no node has room for it right now (2 Too many pods)"
    assert "not misconfigured" in fit.fix
    assert "toleration" not in fit.fix
    assert any("3 component=singleuser-server" in line for line in fit.details)


def test_a_full_pool_beside_nodes_the_pod_does_not_select_is_full_not_misconfigured() -> None:
    pool = node("user-0", pods="4", labels={"pool": "user"})
    fit = classify(
        pod(selector={"pool": "user"}), POOL_FULL, facts(nodes=(*TWO_NODES, pool)), no_events
    )
    assert fit.kind == FULL
    assert fit.room == "1 Too many pods"
    assert "user-0" in fit.details[0]


def test_a_request_larger_than_every_node_can_never_fit_naming_the_request_and_the_largest() -> (
    None
):
    nodes = (node("small", cpu="16"), node("large", cpu="32"), node("medium", cpu="24"))
    fit = classify(pod(cpu="64"), INSUFFICIENT_CPU, facts(nodes=nodes), no_events)
    assert fit.kind == NEVER
    assert fit.summary == (
        "it can never fit: it requests cpu 64, more than any node has (the largest, large, has 32)"
    )
    assert "Lower the pod's resource requests (cpu 64)" in fit.fix


def test_selectors_and_taints_no_node_satisfies_can_never_fit_and_say_which_node_lacks_what() -> (
    None
):
    tainted = node(
        "gpu-0",
        labels={"pool": "user"},
        taints=[{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
    )
    fit = classify(
        pod(selector={"pool": "user"}), SELECTOR, facts(nodes=(*TWO_NODES, tainted)), no_events
    )
    assert fit.kind == NEVER
    assert (
        "node-000000, node-000001: labels of its node selector missing (pool=user)" in fit.summary
    )
    assert "gpu-0: taint nvidia.com/gpu=present:NoSchedule not tolerated" in fit.summary
    assert "nodeSelector" in fit.fix and "toleration" in fit.fix


def test_a_cluster_scaled_to_no_node_at_all_waits_for_one() -> None:
    fit = classify(pod(), "0/0 nodes are available.", facts(nodes=()), no_events)
    assert fit.kind == FULL
    assert fit.summary == "the cluster has no node at all"


def test_without_the_nodes_the_schedulers_message_decides() -> None:
    unread = ClusterFacts(read_at=0.0, unreadable=("/api/v1/nodes (HTTP 403)",))
    assert classify(pod(), TOO_MANY_PODS, unread, no_events).kind == FULL
    never = classify(pod(), SELECTOR, unread, no_events)
    assert never.kind == NEVER
    assert "judged from the scheduler's message" in never.details[0]


def test_nodes_the_scheduler_rules_out_for_a_volumes_zone_are_never_despite_fitting_otherwise() -> (
    None
):
    conflict = "0/2 nodes are available: 2 node(s) had volume node affinity conflict."
    assert (
        classify(
            pod(claims=("data",)),
            conflict,
            facts(claims=(claim("data", "ssd", "Bound"),)),
            no_events,
        ).kind
        == NEVER
    )


# --- Claims -------------------------------------------------------------------------------------


def test_a_claim_whose_storage_class_does_not_exist_names_the_claim_and_the_class() -> None:
    known = facts(
        claims=(claim("data", "fast-ssd"),), storage_classes=(storage_class("standard", "x"),)
    )
    events = {
        ("PersistentVolumeClaim", "data"): [
            {
                "reason": "ProvisioningFailed",
                "message": 'storageclass.storage.k8s.io "fast-ssd" not found',
            }
        ]
    }
    fit = classify(pod(claims=("data",)), UNBOUND, known, lambda k, n: events.get((k, n), []))
    assert fit.kind == NEVER and not fit.autoscalable
    assert fit.summary.startswith(
        "its claim data asks for StorageClass fast-ssd, which does not exist, so nothing "
        "provisions the claim"
    )
    assert "Create StorageClass fast-ssd" in fit.fix


def test_a_claim_whose_provisioner_never_acts_is_a_volume_on_its_way_naming_the_provisioner() -> (
    None
):
    known = facts(
        claims=(claim("data", "nobody"),),
        storage_classes=(storage_class("nobody", "example.org/nobody-runs-this"),),
    )
    fit = classify(pod(claims=("data",)), UNBOUND, known, no_events)
    assert fit.kind == VOLUME
    assert "its claim data (StorageClass nobody) is not bound" in fit.summary
    assert "provisioner example.org/nobody-runs-this" in fit.summary
    assert "example.org/nobody-runs-this runs" in fit.fix


@pytest.mark.parametrize(
    ("claims", "classes", "message", "says"),
    [
        ((), (), NO_CLAIM, "its claim data does not exist"),
        (
            (claim("data", None),),
            (),
            UNBOUND,
            "names no StorageClass and the cluster has no default",
        ),
        ((claim("data", ""),), (), UNBOUND, 'asks for an existing volume (storageClassName: "")'),
        (
            (claim("data", "local"),),
            (storage_class("local", "kubernetes.io/no-provisioner"),),
            UNBOUND,
            "which provisions nothing (kubernetes.io/no-provisioner)",
        ),
        ((claim("data", "x", phase="Lost"),), (), UNBOUND, "its claim data lost its volume"),
    ],
)
def test_claims_nothing_will_ever_bind_can_never_fit(
    claims: tuple[dict[str, Any], ...], classes: tuple[dict[str, Any], ...], message: str, says: str
) -> None:
    fit = classify(
        pod(claims=("data",)), message, facts(claims=claims, storage_classes=classes), no_events
    )
    assert fit.kind == NEVER
    assert says in fit.summary


def test_a_claim_without_a_class_waits_for_the_default_one_when_there_is_one() -> None:
    default = storage_class("standard", "example.org/disk")
    default["metadata"]["annotations"] = {"storageclass.kubernetes.io/is-default-class": "true"}
    known = facts(claims=(claim("data", None),), storage_classes=(default,))
    assert classify(pod(claims=("data",)), UNBOUND, known, no_events).kind == VOLUME


def test_a_claim_waiting_for_its_pods_node_is_not_what_holds_the_pod() -> None:
    later = {
        **storage_class("later", "example.org/disk"),
        "volumeBindingMode": "WaitForFirstConsumer",
    }
    known = facts(claims=(claim("data", "later"),), storage_classes=(later,))
    assert classify(pod(claims=("data",)), TOO_MANY_PODS, known, no_events).kind == FULL
    local = {
        **storage_class("local", "kubernetes.io/no-provisioner"),
        "volumeBindingMode": "WaitForFirstConsumer",
    }
    known = facts(claims=(claim("data", "local"),), storage_classes=(local,))
    message = "0/2 nodes are available: 2 node(s) didn't find available persistent volumes to bind."
    fit = classify(pod(claims=("data",)), message, known, no_events)
    assert fit.kind == NEVER and "provisions nothing" in fit.summary


# --- The cluster autoscaler ---------------------------------------------------------------------

NOW = 1_800_000_000.0  # epoch seconds


def stamp(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event(reason: str, message: str, at: float) -> dict[str, Any]:
    return {"reason": reason, "message": message, "lastTimestamp": stamp(at), "metadata": {}}


def status_map(
    scale_up: str = "NoActivity", updated: float = NOW, groups: list[Any] | None = None
) -> dict[str, Any]:
    """The status ConfigMap in the autoscaler's YAML form, its times in Go's format."""
    text = (
        f'time: "{_go(updated)}"\nautoscalerStatus: "Running"\nclusterWide:\n'
        f'  scaleUp:\n    status: "{scale_up}"\nnodeGroups:\n'
    )
    for name, status, code in groups or []:
        text += f'  - name: "{name}"\n    scaleUp:\n      status: "{status}"\n'
        if code:
            text += f'      backoffInfo:\n        errorCode: "{code}"\n'
            text += '        errorMessage: "no quota"\n'
    return {
        "metadata": {
            "annotations": {"cluster-autoscaler.kubernetes.io/last-updated": _go(updated)}
        },
        "data": {"status": text},
    }


def _go(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S.%f") + "123 +0000 UTC"


def test_the_autoscalers_latest_word_on_the_pod_counts_and_names_its_node_groups() -> None:
    word = autoscaler_word(
        [
            event("FailedScheduling", "0/2 nodes are available", NOW - 50),
            event(
                "NotTriggerScaleUp",
                "pod didn't trigger scale-up: 1 in backoff after failed scale-up",
                NOW - 40,
            ),
            event(
                "TriggeredScaleUp",
                "pod triggered scale-up: [{https://www.googleapis.com/compute/v1/projects/p/zones/"
                "z/instanceGroups/gke-user-pool 3->4 (max: 10)}]",
                NOW - 30,
            ),
        ]
    )
    assert word is not None and word.reason == "TriggeredScaleUp"
    assert word.groups == ["gke-user-pool (3->4 nodes)"]
    assert word.at == NOW - 30
    assert autoscaler_word([event("Scheduled", "ok", NOW)]) is None


def test_the_status_configmap_in_its_yaml_and_its_older_text_form() -> None:
    status = autoscaler_status(
        status_map(
            "InProgress",
            groups=[("pool-a", "InProgress", ""), ("pool-b", "Backoff", "QUOTA_EXCEEDED")],
        )
    )
    assert status is not None
    assert status.scale_up == "InProgress"
    assert status.groups_scaling == ("pool-a",)
    assert status.backoffs == ("pool-b: QUOTA_EXCEEDED: no quota",)
    assert status.updated == pytest.approx(NOW, abs=1e-3)
    assert status.fresh(NOW + 60) and not status.fresh(NOW + 600)
    old = {
        "metadata": {"annotations": {"cluster-autoscaler.kubernetes.io/last-updated": _go(NOW)}},
        "data": {
            "status": "Cluster-autoscaler status at 2021-01-27 21:57:30 +0000 UTC:\n"
            "Cluster-wide:\n  Health:      Healthy (ready=5 unready=0)\n"
            "  ScaleUp:     InProgress (ready=5 registered=5)\n"
        },
    }
    assert autoscaler_status(old).scale_up == "InProgress"
    assert autoscaler_status(None) is None
    assert epoch("2026-11-29 05:34:06.123456789 +0000 UTC") == epoch("2026-11-29T05:34:06.123456Z")


# --- Wait or fail ---------------------------------------------------------------------------------

FULL_FIT = Fit(
    FULL, "no node has room for it right now (2 Too many pods)", "add nodes", (), "2 Too many pods"
)
NEVER_FIT = Fit(NEVER, "it can never fit: it requests cpu 64", "Lower the requests.")


def decide(
    fit: Fit,
    word: AutoscalerWord | None = None,
    status: dict[str, Any] | None = None,
    waited: float = 0.0,
    room_coming: bool = False,
) -> Placement:
    return placement(
        fit,
        word,
        autoscaler_status(status),
        waited=waited,
        waited_for_room=waited,
        room_coming=room_coming,
        grace=20.0,
        wall_now=NOW,
    )


def test_full_nodes_without_an_autoscaler_fail_after_the_grace_saying_none_adds_nodes() -> None:
    waiting = decide(FULL_FIT, waited=10)
    assert not waiting.fail
    assert waiting.note.text == "no room right now (2 Too many pods); waiting 10.0s more for room"
    failed = decide(FULL_FIT, waited=20)
    assert failed.fail
    assert any("none found" in line for line in failed.fit.details)


def test_a_triggered_scale_up_is_waited_for_past_the_grace_and_shown_with_its_age() -> None:
    word = autoscaler_word(
        [event("TriggeredScaleUp", "pod triggered scale-up: [{pool-1 1->2 (max: 3)}]", NOW - 40)]
    )
    for fit in (FULL_FIT, NEVER_FIT):  # a bigger pool's node fits what no present node does
        decided = decide(fit, word, waited=500)
        assert not decided.fail
        assert decided.note.kind == "scale-up"
        assert (
            decided.note.text
            == "waiting for a node: scale-up of pool-1 (1->2 nodes) triggered 40.0s ago"
        )


@pytest.mark.parametrize(
    ("reason", "message", "says", "fix"),
    [
        (
            "NotTriggerScaleUp",
            "pod didn't trigger scale-up: 1 max node group size reached",
            "will not add a node",
            "maximum size",
        ),
        (
            "NotTriggerScaleUp",
            "pod didn't trigger scale-up: 1 in backoff after failed scale-up",
            "will not add a node",
            "quota",
        ),
        (
            "FailedScaleUp",
            "Node scale up in zones us-central1-b associated with this pod failed: "
            "GCE quota exceeded. Pod is at risk of not being scheduled.",
            "could not add a node",
            "quota",
        ),
    ],
)
def test_the_autoscaler_refusing_or_failing_fails_at_once_with_its_reason(
    reason: str, message: str, says: str, fix: str
) -> None:
    decided = decide(FULL_FIT, autoscaler_word([event(reason, message, NOW - 1)]), status_map())
    assert decided.fail
    assert (
        decided.fit.summary
        == f"no room right now (2 Too many pods) and the cluster autoscaler {says}: {message}"
    )
    assert fix in decided.fit.fix


def test_a_pod_that_can_never_fit_fails_at_once_unless_an_autoscaler_may_have_a_bigger_pool() -> (
    None
):
    assert decide(NEVER_FIT).fail
    running = status_map()
    asked = decide(NEVER_FIT, status=running, waited=5)
    assert not asked.fail and asked.note.kind == "autoscaler"
    assert decide(NEVER_FIT, status=running, waited=AUTOSCALER_SECONDS).fail


def test_a_running_autoscaler_gets_its_reaction_time_and_a_scale_up_under_way_is_waited_for() -> (
    None
):
    running = status_map()
    assert not decide(FULL_FIT, status=running, waited=30).fail
    assert decide(FULL_FIT, status=running, waited=AUTOSCALER_SECONDS).fail
    under_way = status_map("InProgress", groups=[("pool-1", "InProgress", "")])
    decided = decide(FULL_FIT, status=under_way, waited=500)
    assert not decided.fail
    assert decided.note.text == "waiting for a node: a scale-up of pool-1 is under way"


def test_an_autoscaler_whose_status_is_stale_counts_as_none_and_is_named() -> None:
    stale = status_map(updated=NOW - 3600)
    failed = decide(FULL_FIT, status=stale, waited=20)
    assert failed.fail
    assert (
        "cluster autoscaler: its status was last updated 60m00s ago; it seems not to run"
        in failed.fit.details
    )


def test_room_a_leaving_pod_of_the_release_frees_is_waited_for() -> None:
    assert not decide(FULL_FIT, waited=60, room_coming=True).fail


def test_a_volume_on_its_way_waits_the_grace_and_no_autoscaler_word_changes_that() -> None:
    volume = Fit(
        VOLUME, "its claim data (StorageClass nobody) is not bound", "check", autoscalable=False
    )
    triggered = autoscaler_word([event("TriggeredScaleUp", "pod triggered scale-up: []", NOW)])
    assert not decide(volume, triggered, waited=5).fail
    assert decide(volume, triggered, waited=20).fail
    never = Fit(NEVER, "its claim data asks for StorageClass x", "create it", autoscalable=False)
    assert decide(never, status=status_map()).fail  # no node, added or not, binds a claim
