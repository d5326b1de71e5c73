"""wait-rollout, after the upgrade: wait until every workload of the release has rolled out.

Every Deployment, DaemonSet and StatefulSet of the namespace is waited on at
once, under one deadline, from watch streams over one `kubectl proxy` (so every
way kubectl authenticates, GKE's exec plugin included, works unchanged). What
"rolled out" means is `kubectl rollout status`'s rule (`tasks/steps/rollout_status.py`).

A pod that will never get ready or a Deployment past its progress deadline
fails the step within seconds with a one-screen diagnosis: the object, the pod,
the container, the reason, the recent events and the last log lines. A pod that
finds the nodes full is another matter on a busy BinderHub: the nodes, claims
and autoscaler status are read, only while such a pod waits, to tell "full right
now" from "can never fit" (`tasks/steps/rollout_fit.py`).
"""

from __future__ import annotations

import json
import queue
import re
import select
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import requests

from tasks.adapters import toolchain
from tasks.config.context import StepContext
from tasks.core import web
from tasks.core.errors import StepFailure
from tasks.core.output import draws_in_place, say
from tasks.core.report import abridged, counted, format_seconds
from tasks.core.runner import Companion, Runner
from tasks.core.step import Step
from tasks.steps.rollout_fit import AUTOSCALER_CONFIGMAP, AUTOSCALER_NAMESPACE, ClusterFacts, Note
from tasks.steps.rollout_status import (
    FIXES,
    READY,
    UNSCHEDULABLE_GRACE,
    UNWAITABLE,
    Blocker,
    Change,
    NamespaceView,
    Obj,
    PodProblem,
    RolloutReport,
    RolloutWaiter,
    Verdict,
    describe_event,
    pod_ready,
    pod_state,
    scheduled_on,
    workload_key,
)

RESOURCES = {
    "deployments": "/apis/apps/v1/namespaces/{ns}/deployments",
    "daemonsets": "/apis/apps/v1/namespaces/{ns}/daemonsets",
    "statefulsets": "/apis/apps/v1/namespaces/{ns}/statefulsets",
    "replicasets": "/apis/apps/v1/namespaces/{ns}/replicasets",
    "controllerrevisions": "/apis/apps/v1/namespaces/{ns}/controllerrevisions",
    "pods": "/api/v1/namespaces/{ns}/pods",
    "events": "/api/v1/namespaces/{ns}/events",
}
# Read, not watched, while a pod of the release finds no node: what tells a full
# cluster from a pod that can never fit, and whether an autoscaler adds nodes.
FACTS = {
    "nodes": "/api/v1/nodes",
    "storage_classes": "/apis/storage.k8s.io/v1/storageclasses",
    "claims": "/api/v1/namespaces/{ns}/persistentvolumeclaims",
    "autoscaler_status": (
        f"/api/v1/namespaces/{AUTOSCALER_NAMESPACE}/configmaps/{AUTOSCALER_CONFIGMAP}"
    ),
}

LOG_LINES = 20
LOG_LINE_WIDTH = 300
PROXY_START_SECONDS = 15.0
# How often time-based rules (grace periods, the deadline, the progress clock) are checked.
TICK_SECONDS = 0.25
# The API server ends a watch after this; the stream reconnects from its last version.
WATCH_SECONDS = 290
HEARTBEAT_SECONDS = 30.0


# --- Reaching the API: one kubectl proxy, watch streams over it ---------------------------


class ApiError(Exception):
    """The API answered a request with an error status."""

    def __init__(self, status: int, path: str, body: str) -> None:
        self.status = status
        self.path = path
        self.body = body
        super().__init__(f"HTTP {status} for {path}: {_api_message(body)}")


def _api_message(body: str) -> str:
    try:
        return str(json.loads(body).get("message") or body).strip()
    except (ValueError, AttributeError):
        return body.strip()[:300]


