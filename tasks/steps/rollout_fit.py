"""Why a pod finds no node, and whether it ever will.

Pure logic over the objects the Kubernetes API returns, like
`tasks/steps/rollout_status.py`, so every rule is tested without a cluster. When the
scheduler marks a pod of the release Unschedulable, wait-rollout must tell
whether the nodes that could run it are **full** right now (room comes back when
pods leave or a cluster autoscaler adds a node), whether no node like the
present ones can **never** take it (too small, unmatched selector or affinity,
untolerated taints, a claim nothing binds), or whether a **volume** is still
being provisioned. `placement` weighs that with what the cluster autoscaler says
(its events on the pod, its status ConfigMap) and the clock: go on waiting, or
fail and say why and what to do.

Where the deploy account may not read the nodes, the verdict rests on the
scheduler's message alone.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import yaml

from tasks.core.report import abridged, counted, format_seconds

Obj = dict[str, Any]

FULL = "full"
NEVER = "never"
VOLUME = "volume"

# The autoscaler answers within seconds on small clusters and within a minute on
# big ones (its FAQ: "No more than 60 sec latency on big clusters"): a pod it has
# not spoken about yet gets that long when an autoscaler is known to run.
AUTOSCALER_SECONDS = 60.0
# Its FAQ: the status ConfigMap is rewritten every loop (about 10 s); one not
# updated for 3 minutes belongs to an autoscaler that is not running.
AUTOSCALER_STALE_SECONDS = 180.0
AUTOSCALER_NAMESPACE = "kube-system"
AUTOSCALER_CONFIGMAP = "cluster-autoscaler-status"
AUTOSCALER_UPDATED = "cluster-autoscaler.kubernetes.io/last-updated"
TRIGGERED = "TriggeredScaleUp"
NOT_TRIGGERED = "NotTriggerScaleUp"
FAILED_SCALE_UP = "FailedScaleUp"
AUTOSCALER_REASONS = (TRIGGERED, NOT_TRIGGERED, FAILED_SCALE_UP)

# Taints a node carries while it is starting, unwell, cordoned or being removed:
# they go away by themselves, so they never make a pod "never fit".
PASSING_TAINTS = (
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
    "node.kubernetes.io/unschedulable",
    "node.kubernetes.io/memory-pressure",
    "node.kubernetes.io/disk-pressure",
    "node.kubernetes.io/pid-pressure",
    "node.kubernetes.io/network-unavailable",
    "node.cloudprovider.kubernetes.io/uninitialized",
    "ToBeDeletedByClusterAutoscaler",
)
NO_PROVISIONER = "kubernetes.io/no-provisioner"
DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"

# The scheduler's per-node reasons that say "not now" rather than "not here".
_ROOM_REASONS = (
    "Too many pods",
    "Insufficient ",
    "didn't have free ports",
    "were unschedulable",
    "didn't match pod anti-affinity rules",
    "didn't match pod affinity rules",
    "didn't match pod topology spread constraints",
    "had untolerated taint {node.kubernetes.io/",
)
_CLAIM_MESSAGES = (
    "unbound immediate PersistentVolumeClaims",
    "persistentvolumeclaim ",
    "persistent volumes to bind",
    "volume node affinity conflict",
)


# --- Quantities ------------------------------------------------------------------------------

# The suffixes: binary (Ki = 2**10 ... Ei = 2**60) and decimal (n = 1e-9 ... E = 1e18).
_SCALE = {
    "": 1.0,
    **{f"{s}i": 2 ** (10 * i) for i, s in enumerate("KMGTPE", start=1)},
    **{s: 1e3**i for i, s in enumerate("num", start=-3)},
    **{s: 1e3**i for i, s in enumerate("kMGTPE", start=1)},
}
_QUANTITY = re.compile(
    r"([+-]?(?:\d+\.?\d*|\.\d+))(?:[eE]([+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]))?"
)


def parse_quantity(text: object) -> float:
    """A Kubernetes quantity ("500m", "16Gi", "1e3") as a number of base units."""
    found = _QUANTITY.fullmatch(str(text).strip())
    if not found:
        raise ValueError(f"not a quantity: {text!r}")
    number, exponent, suffix = found.groups()
    value = float(number)
    if exponent:
        return value * 10 ** int(exponent)
    return value * _SCALE[suffix or ""]


def format_quantity(resource: str, value: float) -> str:
    """How `kubectl describe` would write it: cpu in cores or millicores, bytes in Ki..Ti."""
    if resource == "cpu":
        return f"{value:g}" if value >= 1 else f"{round(value * 1000)}m"
    if resource in ("memory", "ephemeral-storage") or resource.startswith("hugepages-"):
        for unit in ("Ti", "Gi", "Mi", "Ki"):
            if value >= _SCALE[unit]:
                return f"{value / _SCALE[unit]:.4g}{unit}"
    return f"{value:g}"


def pod_requests(pod: Obj) -> dict[str, float]:
    """What the scheduler reserves for the pod: containers and sidecars, or the largest init
    container if that is more, plus the runtime's overhead; and one pod slot."""
    spec = pod.get("spec") or {}
    running: Counter[str] = Counter()
    init_peak: dict[str, float] = {}
    for container in spec.get("initContainers") or ():
        requests = _requests(container)
        if container.get("restartPolicy") == "Always":  # a sidecar runs beside the app
            running.update(requests)
        else:
            for resource, value in requests.items():
                init_peak[resource] = max(init_peak.get(resource, 0.0), value)
    for container in spec.get("containers") or ():
        running.update(_requests(container))
    total = {r: max(running.get(r, 0.0), init_peak.get(r, 0.0)) for r in {*running, *init_peak}}
    for resource, value in (spec.get("overhead") or {}).items():
        total[resource] = total.get(resource, 0.0) + parse_quantity(value)
    total["pods"] = 1.0
    return {r: v for r, v in total.items() if v > 0}


