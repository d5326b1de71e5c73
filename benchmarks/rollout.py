"""How fast each way of waiting for a rollout learns the outcome, side by side.

On the local cluster (`invoke cluster.up`).

Ways of waiting:
  wait-rollout   this project's step (`tasks/steps/rollout.py`), in-process
  kubectl-loop   mybinder.org's way: `kubectl rollout status --timeout=10m` per
                 Deployment, one after another
  helm-wait      `helm upgrade --install --wait` (Helm 4's kstatus watcher) on a
                 throwaway chart holding the same Deployments

Scenarios:
  clean-N        N Deployments rolling out cleanly. Figure: seconds from the last
                 pod turning Ready to the waiter's exit.
  crash          one crash-looping Deployment among --healthy healthy ones, progress
                 deadline at its default 600 s. Figure: seconds from the pod's first
                 crash to the waiter's exit (a waiter still waiting after --cap seconds
                 is stopped and reported "> cap"), and whether its report names the pod
                 and the reason.

When a pod turned Ready or first crashed is taken from a watch on the namespace's
pods, opened before anything is created: the moment the API server reported it,
to the millisecond (the API's own timestamps have whole seconds only; they are
shown alongside). Each run gets a fresh namespace, deleted afterwards.

    python benchmarks/rollout.py                          # everything, cap 120 s
    python benchmarks/rollout.py --sizes 5 --cap 30       # a quick run

It runs on its own local cluster, `binder-bench`, started with enough simulated
nodes for the largest scenario and stopped at the end, so the figures are not
disturbed by (and do not disturb) other work on the demo clusters.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from invoke import Context

# Run as a script from the project root: `tasks` is importable from there.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandbox import clusters
from tasks.adapters import go_builds
from tasks.core.errors import StepFailure
from tasks.core.runner import Runner
from tasks.steps.rollout import WatchStream, kube_proxy, wait_for_rollout
from tasks.steps.rollout_status import Change, condition

FAIL_LABEL = "kwok.binder.test/fail"
WAYS = ("wait-rollout", "kubectl-loop", "helm-wait")


# --- The workloads -----------------------------------------------------------------------------


def deployment(name: str, fail: str | None = None) -> dict[str, Any]:
    labels = {"app": name, **({FAIL_LABEL: fail} if fail else {})}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "main", "image": f"example.org/{name}:1"}]},
            },
        },
    }


@dataclass(frozen=True)
class Scenario:
    name: str
    manifests: list[dict[str, Any]]
    crash: str | None = None  # the crash-looping Deployment, if any


def clean(size: int) -> Scenario:
    return Scenario(f"clean-{size}", [deployment(f"web-{i:03d}") for i in range(size)])


def crash(healthy: int) -> Scenario:
    # Named to sort in the middle, where mybinder's loop would meet it after half the others.
    half = healthy // 2
    names = [f"web-{i:03d}" for i in range(healthy)]
    manifests = [deployment(n) for n in names[:half]]
    manifests.append(deployment(f"web-{half:03d}-hub", fail="crashloop"))
    manifests += [deployment(n) for n in names[half:]]
    return Scenario(f"crash-1-of-{healthy + 1}", manifests, crash=f"web-{half:03d}-hub")


# --- What the cluster says happened ----------------------------------------------------------


@dataclass
class PodClock:
    """When each pod turned Ready or first crashed, as the pods watch reported it."""

    ready_at: dict[str, float] = field(default_factory=dict)
    ready_stamp: dict[str, str] = field(default_factory=dict)
    crashed_at: dict[str, float] = field(default_factory=dict)
    crashed_pod: dict[str, str] = field(default_factory=dict)

    def see(self, pod: dict[str, Any], at: float) -> None:
        name = pod["metadata"]["name"]
        ready = condition(pod, "Ready")
        if ready and ready.get("status") == "True" and name not in self.ready_at:
            self.ready_at[name] = at
            self.ready_stamp[name] = ready.get("lastTransitionTime", "")
        app = (pod["metadata"].get("labels") or {}).get("app", "")
        for status in (pod.get("status") or {}).get("containerStatuses") or ():
            state = status.get("state") or {}
            crashed = "terminated" in state or (state.get("waiting") or {}).get("reason") == (
                "CrashLoopBackOff"
            )
            if crashed and app not in self.crashed_at:
                self.crashed_at[app] = at
                self.crashed_pod[app] = name

    def last_ready(self) -> tuple[float, float | None]:
        """(watch time, API timestamp) of the last pod to turn Ready, epoch seconds."""
        last = max(self.ready_at.values())
        stamps = [_epoch(s) for s in self.ready_stamp.values() if s]
        return last, (max(stamps) if stamps else None)


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@contextmanager
def pod_clock(runner: Runner, kubectl: Path, namespace: str) -> Iterator[PodClock]:
    clock = PodClock()
    changes: queue.Queue[Change] = queue.Queue()
    stop = threading.Event()

    def record() -> None:
        while not stop.is_set():
            try:
                change = changes.get(timeout=0.1)
            except queue.Empty:
                continue
            at = time.time()
            for pod in change.objects:
                clock.see(pod, at)

    with kube_proxy(runner, kubectl, namespace) as base:
        watch = WatchStream(base, "pods", namespace, changes, stop)
        recorder = threading.Thread(target=record, daemon=True)
        watch.start()
        recorder.start()
        try:
            yield clock
        finally:
            # Late events still drain before the figures are taken.
            time.sleep(0.3)
            stop.set()
            recorder.join(timeout=2)
    watch.join(timeout=2)


# --- The ways of waiting ---------------------------------------------------------------------


@dataclass
class Outcome:
    """When a waiter ended, how, and what it said."""

    exited_at: float
    succeeded: bool
    capped: bool
    report: str


class Bench:
    def __init__(self, cluster: str, cap: float, workdir: Path) -> None:
        self.cluster = cluster
        self.cap = cap
        self.workdir = workdir
        self.kubeconfig = clusters.kubeconfig(cluster)
        self.kubectl = go_builds.binary("kubectl")
        self.helm = go_builds.binary("helm")
        self.runner = Runner(Context(), env={"KUBECONFIG": str(self.kubeconfig)})
        self.env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            # Helm's caches and settings stay in the throwaway folder, not in $HOME.
            "HELM_CACHE_HOME": str(workdir / "helm" / "cache"),
            "HELM_CONFIG_HOME": str(workdir / "helm" / "config"),
            "HELM_DATA_HOME": str(workdir / "helm" / "data"),
        }

    def k(self, *args: str, timeout: float = 120) -> str:
        return clusters.kubectl(self.cluster, *args, timeout=timeout)

    def apply(self, namespace: str, manifests: list[dict[str, Any]]) -> None:
        path = self.workdir / f"{namespace}.yaml"
        path.write_text(yaml.safe_dump_all(manifests))
        self.k("apply", "-n", namespace, "-f", str(path), timeout=300)

    def run_waiter(self, way: str, scenario: Scenario, namespace: str) -> Outcome:
        if way == "wait-rollout":
            self.apply(namespace, scenario.manifests)
            return self._wait_rollout(namespace)
        if way == "kubectl-loop":
            self.apply(namespace, scenario.manifests)
            return self._kubectl_loop(
                namespace, [m["metadata"]["name"] for m in scenario.manifests]
            )
        return self._helm(namespace, scenario)

    def _wait_rollout(self, namespace: str) -> Outcome:
        try:
            wait_for_rollout(
                self.runner,
                namespace,
                timeout=self.cap,
                kubectl=self.kubectl,
                stream=io.StringIO(),
            )
        except StepFailure as failure:
            capped = failure.why.startswith("Not rolled out within")
            return Outcome(time.time(), False, capped, f"{failure.why}\n{failure.details}")
        return Outcome(time.time(), True, False, "")

    def _kubectl_loop(self, namespace: str, names: list[str]) -> Outcome:
        deadline = time.monotonic() + self.cap
        said = []
        for name in sorted(names):
            command = [
                str(self.kubectl),
                "rollout",
                "status",
                f"deployment/{name}",
                "-n",
                namespace,
                "--timeout=10m",
            ]
            result = _run_capped(command, self.env, deadline)
            if result is None:
                return Outcome(time.time(), False, True, "\n".join(said))
            said.append(result.stdout + result.stderr)
            if result.returncode != 0:
                return Outcome(time.time(), False, False, "\n".join(said))
        return Outcome(time.time(), True, False, "")

    def _helm(self, namespace: str, scenario: Scenario) -> Outcome:
        chart = self.workdir / f"chart-{namespace}"
        (chart / "templates").mkdir(parents=True)
        (chart / "Chart.yaml").write_text(
            yaml.safe_dump({"apiVersion": "v2", "name": "bench", "version": "0.1.0"})
        )
        (chart / "templates" / "workloads.yaml").write_text(yaml.safe_dump_all(scenario.manifests))
        command = [
            str(self.helm),
            "upgrade",
            "--install",
            "bench",
            str(chart),
            "-n",
            namespace,
            "--wait=watcher",
            "--timeout=10m",
        ]
        result = _run_capped(command, self.env, time.monotonic() + self.cap)
        if result is None:
            return Outcome(time.time(), False, True, "")
        return Outcome(time.time(), result.returncode == 0, False, result.stdout + result.stderr)


def _run_capped(
    command: list[str], env: dict[str, str], deadline: float
) -> subprocess.CompletedProcess[str] | None:
    """Run `command`; None when it is still running at `deadline` (it is killed then)."""
    try:
        return subprocess.run(
            command,
            env=env,
            capture_output=True,
            text=True,
            timeout=max(0.1, deadline - time.monotonic()),
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None


# --- One run, and the table -------------------------------------------------------------------


@dataclass
class Figure:
    scenario: str
    way: str
    seconds: float | None  # None: capped
    api_seconds: float | None
    total: float
    named: str  # crash scenarios: does the report name the pod and the reason?
    cap: float = 0.0
    at_least: float | None = None  # capped: the figure is more than this
    note: str = ""


def measure(bench: Bench, scenario: Scenario, way: str) -> Figure:
    figure = _measure(bench, scenario, way)
    figure.cap = bench.cap
    return figure


def _measure(bench: Bench, scenario: Scenario, way: str) -> Figure:
    namespace = f"bench-{way}-{scenario.name}-{uuid.uuid4().hex[:5]}"
    bench.k("create", "namespace", namespace)
    try:
        with pod_clock(bench.runner, bench.kubectl, namespace) as clock:
            started = time.time()
            outcome = bench.run_waiter(way, scenario, namespace)
        total = outcome.exited_at - started
        if scenario.crash is None:
            if outcome.capped:
                last = clock.last_ready()[0] if clock.ready_at else started
                at_least = outcome.exited_at - last
                return Figure(scenario.name, way, None, None, total, "", at_least=at_least)
            if not outcome.succeeded:
                return Figure(
                    scenario.name, way, None, None, total, "", note=_first(outcome.report)
                )
            last, stamp = clock.last_ready()
            api = outcome.exited_at - stamp if stamp else None
            return Figure(scenario.name, way, outcome.exited_at - last, api, total, "")
        crashed = clock.crashed_at.get(scenario.crash)
        pod = clock.crashed_pod.get(scenario.crash, "?")
        named = "yes" if pod in outcome.report and "CrashLoopBackOff" in outcome.report else "no"
        if outcome.capped or crashed is None:
            at_least = outcome.exited_at - crashed if crashed is not None else None
            return Figure(scenario.name, way, None, None, total, named, at_least=at_least)
        return Figure(scenario.name, way, outcome.exited_at - crashed, None, total, named)
    finally:
        bench.k("delete", "namespace", namespace, "--wait=true", "--timeout=300s", timeout=320)


def _first(text: str) -> str:
    return text.strip().splitlines()[0][:80] if text.strip() else ""


def table(figures: list[Figure]) -> str:
    rows = [
        ("SCENARIO", "WAY", "FIGURE", "API STAMP", "TOTAL", "x WAIT-ROLLOUT", "NAMES POD+REASON")
    ]
    ours = {f.scenario: f.seconds for f in figures if f.way == "wait-rollout"}
    for f in figures:
        if f.note:
            shown = "failed"
        elif f.seconds is None:
            shown = f"> {f.at_least or f.cap:.0f}s (cap {f.cap:g}s)"
        else:
            shown = f"{f.seconds:.3f}s"
        api = f"{f.api_seconds:.1f}s" if f.api_seconds is not None else "-"
        base = ours.get(f.scenario)
        if f.way == "wait-rollout" or not base:
            ratio = "-"
        elif f.seconds is None:
            ratio = f"> {(f.at_least or f.cap) / base:.0f}x"
        else:
            ratio = f"{f.seconds / base:.1f}x"
        rows.append((f.scenario, f.way, shown, api, f"{f.total:.1f}s", ratio, f.named or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    notes = [f"  {f.scenario} / {f.way}: {f.note}" for f in figures if f.note]
    return "\n".join(lines + (["notes:", *notes] if notes else []))


# KWOK nodes take 110 pods each, as a kubelet does by default.
PODS_PER_NODE = 110


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--cluster",
        default="binder-bench",
        help="local cluster to run on; started (and stopped after) when not up",
    )
    parser.add_argument("--sizes", default="5,50,200", help="clean scenarios: workload counts")
    parser.add_argument(
        "--healthy", type=int, default=20, help="healthy workloads beside the crash"
    )
    parser.add_argument(
        "--cap",
        type=float,
        default=120.0,
        help="crash scenario: seconds before a waiter is stopped",
    )
    parser.add_argument(
        "--clean-cap",
        type=float,
        default=600.0,
        help="clean scenarios: seconds before a waiter is stopped (their own timeout is 10m)",
    )
    parser.add_argument("--ways", default=",".join(WAYS), help=f"subset of {','.join(WAYS)}")
    parser.add_argument("--repeat", type=int, default=1, help="runs per scenario and way (median)")
    parser.add_argument("--no-crash", action="store_true", help="skip the crash scenario")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    # A stopped run still ends its kubectl and helm children (subprocess.run kills
    # them on the way out) and deletes its namespace.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    ways = [w for w in args.ways.split(",") if w]
    scenarios = [clean(int(size)) for size in args.sizes.split(",") if size]
    if not args.no_crash:
        scenarios.append(crash(args.healthy))
    # Every pod of the largest scenario must fit, with room for the cluster's own.
    largest = max(len(s.manifests) for s in scenarios)
    nodes = max(clusters.NODES_PER_CLUSTER, -(-largest // PODS_PER_NODE) + 1)
    started_here = not clusters.is_up(args.cluster)
    clusters.up(args.cluster, nodes=nodes)
    figures: list[Figure] = []
    try:
        with tempfile.TemporaryDirectory(prefix="rollout-bench-") as folder:
            for scenario in scenarios:
                cap = args.cap if scenario.crash else args.clean_cap
                bench = Bench(args.cluster, cap, Path(folder))
                for way in ways:
                    runs = [measure(bench, scenario, way) for _ in range(args.repeat)]
                    figures.append(_median(runs))
                    f = figures[-1]
                    shown = "-" if f.seconds is None else f"{f.seconds:.3f}s"
                    print(
                        f"{scenario.name:>16} {way:<13} {shown} (total {f.total:.1f}s)", flush=True
                    )
        print()
        print(table(figures))
        if args.json:
            args.json.write_text(json.dumps([f.__dict__ for f in figures], indent=2))
    finally:
        if started_here:
            clusters.down(args.cluster)
    return 0


def _median(runs: list[Figure]) -> Figure:
    ordered = sorted(runs, key=lambda r: math.inf if r.seconds is None else r.seconds)
    return ordered[len(ordered) // 2]


if __name__ == "__main__":
    sys.exit(main())