def proxy_command(kubectl: str | Path, namespace: str) -> list[str]:
    """`kubectl proxy` on a free loopback port, answering read-only requests on the namespace,
    and on the few cluster objects that say whether a pod can find a node (FACTS).

    The filter keeps the proxy from lending the deploy credentials to anything
    else on the machine that finds the port while it runs.
    """
    ns = re.escape(namespace)
    accept = [
        rf"^/api/v1/namespaces/{ns}$",
        rf"^/api/v1/namespaces/{ns}/(pods|events|persistentvolumeclaims)$",
        rf"^/api/v1/namespaces/{ns}/pods/[^/]+/log$",
        rf"^/apis/apps/v1/namespaces/{ns}/[a-z]+$",
        *(f"^{re.escape(path)}$" for name, path in FACTS.items() if name != "claims"),
    ]
    return [
        str(kubectl),
        "proxy",
        "--port=0",
        "--address=127.0.0.1",
        f"--accept-paths={','.join(accept)}",
        "--reject-methods=^(POST|PUT|PATCH|DELETE|CONNECT|OPTIONS)$",
    ]


@contextmanager
def kube_proxy(runner: Runner, kubectl: str | Path, namespace: str) -> Iterator[str]:
    """Start `kubectl proxy`; yield its base URL; stop it on the way out, whatever happens."""
    command = proxy_command(kubectl, namespace)
    with runner.companion(command, "Install kubectl, or run `invoke cluster.build`.") as proxy:
        yield _proxy_address(proxy, runner.describe(command))


def _proxy_address(proxy: Companion, shown: str) -> str:
    process, errors = proxy.process, proxy.errors
    assert process.stdout is not None
    deadline = time.monotonic() + PROXY_START_SECONDS
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.2)
        if ready:
            line = process.stdout.readline()
            found = re.search(r"Starting to serve on ([\d.]+:\d+)", line)
            if found:
                return f"http://{found.group(1)}"
            if not line:
                break
        elif process.poll() is not None:
            break
    process.kill()
    process.wait()
    errors.seek(0)
    said = errors.read().strip()
    raise StepFailure(
        f"kubectl proxy did not start: {said.splitlines()[-1] if said else 'no output'}.",
        "Check the kubeconfig and that kubectl works: kubectl version.",
        details=f"$ {shown}\n{said}",
    )