def _requests(container: Obj) -> dict[str, float]:
    resources = container.get("resources") or {}
    # A limit without a request is also the request.
    merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
    return {r: parse_quantity(v) for r, v in merged.items()}


# --- The scheduler's message -----------------------------------------------------------------


@dataclass(frozen=True)
class SchedulerMessage:
    """`0/3 nodes are available: 1 Too many pods, 2 node(s) didn't match ...`, taken apart."""

    nodes: int | None  # how many nodes the scheduler looked at
    reasons: tuple[tuple[int, str], ...]  # (node count, reason)
    pod_reasons: tuple[str, ...]  # reasons that are the pod's own, not a node's

    @property
    def room_reasons(self) -> list[str]:
        return [f"{n} {r}" for n, r in self.reasons if _is_room(r)]

    @property
    def only_permanent(self) -> bool:
        """Every node the scheduler looked at is ruled out for a reason no room would change."""
        if not self.reasons or any(_is_room(r) for _, r in self.reasons):
            return False
        return self.nodes is None or sum(n for n, _ in self.reasons) >= self.nodes


def _is_room(reason: str) -> bool:
    return any(r in reason for r in _ROOM_REASONS)


def parse_scheduler_message(message: str) -> SchedulerMessage:
    found = re.match(r"\s*(\d+)/(\d+) nodes are available:?\s*(.*)", message or "", re.S)
    if not found:
        return SchedulerMessage(None, (), (message.strip(),) if message.strip() else ())
    nodes = int(found.group(2))
    # What follows the first ". " is the preemption attempt's own account, and noise.
    body = re.split(r"\.(?:\s|$)", found.group(3), maxsplit=1)[0]
    reasons: list[tuple[int, str]] = []
    pod_reasons: list[str] = []
    for part in _split_reasons(body):
        numbered = re.match(r"(\d+) (.+)", part)
        if numbered:
            reasons.append((int(numbered.group(1)), numbered.group(2).strip()))
        elif part:
            pod_reasons.append(part)
    return SchedulerMessage(nodes, tuple(reasons), tuple(pod_reasons))


def _split_reasons(body: str) -> list[str]:
    # A taint in the message ("{key: value}") may hold ", ": split outside braces only.
    parts, depth, current = [], 0, ""
    for char in body:
        depth += char == "{"
        depth -= char == "}"
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    parts.append(current.strip())
    return [p for p in parts if p]


def mentions_claims(message: str) -> bool:
    return any(m in message for m in _CLAIM_MESSAGES)


