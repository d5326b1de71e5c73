"""wait-rollout in a busy BinderHub namespace: 1,000 user pods coming and going, against quiet.

On its own throwaway local cluster (`binder-busy`, started here and stopped at
the end): the cluster's 2 nodes as the core pool, for the release, plus a pool of user
nodes with room for every user pod (sandbox/nodes.py), each pod selecting
its pool as z2jh's do. The scheduler packs the user nodes full, one after the
other.

The release: six Deployments and a DaemonSet, shaped like a BinderHub site's
(hub, proxy, binder, static-files, federation-redirect, user-scheduler,
image-puller), every pod labelled `bench.binder.test/release`. Each scenario
upgrades the release to a new image tag with its Deployments paused, starts
wait-rollout, and releases the rollout once the waiter has listed the namespace,
as `upgrade` followed by `wait-rollout` does in the pipeline, without the
waiter's own start-up in the figure.

Conditions:
  quiet   the release alone in its namespace
  busy    the release beside 1,000 user pods (labelled like z2jh's singleuser
          servers, a few crash-looping, a few build pods failing to pull their
          image), while a separate process deletes the oldest user pods and
          starts new ones at --churn-rate per second, bounded by --churn-max
          operations and --churn-seconds

Scenarios, in each condition:
  success   the rollout succeeds. Figure: seconds from the moment it was complete in
            the API (the last new pod Ready, the last old pod on its way out) to the
            waiter's exit.
  failure   the hub crash-loops. Figure: seconds from its pod's first crash to the
            waiter's exit.
  steady    the rollout is held (paused) for --steady seconds, the waiter's
            deadline. Figure: the waiter's CPU time over those seconds, the cost
            of following the namespace.

The waiter runs in a child process of its own (this script, `waiter` mode), so
its CPU time (its process and its `kubectl proxy`, from getrusage) is its own,
not the churn's or the pod clock's. When a pod turned Ready, crashed or started
leaving is taken from a watch on the release's pods, opened before the scenario
starts: the moment the API server reported it.

    python benchmarks/busy_namespace.py                      # everything, about 5 minutes
    python benchmarks/busy_namespace.py --users 200 --steady 20 --repeat 1   # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Run as a script from the project root: `tasks`, `tests` and `benchmarks` import from there.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.rollout import PodClock  # noqa: E402
from sandbox import clusters, nodes  # noqa: E402
from tasks.adapters import go_builds  # noqa: E402
from tests.fakes.kube import KubeApi  # noqa: E402

RELEASE_LABEL = "bench.binder.test/release"
FAIL_LABEL = clusters.FAIL_LABEL
USER_POOL = "users"
USER_NODE_PODS = 300
# z2jh's node purposes: user pods on the user nodes (scheduling.userPods.nodeAffinity),
# the release's own pods on the core nodes (scheduling.corePods.nodeAffinity).
PURPOSE = "hub.jupyter.org/node-purpose"
USER_NODES = {PURPOSE: "user"}
CORE_NODES = {PURPOSE: "core"}
# name -> replicas: a BinderHub site's workloads.
DEPLOYMENTS = {
    "hub": 1,
    "proxy": 1,
    "binder": 2,
    "static-files": 2,
    "federation-redirect": 2,
    "user-scheduler": 2,
}
DAEMONSET = "image-puller"


# --- The release ---------------------------------------------------------------------------


def _pod_template(name: str, tag: str, fail: str | None) -> dict[str, Any]:
    labels = {"app": name, RELEASE_LABEL: "binder", **({FAIL_LABEL: fail} if fail else {})}
    return {
        "metadata": {"labels": labels},
        "spec": {
            "nodeSelector": CORE_NODES,
            "containers": [{"name": name, "image": f"example.org/{name}:{tag}"}],
        },
    }


def release(tag: str, *, paused: bool, crash: str | None = None) -> list[dict[str, Any]]:
    manifests: list[dict[str, Any]] = [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "paused": paused,
                "selector": {"matchLabels": {"app": name}},
                "template": _pod_template(name, tag, "crashloop" if name == crash else None),
            },
        }
        for name, replicas in DEPLOYMENTS.items()
    ]
    manifests.append(
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": DAEMONSET},
            "spec": {
                "selector": {"matchLabels": {"app": DAEMONSET}},
                # Changed when the rollout is let go, with the Deployments' unpausing.
                "template": _pod_template(DAEMONSET, "1", None),
            },
        }
    )
    return manifests


def user_pod(index: int) -> dict[str, Any]:
    """A user's server, as z2jh's KubeSpawner makes one; one in 50 crash-loops, one in 50 is a
    build whose image cannot be pulled. No workload controls them."""
    component, fail = "singleuser-server", None
    if index % 50 == 7:
        fail = "crashloop"
    elif index % 50 == 31:
        component, fail = "binderhub-build", "imagepull"
    labels = {"app": "jupyterhub", "component": component, "release": "binder"}
    if fail:
        labels[FAIL_LABEL] = fail
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"jupyter-user-{index:05d}", "labels": labels},
        "spec": {
            "nodeSelector": USER_NODES,
            "containers": [{"name": "notebook", "image": "example.org/user-image:1"}],
        },
    }


# --- The user pods and their churn -----------------------------------------------------------


def create_users(api: KubeApi, namespace: str, indices: range) -> None:
    path = f"/api/v1/namespaces/{namespace}/pods"
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: api.create(path, user_pod(i)), indices))


def churn(kubeconfig: Path, namespace: str, users: int, rate: float, most: int, seconds: float):
    """Delete the oldest user pod and start a new one, `rate` times a second, until stopped or
    `most` operations or `seconds` are done."""
    api = KubeApi(kubeconfig)
    path = f"/api/v1/namespaces/{namespace}/pods"
    oldest, newest = 0, users
    done = 0
    started = time.monotonic()
    while done < most and time.monotonic() - started < seconds:
        tick = time.monotonic()
        api.delete(f"{path}/{user_pod(oldest)['metadata']['name']}")
        api.create(path, user_pod(newest))
        oldest, newest, done = oldest + 1, newest + 1, done + 2
        time.sleep(max(0.0, 2 / rate - (time.monotonic() - tick)))
    print(json.dumps({"operations": done, "seconds": time.monotonic() - started}), flush=True)


@contextmanager
def churning(args: argparse.Namespace, namespace: str) -> Iterator[None]:
    command = [
        sys.executable,
        __file__,
        "churn",
        "--cluster",
        args.cluster,
        "--namespace",
        namespace,
        "--users",
        str(args.users),
        "--churn-rate",
        str(args.churn_rate),
        "--churn-max",
        str(args.churn_max),
        "--churn-seconds",
        str(args.churn_seconds),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stdout:
            process.stdout.close()


# --- The waiter, in its own process --------------------------------------------------------------


def waiter(cluster: str, namespace: str, timeout: float) -> None:
    """Run wait-rollout; print its progress, then one RESULT line with its outcome and CPU."""
    from invoke import Context

    from tasks.core.errors import StepFailure
    from tasks.core.runner import Runner
    from tasks.steps.rollout import wait_for_rollout

    runner = Runner(Context(), env={"KUBECONFIG": str(clusters.kubeconfig(cluster))})
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    outcome: dict[str, Any] = {"ok": True, "why": ""}
    try:
        wait_for_rollout(
            runner,
            namespace,
            timeout=timeout,
            kubectl=go_builds.binary("kubectl"),
            stream=sys.stdout,
        )
    except StepFailure as failure:
        outcome = {"ok": False, "why": failure.why}
    outcome["exited_at"] = time.time()
    outcome["seconds"] = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    proxy = resource.getrusage(resource.RUSAGE_CHILDREN)  # kubectl proxy, waited for on exit
    outcome["cpu"] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    outcome["proxy_cpu"] = proxy.ru_utime + proxy.ru_stime
    print("RESULT " + json.dumps(outcome), flush=True)


@dataclass
class Waited:
    ok: bool
    why: str
    exited_at: float
    seconds: float
    cpu: float
    proxy_cpu: float
    announced_at: float = 0.0


def run_waiter(cluster: str, namespace: str, timeout: float, on_announce: Any) -> Waited:
    command = [
        sys.executable,
        "-u",
        __file__,
        "waiter",
        "--cluster",
        cluster,
        "--namespace",
        namespace,
        "--timeout",
        str(timeout),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    announced = 0.0
    result: dict[str, Any] = {}
    for line in process.stdout:
        if line.startswith("waiting for ") and not announced:
            announced = time.time()
            on_announce()
        elif line.startswith("RESULT "):
            result = json.loads(line.removeprefix("RESULT "))
    process.wait()
    if not result:
        raise RuntimeError(f"the waiter ended without a result (exit {process.returncode})")
    return Waited(announced_at=announced, **result)


# --- A scenario ----------------------------------------------------------------------------


@dataclass
class Figure:
    condition: str
    scenario: str
    seconds: float | None  # success: last Ready to exit; failure: first crash to exit
    waited: float
    cpu: float
    proxy_cpu: float
    outcome: str
    load: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0))

    @property
    def cpu_share(self) -> float:
        return (self.cpu + self.proxy_cpu) / self.waited if self.waited else 0.0


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cluster = args.cluster
        self.api = KubeApi(clusters.kubeconfig(args.cluster))
        self.tags = iter(range(2, 10_000))

    def apply(self, namespace: str, manifests: list[dict[str, Any]]) -> None:
        for manifest in manifests:
            kind = manifest["kind"].lower() + "s"
            name = manifest["metadata"]["name"]
            path = f"/apis/apps/v1/namespaces/{namespace}/{kind}/{name}"
            self.api.apply(path, manifest, manager="benchmark")

    def let_go(self, namespace: str, tag: str) -> None:
        """Unpause the Deployments and change the DaemonSet: the rollout starts."""
        for name in DEPLOYMENTS:
            self.api.patch(
                f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}",
                {"spec": {"paused": False}},
            )
        template = _pod_template(DAEMONSET, tag, None)
        self.api.patch(
            f"/apis/apps/v1/namespaces/{namespace}/daemonsets/{DAEMONSET}",
            {"spec": {"template": template}},
        )

    def settle(self, namespace: str, tag: str = "1") -> None:
        """The release at `tag`, rolled out, before a scenario starts."""
        self.apply(namespace, release(tag, paused=False))
        outcome = run_waiter(self.cluster, namespace, 300, lambda: None)
        if not outcome.ok:
            raise RuntimeError(f"the release did not settle: {outcome.why}")

    def measure(self, condition: str, namespace: str, scenario: str) -> Figure:
        tag = str(next(self.tags))
        crash = "hub" if scenario == "failure" else None
        load = os.getloadavg()
        with pod_clock(self.api, namespace) as clock:
            self.apply(namespace, release(tag, paused=True, crash=crash))
            if scenario == "steady":
                outcome = run_waiter(self.cluster, namespace, self.args.steady, lambda: None)
            else:
                outcome = run_waiter(
                    self.cluster, namespace, 300, lambda: self.let_go(namespace, tag)
                )
        seconds = None
        if scenario == "success" and outcome.ok:
            seconds = outcome.exited_at - clock.complete()
        elif scenario == "failure" and not outcome.ok and "hub" in clock.crashed_at:
            seconds = outcome.exited_at - clock.crashed_at["hub"]
        if scenario != "steady":
            # The next scenario starts from a rolled-out release.
            self.settle(namespace, tag="1" if scenario == "failure" else tag)
        said = "ok" if outcome.ok else _said(outcome.why)
        return Figure(
            condition,
            scenario,
            seconds,
            outcome.seconds,
            outcome.cpu,
            outcome.proxy_cpu,
            said,
            load,
        )


def _said(why: str) -> str:
    if why.startswith("Not rolled out within"):
        return "held to its deadline"
    if "pod hub-" in why and "CrashLoopBackOff" in why:
        return "failed naming the hub's pod and CrashLoopBackOff"
    return why.splitlines()[0][:80]


@dataclass
class RolloutClock(PodClock):
    """PodClock, and when each pod of the previous revision started leaving."""

    left_at: dict[str, float] = field(default_factory=dict)

    def complete(self) -> float:
        """When the rollout was complete in the API: the last new pod Ready and the last old
        pod on its way out (wait-rollout's rule, and kubectl's, count neither as a replica)."""
        return max([self.last_ready()[0], *self.left_at.values()])


@contextmanager
def pod_clock(api: KubeApi, namespace: str) -> Iterator[RolloutClock]:
    """When the release's pods turn Ready, crash or leave, from a watch opened now."""
    clock = RolloutClock()
    path = f"/api/v1/namespaces/{namespace}/pods"
    listed = api.get(path, labelSelector=RELEASE_LABEL)
    old = {p["metadata"]["name"] for p in listed.get("items") or ()}
    stop = threading.Event()

    def follow() -> None:
        version = listed["metadata"]["resourceVersion"]
        while not stop.is_set():
            for event in api.watch(path, version, seconds=5, labelSelector=RELEASE_LABEL):
                pod = event.get("object") or {}
                meta = pod.get("metadata") or {}
                version = meta.get("resourceVersion", version)
                if meta.get("name") not in old:
                    clock.see(pod, time.time())
                elif event.get("type") == "DELETED" or meta.get("deletionTimestamp"):
                    clock.left_at.setdefault(meta["name"], time.time())

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        yield clock
    finally:
        time.sleep(0.3)  # late events drain before the figures are taken
        stop.set()
        thread.join(timeout=10)