class Api:
    """GET requests to the API through the proxy."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session = web.loopback_session()

    def get(
        self, path: str, params: dict[str, Any] | None = None, seconds: float = 30
    ) -> requests.Response:
        response = self.session.get(self.base + path, params=params, timeout=(5, seconds))
        if response.status_code != 200:
            raise ApiError(response.status_code, path, response.text)
        return response


def read_facts(api: Api, namespace: str, now: float) -> ClusterFacts:
    """The nodes, StorageClasses, the namespace's claims and the autoscaler's status, as far as
    the deploy credentials may read them; what may not be read is named, never fatal."""
    found: dict[str, Any] = {}
    unreadable = []
    for name, path in FACTS.items():
        path = path.format(ns=namespace)
        try:
            if name == "autoscaler_status":
                found[name] = api.get(path, seconds=10).json()
            else:
                found[name] = tuple(_list_all(api, path)[0])
        except ApiError as error:
            # No status ConfigMap is how a cluster without an autoscaler answers.
            if not (name == "autoscaler_status" and error.status == 404):
                unreadable.append(f"{path} (HTTP {error.status})")
        except (requests.RequestException, ValueError) as error:
            unreadable.append(f"{path} ({error})")
    return ClusterFacts(read_at=now, unreadable=tuple(unreadable), **found)


def _list_all(api: Api, path: str, seconds: float = 10) -> tuple[list[Obj], Obj]:
    """Every object at `path`, page by page, and the last page (its kind and resourceVersion)."""
    items: list[Obj] = []
    params: dict[str, Any] = {"limit": 500}
    while True:
        page = api.get(path, params, seconds).json()
        items += page.get("items") or []
        more = (page.get("metadata") or {}).get("continue")
        if not more:
            return items, page
        params["continue"] = more


def _lines(chunks: Iterable[str | bytes]) -> Iterator[bytes]:
    """The whole lines of a watch stream, each as soon as its chunk arrives.

    `iter_content(chunk_size=None)` hands over what the server sent as it comes;
    requests' own `iter_lines` takes only a fixed chunk size, and would hold an
    event back until the next ones fill its buffer.
    """
    pending = b""
    for chunk in chunks:
        pending += chunk if isinstance(chunk, bytes) else chunk.encode()
        *lines, pending = pending.split(b"\n")
        yield from lines
    if pending:
        yield pending


class WatchStream(threading.Thread):
    """Lists one kind of object, then watches it from the list's version, forever.

    A 410 Gone (the version fell out of the API server's window) starts over
    with a fresh list, so no change is ever missed; dropped connections are
    retried a few times before the stream gives up and reports the error.
    """

    RETRIES = 4

    def __init__(
        self,
        base: str,
        resource: str,
        namespace: str,
        out: queue.Queue[Change],
        stop: threading.Event,
    ) -> None:
        super().__init__(daemon=True, name=f"watch-{resource}")
        self.api = Api(base)
        self.resource = resource
        self.path = RESOURCES[resource].format(ns=namespace)
        self.out = out
        self.stop = stop

    def run(self) -> None:
        failures = 0
        try:
            while not self.stop.is_set():
                try:
                    version = self.list_all()
                    self.follow(version)
                    failures = 0
                except requests.RequestException:
                    failures += 1
                    if failures > self.RETRIES or self.stop.is_set():
                        raise
                    self.stop.wait(0.5 * failures)
        except Exception as error:
            if not self.stop.is_set():
                self.out.put(Change(self.resource, "ERROR", error=error))

    def list_all(self) -> str:
        """Report every object as one SYNC change; return the list's version."""
        items, page = _list_all(self.api, self.path, seconds=60)
        # Listed items carry no kind; watched ones do. Give them theirs.
        kind = page.get("kind", "").removesuffix("List")
        for item in items:
            item.setdefault("kind", kind)
        self.out.put(Change(self.resource, "SYNC", items))
        return str((page.get("metadata") or {}).get("resourceVersion", ""))

    def follow(self, version: str) -> None:
        """Follow changes from `version`; return when a fresh list is needed."""
        while not self.stop.is_set():
            params = {
                "watch": "1",
                "resourceVersion": version,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": WATCH_SECONDS,
            }
            response = self.api.session.get(
                self.api.base + self.path,
                params=params,
                stream=True,
                timeout=(5, WATCH_SECONDS + 30),
            )
            try:
                if response.status_code == 410:
                    return
                if response.status_code != 200:
                    raise ApiError(response.status_code, self.path, response.text)
                for line in _lines(response.iter_content(chunk_size=None)):
                    if not line:
                        continue
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            return
                        raise ApiError(obj.get("code", 0), self.path, json.dumps(obj))
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if kind != "BOOKMARK":
                        self.out.put(Change(self.resource, kind, [obj]))
            finally:
                response.close()


# --- Progress on screen --------------------------------------------------------------------


class Progress:
    """Ready out of desired, per workload, and what it waits on (a node, a claim): redrawn in
    place on a terminal, changes only in CI."""

    MAX_ROWS = 15

    def __init__(self, stream: TextIO, deadline_seconds: float) -> None:
        self.stream = stream
        self.tty = draws_in_place(stream)
        self.deadline_seconds = deadline_seconds
        self.shown: dict[str, tuple[str, int, int, str]] = {}
        self.drawn: list[str] = []
        self.drawn_at = 0.0
        self.last_heartbeat = 0.0

    def update(
        self, verdicts: dict[str, Verdict], elapsed: float, notes: dict[str, Note] | None = None
    ) -> None:
        if self.tty:
            self._redraw(verdicts, elapsed, notes or {})
        else:
            self._print_changes(verdicts, elapsed, notes or {})

    def finish(self) -> None:
        """Leave the last drawing on screen; what follows starts below it."""
        self.drawn = []

    def _redraw(self, verdicts: dict[str, Verdict], elapsed: float, notes: dict[str, Note]) -> None:
        waiting = [(k, v) for k, v in verdicts.items() if v.state not in (READY, UNWAITABLE)]
        done = len(verdicts) - len(waiting)
        lines = [
            f"rollout: {done}/{len(verdicts)} workloads ready, "
            f"{format_seconds(elapsed)} of {format_seconds(self.deadline_seconds)}"
        ]
        for key, verdict in waiting[: self.MAX_ROWS]:
            lines.append(f"  {_waiting_line(key, verdict, notes.get(key))}")
        if len(waiting) > self.MAX_ROWS:
            lines.append(f"  ... and {len(waiting) - self.MAX_ROWS} more not ready")
        # The clock alone changes every tick; a redraw a second is enough for it.
        if self.drawn and elapsed - self.drawn_at < 1.0 and lines[1:] == self.drawn[1:]:
            return
        # Cursor up over the previous drawing, erase to the end of the screen, draw again.
        prefix = f"\x1b[{len(self.drawn)}F\x1b[J" if self.drawn else ""
        say(prefix + "\n".join(lines), stream=self.stream)
        self.drawn = lines
        self.drawn_at = elapsed

    def _print_changes(
        self, verdicts: dict[str, Verdict], elapsed: float, notes: dict[str, Note]
    ) -> None:
        changed = False
        for key, verdict in verdicts.items():
            note = notes.get(key)
            state = (verdict.state, verdict.ready, verdict.desired, note.kind if note else "")
            if self.shown.get(key) == state:
                continue
            self.shown[key] = state
            changed = True
            if verdict.state == READY:
                line = f"{key}: {verdict.ready}/{verdict.desired} ready, rolled out"
                line += f" after {format_seconds(elapsed)}"
            elif verdict.state == UNWAITABLE:
                line = f"{key}: not waited on: {verdict.message}"
            else:
                line = _waiting_line(key, verdict, note)
            say(line, stream=self.stream)
        if changed:
            self.last_heartbeat = elapsed
        elif elapsed - self.last_heartbeat >= HEARTBEAT_SECONDS:
            self.last_heartbeat = elapsed
            waiting = [k for k, v in verdicts.items() if v.state not in (READY, UNWAITABLE)]
            shown = abridged([f"{k} ({notes[k].text})" if k in notes else k for k in waiting], 5)
            say(f"still waiting after {format_seconds(elapsed)}: {shown}", stream=self.stream)


def _waiting_line(key: str, verdict: Verdict, note: Note | None) -> str:
    line = f"{key}: {verdict.ready}/{verdict.desired} ready ({verdict.message})"
    return f"{line}; {note.text}" if note else line


def wait_for_rollout(
    runner: Runner,
    namespace: str,
    *,
    timeout: float,
    unschedulable_grace: float = UNSCHEDULABLE_GRACE,
    kubectl: str | Path = "kubectl",
    stream: TextIO | None = None,
) -> RolloutReport:
    """Wait until every workload of `namespace` has rolled out; raise StepFailure when one will not.

    The KUBECONFIG of `runner.env` names the cluster. On success the report
    holds each workload's time to ready; the per-object table has been printed.
    """
    out = stream or sys.stdout
    if runner.dry_run:
        return _dry_run(runner, namespace, timeout, kubectl, out)
    waiter = RolloutWaiter(namespace, timeout, unschedulable_grace)
    changes: queue.Queue[Change] = queue.Queue()
    stop = threading.Event()
    streams: list[WatchStream] = []
    try:
        with kube_proxy(runner, kubectl, namespace) as base:
            _check_namespace(Api(base), namespace)
            streams = [WatchStream(base, name, namespace, changes, stop) for name in RESOURCES]
            for watch_stream in streams:
                watch_stream.start()
            progress = Progress(out, timeout)
            return _wait(waiter, changes, Api(base), progress, out, runner.checkpoint)
    finally:
        # The proxy is gone by now, which ends every stream's connection; closing a
        # response from this thread instead would block on the reader's lock.
        stop.set()
        for watch_stream in streams:
            watch_stream.join(timeout=2)


def _wait(
    waiter: RolloutWaiter,
    changes: queue.Queue[Change],
    api: Api,
    progress: Progress,
    out: TextIO,
    checkpoint: Callable[[], None],
) -> RolloutReport:
    """Follow the changes until a verdict; `checkpoint` is where a federation's member hears
    of an interrupt (only the main thread gets Ctrl-C)."""
    namespace = waiter.namespace
    deadline = waiter.started + waiter.timeout
    announced = False
    looked = -TICK_SECONDS
    while True:
        checkpoint()
        now = time.monotonic()
        try:
            change = changes.get(timeout=max(0.0, min(TICK_SECONDS, deadline - now)))
        except queue.Empty:
            change = None
        changed = False
        while change is not None:
            if change.type == "ERROR":
                raise _stream_failure(change, namespace)
            changed = waiter.view.apply(change, time.monotonic()) or changed
            try:
                change = changes.get_nowait()
            except queue.Empty:
                change = None
        now = time.monotonic()
        elapsed = now - waiter.started
        if not waiter.view.complete:
            if now >= deadline:
                raise StepFailure(
                    f"Could not list the objects of namespace {namespace} within "
                    f"{format_seconds(waiter.timeout)}.",
                    "Check that the cluster answers: kubectl get pods -n " + namespace,
                )
            continue
        # User pods coming and going change no verdict: the clock's rules are looked at
        # every tick, the workloads again only when something of theirs changed.
        if not changed and now - looked < TICK_SECONDS:
            continue
        looked = now
        verdicts = waiter.verdicts(now)
        if not verdicts:
            say(
                f"namespace {namespace} has no Deployment, DaemonSet or StatefulSet: "
                "nothing to wait for",
                stream=out,
            )
            return RolloutReport(namespace, [], elapsed)
        if not announced:
            say(
                f"waiting for {counted(len(verdicts), 'workload')} in namespace {namespace} "
                f"(deadline {format_seconds(waiter.timeout)})",
                stream=out,
            )
            announced = True
        blocker = waiter.blocker(verdicts, now)
        if blocker is None and waiter.wants_facts(now):
            # A pod of the release found no node: what the cluster is made of decides.
            waiter.view.facts = read_facts(api, namespace, now)
            blocker = waiter.blocker(verdicts, now)
        progress.update(verdicts, elapsed, waiter.notes)
        done = all(v.state in (READY, UNWAITABLE) for v in verdicts.values())
        if blocker or done or now >= deadline:
            progress.finish()
            report = RolloutReport(namespace, waiter.results(verdicts, blocker), elapsed)
            say(report.table(), stream=out)
            if blocker:
                raise _diagnose(waiter.view, api, blocker, namespace, out)
            if done:
                return report
            raise _deadline_failure(waiter, verdicts)


def _check_namespace(api: Api, namespace: str) -> None:
    try:
        api.get(f"/api/v1/namespaces/{namespace}")
    except ApiError as error:
        if error.status == 404:
            raise StepFailure(
                f"Namespace {namespace} does not exist on the cluster.",
                "Check `namespace:` of the environment in config/environments.yaml, "
                "and that the upgrade step ran.",
            ) from None
        if error.status in (401, 500, 502, 503):
            raise _api_failure(error, namespace) from None
        # 403: the deploy account may read its namespace's objects without reading the
        # namespace itself; the watches will tell.
    except requests.RequestException as error:
        raise StepFailure(f"The API did not answer: {error}.") from None


def _api_failure(error: ApiError, namespace: str) -> StepFailure:
    if error.status == 403:
        return StepFailure(
            f"The deploy credentials may not read {error.path} in namespace {namespace}.",
            "Grant the deploy account get, list and watch on Deployments, DaemonSets, "
            "StatefulSets, ReplicaSets, ControllerRevisions, Pods, Events and pods/log there "
            "(and, to tell a full cluster from a pod that never fits, list on Nodes, "
            "StorageClasses and PersistentVolumeClaims).",
            details=error.body,
        )
    if error.status in (500, 502, 503) and not error.body.lstrip().startswith("{"):
        # Plain text is the proxy's own voice: it could not reach the API server.
        return StepFailure(
            f"Could not reach the cluster: {error.body.strip()}",
            "Check that the cluster is up and the kubeconfig points at it: kubectl version.",
        )
    return StepFailure(
        f"The cluster answered {error.path} with HTTP {error.status}: {_api_message(error.body)}",
        "Check the cluster's credentials and that it is up: kubectl get pods -n " + namespace,
        details=error.body,
    )


def _stream_failure(change: Change, namespace: str) -> StepFailure:
    error = change.error
    if isinstance(error, ApiError):
        return _api_failure(error, namespace)
    return StepFailure(
        f"Lost the watch on {change.resource} in namespace {namespace}: {error}.",
        f"Check that the cluster answers (kubectl get pods -n {namespace}) and run the step again.",
    )


def _diagnose(
    view: NamespaceView, api: Api, blocker: Blocker, namespace: str, out: TextIO
) -> StepFailure:
    """One screen on why a workload will not roll out: pod, container, reason, events, logs."""
    key = workload_key(blocker.workload)
    kind = blocker.workload["kind"]
    name = blocker.workload["metadata"]["name"]
    problem = blocker.problem
    if problem is None:
        # A Deployment-level failure: name the pod that holds it back, when one does.
        pods = view.current_pods(blocker.workload)
        stuck = [p for p in pods if not pod_ready(p)]
        pod = stuck[0] if stuck else None
        why = f"{key}: {blocker.reason}"
        if pod is not None:
            why += f"; pod {pod['metadata']['name']} is {pod_state(pod)}"
    else:
        pod = next(
            (p for p in view.objects["pods"].values() if p["metadata"]["name"] == problem.pod),
            None,
        )
        where = f"pod {problem.pod}" + (
            f", container {problem.container}" if problem.container else ""
        )
        restarts = f" (restarted {problem.restarts} times)" if problem.restarts else ""
        why = f"{key}: {where}: {blocker.reason}{restarts}"

    facts = [f"message: {blocker.message}" if blocker.message else "message: (none)"]
    if problem and problem.last_exit:
        facts.append(f"last exit: {problem.last_exit}")
    reason_fix = FIXES.get(blocker.reason, "")
    if blocker.fit is not None:
        why += f": {blocker.fit.summary}"
        facts += blocker.fit.details
        reason_fix = blocker.fit.fix
        if view.facts is not None and view.facts.unreadable:
            facts.append(f"could not read: {', '.join(view.facts.unreadable)}")
    owners = [(kind, name)]
    if pod is not None:
        owners = [*view.owner_chain(pod)[::-1], ("Pod", pod["metadata"]["name"])]
        if (kind, name) not in owners:
            owners.insert(0, (kind, name))
    events = {owner: view.events_of(*owner)[-5:] for owner in owners}
    logs: tuple[str, list[str]] | None = None
    if pod is not None:
        container = problem.container if problem else _first_unready_container(pod)
        logs = _log_section(api, namespace, pod, container, problem)

    full = [why, *facts]
    for (owner_kind, owner_name), found in events.items():
        if found:
            full.append(f"events of {owner_kind.lower()}/{owner_name}:")
            full += [f"  {describe_event(e)}" for e in found]
    if logs:
        full.append(logs[0])
        full += [f"  {line}" for line in logs[1]]
    say("\n".join(full), stream=out)

    if pod is None:
        command = f"kubectl describe {key} -n {namespace}"
    elif problem and problem.reason == "CrashLoopBackOff":
        command = f"kubectl logs --previous -n {namespace} {problem.pod} -c {problem.container}"
    else:
        command = f"kubectl describe pod -n {namespace} {pod['metadata']['name']}"
    fix = f"{reason_fix} More: {command}".strip()
    return StepFailure(why, fix, details=compact_details(facts, events, logs))


# The failure screen shows the last dozen lines of the details.
DETAIL_LINES = 12


def compact_details(
    facts: list[str],
    events: dict[tuple[str, str], list[Obj]],
    logs: tuple[str, list[str]] | None,
) -> str:
    """The diagnosis in a dozen lines: the message, the events that matter, the last log lines.

    Owners' routine events (scaling, creating pods) say nothing the reason does
    not; only their warnings are kept. The log lines get the room left.
    """
    lines = list(facts)
    chosen: list[Obj] = []
    for (owner_kind, _), found in events.items():
        if owner_kind == "Pod":
            chosen += found[-3:]
        else:
            chosen += [e for e in found if e.get("type") == "Warning"][-2:]
    if chosen:
        lines.append("events:")
        lines += [f"  {e['involvedObject'].get('name', '')}: {describe_event(e)}" for e in chosen]
    if logs:
        room = max(1, DETAIL_LINES - len(lines) - 1)
        lines.append(logs[0])
        lines += [f"  {line}" for line in logs[1][-room:]]
    return "\n".join(lines)


def _first_unready_container(pod: Obj) -> str:
    for status in (pod.get("status") or {}).get("containerStatuses") or ():
        if not status.get("ready"):
            return str(status.get("name", ""))
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    return str(containers[0].get("name", ""))


def _log_section(
    api: Api, namespace: str, pod: Obj, container: str, problem: PodProblem | None
) -> tuple[str, list[str]]:
    name = pod["metadata"]["name"]
    if not scheduled_on(pod):
        return ("logs:", ["none: the pod was never scheduled, so no container started"])
    if problem and problem.never_started:
        return (f"logs of container {container}:", ["none: the container never started"])
    # A crash-looping container's useful lines are those of the run that crashed.
    attempts = [True, False] if problem and problem.reason == "CrashLoopBackOff" else [False]
    errors = []
    for previous in attempts:
        params: dict[str, Any] = {"container": container, "tailLines": LOG_LINES}
        if previous:
            params["previous"] = "true"
        try:
            # Logs come from the node's kubelet; an unreachable one must not hold the report.
            text = api.get(f"/api/v1/namespaces/{namespace}/pods/{name}/log", params, 10).text
        except (ApiError, requests.RequestException) as error:
            errors.append(_api_message(error.body) if isinstance(error, ApiError) else str(error))
            continue
        lines = [line[:LOG_LINE_WIDTH] for line in text.rstrip("\n").splitlines()[-LOG_LINES:]]
        if lines:
            run = "previous run" if previous else "current run"
            return (f"last log lines of container {container} ({run}):", lines)
    reason = f" ({errors[-1][:200]})" if errors else ""
    return (
        f"logs of container {container}:",
        [f"the cluster has no logs for this container{reason}"],
    )


def _deadline_failure(waiter: RolloutWaiter, verdicts: dict[str, Verdict]) -> StepFailure:
    waiting = [k for k, v in verdicts.items() if v.state not in (READY, UNWAITABLE)]
    by_key = {workload_key(w): w for w in waiter.view.workloads()}
    lines = []
    for key in waiting:
        verdict = verdicts[key]
        lines.append(_waiting_line(key, verdict, waiter.notes.get(key)))
        unready = [p for p in waiter.view.current_pods(by_key[key]) if not pod_ready(p)]
        lines += [f"  pod {p['metadata']['name']}: {pod_state(p)}" for p in unready[:3]]
    if len(lines) > DETAIL_LINES:
        hidden = len(lines) - DETAIL_LINES + 1
        lines = [*lines[: DETAIL_LINES - 1], f"... {hidden} more lines: see the table above"]
    shown = abridged(waiting, 5)
    return StepFailure(
        f"Not rolled out within {format_seconds(waiter.timeout)}: {shown}.",
        "Look at the pods named below (kubectl describe pod); if this environment is only "
        "slow, raise timeouts.rollout in config/environments.yaml or pass --timeout.",
        details="\n".join(lines),
    )


def _dry_run(
    runner: Runner, namespace: str, timeout: float, kubectl: str | Path, out: TextIO
) -> RolloutReport:
    say(runner.dry_run_line(proxy_command(kubectl, namespace)), stream=out)
    for template in RESOURCES.values():
        path = template.format(ns=namespace)
        say(f"[dry-run] GET {path}, then watch it from the list's resourceVersion", stream=out)
    for path in FACTS.values():
        say(f"[dry-run] GET {path.format(ns=namespace)} while a pod finds no node", stream=out)
    say(
        f"[dry-run] wait up to {format_seconds(timeout)} for every Deployment, DaemonSet and "
        f"StatefulSet of namespace {namespace}",
        stream=out,
    )
    return RolloutReport(namespace, [], 0.0)


# --- The step ------------------------------------------------------------------------------


def wait(
    ctx: StepContext, timeout: float | None = None, unschedulable_grace: float | None = None
) -> str:
    """The step's domain function: wait for the environment's release; return the summary note."""
    env = ctx.environment
    try:
        report = wait_for_rollout(
            ctx.runner,
            ctx.target.namespace,
            timeout=timeout or env.timeouts.rollout,
            unschedulable_grace=unschedulable_grace or UNSCHEDULABLE_GRACE,
            # The runner's order: the tools folder, the pinned builds, then PATH.
            kubectl=toolchain.locate("kubectl", ctx.runner.tool_dirs) or "kubectl",
        )
    except StepFailure as failure:
        raise for_this_environment(failure, ctx) from None
    if ctx.dry_run:
        return f"would wait for the workloads of namespace {ctx.target.namespace}"
    return ctx.run.masker.mask(report.note())


def for_this_environment(failure: StepFailure, ctx: StepContext) -> StepFailure:
    """Make the suggested commands runnable as printed, and name the way back."""
    if "More: kubectl " not in failure.fix:
        return failure  # not a workload that failed to roll out
    kubeconfig = ctx.runner.env.get("KUBECONFIG", "")
    if kubeconfig and not kubeconfig.startswith(tempfile.gettempdir()):
        with_config = f"More: kubectl --kubeconfig {kubeconfig} "
        failure.fix = failure.fix.replace("More: kubectl ", with_config)
    failure.fix += (
        "\n       To return to the last verified revision: "
        f"invoke rollback --env={ctx.environment.name}"
    )
    return failure


def seconds(value: str | float | None, flag: str) -> float | None:
    """A flag's value in seconds: invoke hands over flags without a default as text."""
    if value is None:
        return None
    try:
        parsed = float(value)
    except ValueError:
        parsed = -1.0
    if parsed <= 0:
        raise StepFailure(f"{flag} must be a positive number of seconds, not {value!r}.")
    return parsed


WAIT_ROLLOUT = Step("wait-rollout", wait, needs_cluster=True, per_release=True, rolls_back=True)