# --- Nodes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejection:
    """Why one node can never take the pod, whatever runs on it."""

    kind: str  # "taint", "selector", "affinity", "resource"
    text: str  # the taint, the missing labels, or the resource too small


def node_rejection(pod: Obj, node: Obj, requests: dict[str, float]) -> Rejection | None:
    """The first reason, in the scheduler's order, why `node` can never run `pod`; None if it can.

    Passing states (cordoned, not ready, under pressure) do not count: they end.
    """
    spec = pod.get("spec") or {}
    labels = (node.get("metadata") or {}).get("labels") or {}
    for taint in (node.get("spec") or {}).get("taints") or ():
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if taint.get("key") in PASSING_TAINTS or _tolerated(taint, spec.get("tolerations")):
            continue
        value = f"={taint['value']}" if taint.get("value") else ""
        return Rejection("taint", f"{taint.get('key')}{value}:{taint.get('effect')}")
    selector = spec.get("nodeSelector") or {}
    missing = [f"{k}={v}" for k, v in selector.items() if labels.get(k) != v]
    if missing:
        return Rejection("selector", ", ".join(missing))
    required = (
        ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution"
        )
        or {}
    ).get("nodeSelectorTerms") or []
    if required and not any(_term_matches(t, node) for t in required):
        return Rejection("affinity", "required node affinity")
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    for resource, want in sorted(requests.items()):
        have = parse_quantity(allocatable[resource]) if resource in allocatable else 0.0
        if want > have:
            return Rejection("resource", resource)
    return None


def _tolerated(taint: Obj, tolerations: Iterable[Obj] | None) -> bool:
    for toleration in tolerations or ():
        if toleration.get("effect") and toleration.get("effect") != taint.get("effect"):
            continue
        operator = toleration.get("operator", "Equal")
        if not toleration.get("key"):
            if operator == "Exists":
                return True
            continue
        if toleration.get("key") != taint.get("key"):
            continue
        if operator == "Exists" or toleration.get("value", "") == taint.get("value", ""):
            return True
    return False


def _term_matches(term: Obj, node: Obj) -> bool:
    metadata = node.get("metadata") or {}
    labels = metadata.get("labels") or {}
    fields = {"metadata.name": metadata.get("name", "")}
    expressions = [(e, labels) for e in term.get("matchExpressions") or ()]
    expressions += [(e, fields) for e in term.get("matchFields") or ()]
    if not expressions:
        return False  # an empty term matches nothing, per the API's rules
    return all(_expression_matches(e, values) for e, values in expressions)


def _expression_matches(expression: Obj, values: dict[str, str]) -> bool:
    key, operator = expression.get("key", ""), expression.get("operator", "")
    wanted = expression.get("values") or []
    present = key in values
    if operator == "In":
        return present and values[key] in wanted
    if operator == "NotIn":
        return not present or values[key] not in wanted
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    if operator in ("Gt", "Lt") and present and wanted:
        try:
            have, limit = int(values[key]), int(wanted[0])
        except ValueError:
            return False
        return have > limit if operator == "Gt" else have < limit
    return False


def _node_name(node: Obj) -> str:
    return str((node.get("metadata") or {}).get("name", "?"))


# --- What the waiter reads about the cluster ----------------------------------------------


@dataclass(frozen=True)
class ClusterFacts:
    """What the API said, beyond the namespace's workloads, when a pod of the release found no node.

    None where the deploy account may not read it (the verdict then rests on the
    scheduler's message); `unreadable` says which, for the report.
    """

    read_at: float  # monotonic seconds
    nodes: tuple[Obj, ...] | None = None
    storage_classes: tuple[Obj, ...] | None = None
    claims: tuple[Obj, ...] | None = None
    autoscaler_status: Obj | None = None  # the ConfigMap; None when absent or unreadable
    unreadable: tuple[str, ...] = ()


# --- Claims -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimProblem:
    kind: str  # NEVER or VOLUME
    text: str
    fix: str


def _missing_claim(name: str) -> ClaimProblem:
    return ClaimProblem(
        NEVER,
        f"its claim {name} does not exist",
        f"Create the PersistentVolumeClaim {name}, or correct the claim's name in the values.",
    )