# --- The run -------------------------------------------------------------------------------


def table(figures: list[Figure]) -> str:
    rows = [
        ("CONDITION", "SCENARIO", "FIGURE", "x QUIET", "WAITED", "CPU", "CPU/WAITED", "OUTCOME")
    ]
    quiet = {f.scenario: f for f in figures if f.condition == "quiet"}
    for f in figures:
        base = quiet.get(f.scenario)
        if f.scenario == "steady":
            shown = f"{100 * f.cpu_share:.1f}% of a core"
            ratio = f"{f.cpu_share / base.cpu_share:.2f}x" if base and base.cpu_share else "-"
        else:
            shown = f"{f.seconds:.3f}s" if f.seconds is not None else "-"
            ratio = (
                f"{f.seconds / base.seconds:.2f}x"
                if base and base.seconds and f.seconds is not None
                else "-"
            )
        rows.append(
            (
                f.condition,
                f.scenario,
                shown,
                "-" if f.condition == "quiet" else ratio,
                f"{f.waited:.1f}s",
                f"{f.cpu:.2f}s + proxy {f.proxy_cpu:.2f}s",
                f"{100 * f.cpu_share:.1f}%",
                f.outcome,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows)


def _median(runs: list[Figure]) -> Figure:
    known = [r for r in runs if r.seconds is not None] or runs
    middle = statistics.median_low([r.seconds or 0.0 for r in known])
    return next(r for r in known if (r.seconds or 0.0) == middle)


def bench(args: argparse.Namespace) -> list[Figure]:
    pool_nodes = -(-(args.users + 50) // USER_NODE_PODS)
    clusters.up(args.cluster)
    # The cluster's own nodes are the core pool.
    clusters.kubectl(args.cluster, "label", "--overwrite", "nodes", "--all", f"{PURPOSE}=core")
    nodes.add(
        args.cluster,
        *(
            nodes.node(f"users-{i}", pool=USER_POOL, pods=USER_NODE_PODS, labels=USER_NODES)
            for i in range(pool_nodes)
        ),
    )
    runner = Bench(args)
    figures = []
    for condition in ("quiet", "busy"):
        namespace = f"bench-{condition}-{uuid.uuid4().hex[:5]}"
        runner.api.create("/api/v1/namespaces", {"metadata": {"name": namespace}})
        if condition == "busy":
            started = time.monotonic()
            create_users(runner.api, namespace, range(args.users))
            print(
                f"{args.users} user pods created in {time.monotonic() - started:.1f}s", flush=True
            )
        runner.settle(namespace)
        with churning(args, namespace) if condition == "busy" else _nothing():
            for scenario in args.scenarios.split(","):
                repeat = 1 if scenario == "steady" else args.repeat
                runs = [runner.measure(condition, namespace, scenario) for _ in range(repeat)]
                figures.append(_median(runs))
                f = figures[-1]
                shown = f"{f.seconds:.3f}s" if f.seconds is not None else "-"
                print(
                    f"{condition:>6} {scenario:<8} {shown} cpu {f.cpu:.2f}s+{f.proxy_cpu:.2f}s "
                    f"over {f.waited:.1f}s, load {f.load[0]:.1f}: {f.outcome}",
                    flush=True,
                )
        runner.api.delete(f"/api/v1/namespaces/{namespace}")
    return figures


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("mode", nargs="?", default="bench", choices=("bench", "waiter", "churn"))
    parser.add_argument("--cluster", default="binder-busy", help="the throwaway cluster")
    parser.add_argument("--users", type=int, default=1000, help="user pods in the busy namespace")
    parser.add_argument(
        "--churn-rate", type=float, default=10.0, help="user pod deletions + creations a second"
    )
    parser.add_argument("--churn-max", type=int, default=20_000, help="churn operations at most")
    parser.add_argument("--churn-seconds", type=float, default=900, help="churn seconds at most")
    parser.add_argument("--steady", type=float, default=60.0, help="seconds of the held rollout")
    parser.add_argument("--repeat", type=int, default=3, help="runs of success and failure")
    parser.add_argument(
        "--scenarios", default="success,failure,steady", help="a subset of success,failure,steady"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--namespace", help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=300, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # A stopped run still ends its children and stops its cluster.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.mode == "waiter":
        waiter(args.cluster, args.namespace, args.timeout)
        return 0
    if args.mode == "churn":
        churn(
            clusters.kubeconfig(args.cluster),
            args.namespace,
            args.users,
            args.churn_rate,
            args.churn_max,
            args.churn_seconds,
        )
        return 0
    started_here = not clusters.is_up(args.cluster)
    print(
        f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start",
        flush=True,
    )
    try:
        figures = bench(args)
        print()
        print(table(figures))
        if args.json:
            args.json.write_text(json.dumps([asdict(f) for f in figures], indent=2))
    finally:
        if started_here:
            clusters.down(args.cluster)
    return 0


if __name__ == "__main__":
    sys.exit(main())