_UNBOUND = ClaimProblem(
    VOLUME,
    "its claims are not bound",
    "Check the pod's PersistentVolumeClaims and their StorageClasses: kubectl describe pvc.",
)


def pod_claims(pod: Obj) -> list[str]:
    """The PersistentVolumeClaims the pod mounts, generic ephemeral volumes' included."""
    name = pod["metadata"]["name"]
    claims = []
    for volume in (pod.get("spec") or {}).get("volumes") or ():
        if "persistentVolumeClaim" in volume:
            claims.append(volume["persistentVolumeClaim"].get("claimName", ""))
        elif "ephemeral" in volume:
            claims.append(f"{name}-{volume.get('name', '')}")
    return claims


def claim_problem(
    pod: Obj, facts: ClusterFacts, events_of: Callable[[str, str], list[Obj]]
) -> ClaimProblem | None:
    """The first claim of the pod that is not bound, and why nothing binds it."""
    if facts.claims is None:
        return None
    by_name = {c["metadata"]["name"]: c for c in facts.claims}
    classes = (
        {c["metadata"]["name"]: c for c in facts.storage_classes}
        if facts.storage_classes is not None
        else None
    )
    for name in pod_claims(pod):
        claim = by_name.get(name)
        if claim is None:
            return _missing_claim(name)
        phase = (claim.get("status") or {}).get("phase", "Pending")
        if phase == "Bound":
            continue
        found = _unbound_claim(
            name, claim, phase, classes, events_of("PersistentVolumeClaim", name)
        )
        if found:
            return found
    return None


def _unbound_claim(
    name: str,
    claim: Obj,
    phase: str,
    classes: dict[str, Obj] | None,
    events: list[Obj],
) -> ClaimProblem | None:
    spec = claim.get("spec") or {}
    wanted = spec.get("storageClassName")
    if phase == "Lost":
        return ClaimProblem(
            NEVER,
            f"its claim {name} lost its volume",
            f"Restore the PersistentVolume of claim {name}, or delete the claim so that a new "
            "volume is provisioned (its data is gone).",
        )
    failures = [e for e in events if e.get("reason") in ("ProvisioningFailed", "FailedBinding")]
    said = f" ({(failures[-1].get('message') or '').strip()})" if failures else ""
    if wanted == "":
        return ClaimProblem(
            NEVER,
            f'its claim {name} asks for an existing volume (storageClassName: "") and no '
            f"PersistentVolume matches it{said}",
            f"Create a PersistentVolume that matches claim {name}, or give the claim a "
            "StorageClass that provisions volumes (kubectl get storageclass).",
        )
    if classes is None:
        return ClaimProblem(
            VOLUME,
            f"its claim {name} (StorageClass {wanted or 'none'}) is not bound{said}",
            f"Check claim {name} and its StorageClass: kubectl describe pvc {name}.",
        )
    if wanted is None:
        defaults = [
            c for c in classes.values() if _annotation(c, DEFAULT_CLASS) in ("true", "True")
        ]
        if not defaults:
            return ClaimProblem(
                NEVER,
                f"its claim {name} names no StorageClass and the cluster has no default one, "
                f"so nothing provisions it and no PersistentVolume matches it{said}",
                f"Set storageClassName of claim {name} in the values to a class that exists "
                "(kubectl get storageclass), or mark one as the cluster's default.",
            )
        # The default class is given to the claim in a moment (retroactive assignment).
        wanted = defaults[0]["metadata"]["name"]
    storage_class = classes.get(wanted)
    if storage_class is None:
        return ClaimProblem(
            NEVER,
            f"its claim {name} asks for StorageClass {wanted}, which does not exist, so "
            f"nothing provisions the claim{said}",
            f"Create StorageClass {wanted}, or set the claim's storageClassName in the values to "
            "one that exists (kubectl get storageclass).",
        )
    provisioner = storage_class.get("provisioner", "")
    if provisioner == NO_PROVISIONER:
        return ClaimProblem(
            NEVER,
            f"its claim {name} asks for StorageClass {wanted}, which provisions nothing "
            f"({NO_PROVISIONER}), and no PersistentVolume matches the claim{said}",
            f"Create a PersistentVolume that matches claim {name}, or use a StorageClass with "
            "a provisioner.",
        )
    if storage_class.get("volumeBindingMode") == "WaitForFirstConsumer" and not failures:
        return None  # provisioned once the pod has a node; the claim is not what holds it
    return ClaimProblem(
        VOLUME,
        f"its claim {name} (StorageClass {wanted}) is not bound: nothing has provisioned a "
        f"volume for it; StorageClass {wanted}'s provisioner {provisioner} did not{said}",
        f"Check that the provisioner {provisioner} runs in the cluster and what its logs say "
        f"(kubectl get pods -A | grep -i provisioner), or use another StorageClass.",
    )


def _annotation(obj: Obj, key: str) -> str | None:
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(key)


# --- The cluster autoscaler ------------------------------------------------------------------


@dataclass(frozen=True)
class AutoscalerWord:
    """The autoscaler's latest event on a pod."""

    reason: str
    message: str
    at: float | None  # epoch seconds

    @property
    def groups(self) -> list[str]:
        """`pool-1 (1->2 nodes)` for each group a TriggeredScaleUp names."""
        found = re.findall(r"\{(\S+) (\d+)->(\d+) \(max: (\d+)\)\}", self.message)
        return [f"{group.rsplit('/', 1)[-1]} ({old}->{new} nodes)" for group, old, new, _ in found]


def autoscaler_word(events: Iterable[Obj]) -> AutoscalerWord | None:
    """The last of the autoscaler's events in `events` (sorted oldest first), if any."""
    word = None
    for event in events:
        if event.get("reason") in AUTOSCALER_REASONS:
            word = AutoscalerWord(
                event["reason"], (event.get("message") or "").strip(), epoch(event_time(event))
            )
    return word


def event_time(event: Obj) -> str:
    series = event.get("series") or {}
    return str(
        series.get("lastObservedTime")
        or event.get("lastTimestamp")
        or event.get("eventTime")
        or (event.get("metadata") or {}).get("creationTimestamp")
        or ""
    )


def epoch(stamp: str) -> float | None:
    """Epoch seconds of an API timestamp, or of the autoscaler's Go time format."""
    text = (stamp or "").strip()
    if not text:
        return None
    go = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:\.(\d+))? ([+-]\d{4})", text)
    if go:
        fraction = (go.group(2) or "0")[:6]
        text = f"{go.group(1).replace(' ', 'T')}.{fraction}{go.group(3)}"
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class AutoscalerStatus:
    """What the autoscaler's status ConfigMap says (its YAML, or the older text form)."""

    updated: float | None  # epoch seconds
    scale_up: str  # cluster-wide: NoActivity, InProgress, ...
    groups_scaling: tuple[str, ...]  # node groups with a scale-up InProgress
    backoffs: tuple[str, ...]  # "pool-1: QUOTA_EXCEEDED: ..." for groups in Backoff

    def fresh(self, wall_now: float) -> bool:
        return self.updated is not None and wall_now - self.updated < AUTOSCALER_STALE_SECONDS


def autoscaler_status(config_map: Obj | None) -> AutoscalerStatus | None:
    if config_map is None:
        return None
    text = str((config_map.get("data") or {}).get("status", ""))
    updated = epoch(_annotation(config_map, AUTOSCALER_UPDATED) or "")
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        parsed = None
    if isinstance(parsed, dict) and "clusterWide" in parsed:
        groups = parsed.get("nodeGroups") or []
        scaling = tuple(
            g.get("name", "?").rsplit("/", 1)[-1]
            for g in groups
            if (g.get("scaleUp") or {}).get("status") == "InProgress"
        )
        backoffs = tuple(
            _backoff(g) for g in groups if (g.get("scaleUp") or {}).get("status") == "Backoff"
        )
        scale_up = ((parsed.get("clusterWide") or {}).get("scaleUp") or {}).get("status", "")
        return AutoscalerStatus(
            updated or epoch(str(parsed.get("time", ""))), scale_up, scaling, backoffs
        )
    # Before 1.30 the status was prose: "ScaleUp:     InProgress (ready=3 registered=3)".
    found = re.search(r"ScaleUp:\s+(\w+)", text)
    return AutoscalerStatus(updated, found.group(1) if found else "", (), ())


def _backoff(group: Obj) -> str:
    info = (group.get("scaleUp") or {}).get("backoffInfo") or {}
    said = ": ".join(x for x in (info.get("errorCode"), info.get("errorMessage")) if x)
    return f"{group.get('name', '?').rsplit('/', 1)[-1]}: {said or 'in backoff'}"


# --- The verdict ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fit:
    """Whether the pod will ever find a node, said for the operator."""

    kind: str  # FULL, NEVER or VOLUME
    summary: str  # completes "Unschedulable: ..."
    fix: str
    details: tuple[str, ...] = ()
    room: str = ""  # FULL: what the nodes lack, "2 Too many pods"
    # False for a claim nothing binds: an added node would not help.
    autoscalable: bool = True


def classify(
    pod: Obj,
    message: str,
    facts: ClusterFacts,
    events_of: Callable[[str, str], list[Obj]],
    neighbours: Iterable[Obj] = (),
) -> Fit:
    """Full right now, never, or a volume on its way, from the message, the nodes and the claims.

    `neighbours` are the namespace's pods that are not part of the release (user
    servers, builds), to say what fills the nodes.
    """
    said = parse_scheduler_message(message)
    if mentions_claims(message):
        problem = claim_problem(pod, facts, events_of)
        if problem is None and said.pod_reasons and not said.reasons:
            missing = re.search(r'persistentvolumeclaim "([^"]+)" not found', message)
            problem = _missing_claim(missing.group(1)) if missing else _UNBOUND
        if problem is not None:
            return Fit(problem.kind, problem.text, problem.fix, autoscalable=False)
    room = ", ".join(said.room_reasons)
    if facts.nodes is None:
        return _from_message_alone(said, room)
    if not facts.nodes:
        # A cluster scaled to nothing: only an autoscaler brings a node.
        return Fit(
            FULL,
            "the cluster has no node at all",
            "Add nodes, or let a cluster autoscaler add them.",
            room="no nodes",
        )
    requests = pod_requests(pod)
    rejected = {_node_name(n): node_rejection(pod, n, requests) for n in facts.nodes}
    candidates = [n for n in facts.nodes if rejected[_node_name(n)] is None]
    if not candidates:
        return _never(requests, facts.nodes, rejected)
    if said.only_permanent and not room:
        # The scheduler rules every node out for what no room changes (a volume's zone, say).
        return Fit(
            NEVER,
            f"no node can take it: {', '.join(f'{n} {r}' for n, r in said.reasons)}",
            "The scheduler's message says why; correct the pod's constraints in the values.",
        )
    return _full(room, candidates, neighbours)


_UNREAD_NODES = (
    "nodes: not readable with the deploy credentials; judged from the scheduler's message"
)


def _from_message_alone(said: SchedulerMessage, room: str) -> Fit:
    reasons = ", ".join(f"{n} {r}" for n, r in said.reasons) or ", ".join(said.pod_reasons)
    if said.only_permanent:
        return Fit(
            NEVER,
            f"no node can take it: {reasons}",
            "Check the node selectors, affinities and tolerations in the values against the "
            "nodes' labels and taints (kubectl get nodes --show-labels).",
            (_UNREAD_NODES,),
        )
    return Fit(
        FULL,
        f"no node has room for it right now ({room or reasons})",
        "The nodes are full, not misconfigured: add nodes (or let a cluster autoscaler add "
        "them), or deploy when fewer users are on.",
        (_UNREAD_NODES,),
        room or reasons,
    )


def _never(
    requests: dict[str, float], nodes: tuple[Obj, ...], rejected: dict[str, Rejection | None]
) -> Fit:
    by_text: dict[tuple[str, str], list[str]] = {}
    for name, rejection in rejected.items():
        assert rejection is not None
        by_text.setdefault((rejection.kind, rejection.text), []).append(name)
    kinds = {kind for kind, _ in by_text}
    resources = sorted({text for kind, text in by_text if kind == "resource"})
    if len(by_text) == 1 and kinds == {"resource"}:
        # Every node is too small for the same resource: name the request and the largest.
        resource = resources[0]
        largest = max(nodes, key=lambda n: _allocatable(n, resource))
        have = format_quantity(resource, _allocatable(largest, resource))
        summary = (
            f"it can never fit: it requests {resource} "
            f"{format_quantity(resource, requests[resource])}, more than any node has "
            f"(the largest, {_node_name(largest)}, has {have})"
        )
    else:
        parts = [
            f"{abridged(names)}: {_rejection_phrase(kind, text, requests)}"
            for (kind, text), names in sorted(by_text.items(), key=lambda item: -len(item[1]))
        ]
        summary = "it can never fit: " + "; ".join(parts)
    fixes = []
    if "resource" in kinds:
        asked = ", ".join(f"{r} {format_quantity(r, requests[r])}" for r in resources)
        fixes.append(
            f"Lower the pod's resource requests ({asked}) in the values, or add a node pool "
            "whose nodes are big enough."
        )
    if kinds & {"selector", "affinity"}:
        fixes.append(
            "Check the pod's nodeSelector and node affinity in the values against the nodes' "
            "labels (kubectl get nodes --show-labels), or add nodes with those labels."
        )
    if "taint" in kinds:
        fixes.append(
            "Give the pod a toleration for the nodes' taint in the values, or run it on nodes "
            "without that taint."
        )
    return Fit(NEVER, summary, " ".join(fixes))


def _rejection_phrase(kind: str, text: str, requests: dict[str, float]) -> str:
    if kind == "taint":
        return f"taint {text} not tolerated"
    if kind == "selector":
        return f"labels of its node selector missing ({text})"
    if kind == "affinity":
        return "its required node affinity not matched"
    return f"less {text} than its request of {format_quantity(text, requests[text])}"


def _allocatable(node: Obj, resource: str) -> float:
    value = ((node.get("status") or {}).get("allocatable") or {}).get(resource)
    return parse_quantity(value) if value is not None else 0.0


def _full(room: str, candidates: list[Obj], neighbours: Iterable[Obj]) -> Fit:
    names = {_node_name(n) for n in candidates}
    slots = sorted(
        {(n.get("status") or {}).get("allocatable", {}).get("pods", "?") for n in candidates}
    )
    details = [
        f"nodes that could take it once room frees up: {counted(len(names), 'node')} "
        f"({abridged(sorted(names))}), {'/'.join(map(str, slots))} pods each at most"
    ]
    tenants = Counter(
        _tenant(p) for p in neighbours if (p.get("spec") or {}).get("nodeName") in names
    )
    if tenants:
        shown = ", ".join(f"{n} {what}" for what, n in tenants.most_common(3))
        details.append(
            f"on them, {counted(sum(tenants.values()), 'pod')} of this namespace that are not "
            f"part of the release: {shown}"
        )
    return Fit(
        FULL,
        f"no node has room for it right now ({room or 'the nodes are full'})",
        "The nodes are full, not misconfigured: add nodes (or let a cluster autoscaler add "
        "them), or deploy when fewer users are on; --unschedulable-grace waits longer for users "
        "to leave.",
        tuple(details),
        room,
    )


def _tenant(pod: Obj) -> str:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    for key in ("component", "app.kubernetes.io/component", "app"):
        if key in labels:
            return f"{key}={labels[key]}"
    return "unlabelled"


# --- Wait or fail --------------------------------------------------------------------------


@dataclass(frozen=True)
class Note:
    """What a workload waits on, for the progress lines: `kind` changes rarely (CI prints a line
    when it does), `text` may carry a clock."""

    kind: str
    text: str


@dataclass(frozen=True)
class Placement:
    """Go on waiting (with a note on what for), or fail (with the fit that says why)."""

    fail: bool
    fit: Fit | None = None
    note: Note | None = None


def placement(
    fit: Fit,
    word: AutoscalerWord | None,
    status: AutoscalerStatus | None,
    *,
    waited: float,
    waited_for_room: float,
    room_coming: bool,
    grace: float,
    wall_now: float,
) -> Placement:
    """Wait or fail, for a pod of the release that the scheduler found no node for.

    `waited`: seconds since the pod was first seen unschedulable; `waited_for_room`:
    since then or since a pod of the release last went away, whichever is later;
    `room_coming`: a pod of the release is terminating, its room about to be free;
    `wall_now`: epoch seconds, for the ages of the autoscaler's events and status.
    """
    if not fit.autoscalable:
        # A claim nothing binds: no node, added or not, changes that.
        if fit.kind == VOLUME and waited < grace:
            return Placement(False, note=Note("volume", f"{fit.summary}; waiting for it"))
        return Placement(True, fit)
    running = status is not None and status.fresh(wall_now)
    if word is not None and word.reason == TRIGGERED:
        age = format_seconds(max(0.0, wall_now - word.at)) if word.at is not None else "a while"
        groups = ", ".join(word.groups) or "a node group"
        text = f"waiting for a node: scale-up of {groups} triggered {age} ago"
        return Placement(False, note=Note("scale-up", text))
    if word is not None:
        return Placement(True, _refused(fit, word, status))
    about = _autoscaler_lines(status, running, wall_now)
    if fit.kind == NEVER:
        if running and waited < max(grace, AUTOSCALER_SECONDS):
            # Another node pool may have nodes that fit: the autoscaler knows, and says so.
            text = "no present node can ever take it; waiting for the cluster autoscaler's word"
            return Placement(False, note=Note("autoscaler", text))
        return Placement(True, _with_details(fit, about))
    if running and status and (status.groups_scaling or status.scale_up == "InProgress"):
        # A scale-up started for other pods also brings room for this one, without a word to it.
        scaling = ", ".join(status.groups_scaling) or "the cluster"
        text = f"waiting for a node: a scale-up of {scaling} is under way"
        return Placement(False, note=Note("scale-up", text))
    room = fit.room or "the nodes are full"
    if room_coming:
        text = f"no room right now ({room}); a pod of the release is leaving, freeing some"
        return Placement(False, note=Note("room", text))
    limit = max(grace, AUTOSCALER_SECONDS) if running else grace
    if waited_for_room < limit:
        awaited = "the cluster autoscaler" if running else "room"
        left = format_seconds(limit - waited_for_room)
        text = f"no room right now ({room}); waiting {left} more for {awaited}"
        return Placement(False, note=Note("room", text))
    return Placement(True, _with_details(fit, about))


def _autoscaler_lines(
    status: AutoscalerStatus | None, running: bool, wall_now: float
) -> tuple[str, ...]:
    if status is None:
        return (
            "cluster autoscaler: none found (no kube-system/cluster-autoscaler-status), so no "
            "node will be added",
        )
    if not running:
        age = format_seconds(wall_now - status.updated) if status.updated is not None else "unknown"
        return (f"cluster autoscaler: its status was last updated {age} ago; it seems not to run",)
    return ("cluster autoscaler: running, but it said nothing about this pod",)


def _with_details(fit: Fit, lines: tuple[str, ...]) -> Fit:
    return replace(fit, details=(*fit.details, *lines))


def _refused(fit: Fit, word: AutoscalerWord, status: AutoscalerStatus | None) -> Fit:
    """The autoscaler will not or cannot add a node: its reason is the news."""
    backoff = f" ({'; '.join(status.backoffs)})" if status and status.backoffs else ""
    if word.reason == FAILED_SCALE_UP:
        said = f"the cluster autoscaler could not add a node: {word.message}{backoff}"
        fix = (
            "Adding a node failed: check the cloud provider's quota and the node pool, then "
            "deploy again."
        )
    else:
        said = f"the cluster autoscaler will not add a node: {word.message}{backoff}"
        if "max node group size" in word.message or "max total nodes" in word.message:
            fix = (
                "The node pools are at their maximum size: raise it (or the cluster's limits), "
                "or deploy when fewer users are on."
            )
        elif "backoff" in word.message:
            fix = (
                "A recent scale-up failed and the autoscaler waits before trying again: check "
                "the cloud provider's quota and the node pool."
            )
        else:
            fix = "No node the autoscaler can add would take the pod. " + fit.fix
    if fit.kind == NEVER:
        summary = f"{fit.summary}; {said}"
    else:
        summary = f"no room right now ({fit.room or 'the nodes are full'}) and {said}"
    return replace(fit, summary=summary, fix=fix)
