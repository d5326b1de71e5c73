"""The local clusters, against real ones: no mocks.

Cluster tests share one session cluster (`local_cluster`, binder-staging by default)
and each work in a namespace of their own. The down test uses a throwaway cluster so
the shared one keeps running.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from invoke.exceptions import Exit

from sandbox import clusters
from tasks.adapters import go_builds
from tests.fixtures.cluster import LocalCluster

THROWAWAY_CLUSTER = "binder-test-down"


def wait_until(check: Callable[[], object], seconds: float, what: str) -> object:
    """Poll `check` until it returns something truthy; fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds:g}s waiting for {what}")
        time.sleep(0.5)


@pytest.fixture
def namespace(local_cluster: LocalCluster) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:8]}"
    local_cluster.kubectl("create", "namespace", name)
    # The service account controller fills in a new namespace shortly after creation.
    wait_until(
        lambda: clusters.kubectl(
            local_cluster.name, "-n", name, "get", "serviceaccount", "default", check=False
        ),
        30,
        f"the default service account in {name}",
    )
    yield name
    local_cluster.kubectl("delete", "namespace", name, "--wait=false")


def deployment(name: str, replicas: int = 1, fail: str | None = None) -> dict:
    labels = {"app": name}
    if fail:
        labels[clusters.FAIL_LABEL] = fail
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "main", "image": "registry.invalid/app:1"}]},
            },
        },
    }


def apply(cluster: LocalCluster, namespace: str, manifest: dict, tmp_path: Path) -> None:
    path = tmp_path / f"{manifest['metadata']['name']}.json"
    path.write_text(json.dumps(manifest))
    cluster.kubectl("-n", namespace, "apply", "-f", str(path))


def pods(cluster: LocalCluster, namespace: str, app: str) -> list[dict]:
    out = cluster.kubectl("-n", namespace, "get", "pods", "-l", f"app={app}", "-o", "json")
    return json.loads(out)["items"]


def pod_table(cluster: LocalCluster, namespace: str, app: str) -> str:
    return cluster.kubectl("-n", namespace, "get", "pods", "-l", f"app={app}", "--no-headers")


# --- tools: no cluster needed ------------------------------------------------


def test_versions_come_from_tools_yaml() -> None:
    versions = go_builds.pinned_versions()
    assert set(versions) >= {"kubernetes", "etcd", "kwok", "helm"}
    assert go_builds.staging_version(versions["kubernetes"]).startswith("v0.")


def test_missing_binary_names_the_build_task(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(go_builds, "CACHE_ROOT", tmp_path)
    with pytest.raises(Exit) as error:
        go_builds.binary("helm")
    assert "invoke cluster.build" in str(error.value.message)
    with pytest.raises(Exit):
        go_builds.binary("no-such-tool")


def test_closest_staging_version_fallback() -> None:
    published = ["v0.35.4", "v0.36.0", "v0.36.1", "v0.37.0-alpha.1"]
    assert go_builds.closest_version(published, "v0.36.3") == "v0.36.1"
    assert go_builds.closest_version(["v0.35.4"], "v0.36.3") == "v0.35.4"
    assert go_builds.closest_version([], "v0.36.3") is None


@pytest.mark.parametrize("method", ["install", "wrapper"])
def test_build_failure_names_module_version_and_log(method: str, tmp_path: Path) -> None:
    version = "v0.0.999"
    component = go_builds.Component(
        key="kwok",
        module="sigs.k8s.io/kwok",
        packages={"kwok": "sigs.k8s.io/kwok/cmd/kwok"},
        method=method,
        ldflags=lambda v: [],
        version_args={"kwok": ["--version"]},
        version_text=lambda v: v,
    )
    started = time.monotonic()
    with pytest.raises(Exit) as error:
        go_builds.build_component(component, version, ["kwok"], tmp_path, echo=lambda _msg: None)
    message = str(error.value.message)
    assert f"sigs.k8s.io/kwok@{version}" in message
    log = Path(message.rsplit("Full log: ", 1)[1].strip())
    assert log.is_file() and log.is_relative_to(tmp_path)
    assert version in log.read_text()
    assert "\n" not in message
    assert time.monotonic() - started < 60


# --- built tools --------------------------------------------------------------


@pytest.mark.cluster
def test_cached_tools_are_reused_quickly() -> None:
    go_builds.ensure_built(echo=lambda _msg: None)
    started = time.monotonic()
    messages: list[str] = []
    paths = go_builds.ensure_built(echo=messages.append)
    assert time.monotonic() - started < 15
    assert not any(m.startswith("building") for m in messages), messages
    versions = go_builds.pinned_versions()
    assert versions["helm"] in go_builds.version_output(paths["helm"], ["version", "--short"])
    etcd = go_builds.version_output(paths["etcd"], ["--version"])
    assert f"etcd Version: {versions['etcd'].lstrip('v')}" in etcd


# --- a running cluster --------------------------------------------------------


@pytest.mark.cluster
def test_nodes_are_ready(local_cluster: LocalCluster) -> None:
    nodes = json.loads(local_cluster.kubectl("get", "nodes", "-o", "json"))["items"]
    assert len(nodes) >= clusters.NODES_PER_CLUSTER
    for node in nodes:
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True", node["metadata"]["name"]
        assert node["metadata"]["annotations"].get("kwok.x-k8s.io/node") == "fake"


@pytest.mark.cluster
def test_kubectl_and_server_report_the_pinned_version(local_cluster: LocalCluster) -> None:
    pinned = go_builds.pinned_versions()["kubernetes"]
    report = json.loads(local_cluster.kubectl("version", "-o", "json"))
    assert report["serverVersion"]["gitVersion"] == pinned
    assert report["clientVersion"]["gitVersion"] == pinned
    major, minor = pinned.lstrip("v").split(".")[:2]
    assert (report["serverVersion"]["major"], report["serverVersion"]["minor"]) == (major, minor)


@pytest.mark.cluster
def test_kubeconfig_lives_in_the_project(local_cluster: LocalCluster) -> None:
    assert (
        local_cluster.kubeconfig
        == go_builds.REPO_ROOT / ".local" / "clusters" / local_cluster.name / "kubeconfig"
    )
    assert local_cluster.kubeconfig.is_file()
    assert (clusters.server_url(local_cluster.name) or "").startswith("https://127.0.0.1:")


@pytest.mark.cluster
def test_deployment_and_daemonset_roll_out_in_seconds(
    local_cluster: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    apply(local_cluster, namespace, deployment("web", replicas=3), tmp_path)
    daemonset = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "agent"},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "agent", "image": "registry.invalid/agent:1"}]},
            },
        },
    }
    apply(local_cluster, namespace, daemonset, tmp_path)
    started = time.monotonic()
    for kind in ("deployment/web", "daemonset/agent"):
        local_cluster.kubectl(
            "-n", namespace, "rollout", "status", kind, "--timeout=30s", timeout=40
        )
    assert time.monotonic() - started < 30
    assert len(pods(local_cluster, namespace, "web")) == 3
    assert len(pods(local_cluster, namespace, "agent")) >= clusters.NODES_PER_CLUSTER


@pytest.mark.cluster
def test_crashloop_label(local_cluster: LocalCluster, namespace: str, tmp_path: Path) -> None:
    apply(local_cluster, namespace, deployment("crash", fail="crashloop"), tmp_path)
    wait_until(
        lambda: "CrashLoopBackOff" in pod_table(local_cluster, namespace, "crash"),
        30,
        "CrashLoopBackOff in `kubectl get pods`",
    )

    def container() -> dict:
        items = pods(local_cluster, namespace, "crash")
        statuses = (items[0]["status"].get("containerStatuses") or []) if items else []
        return statuses[0] if statuses else {}

    def restarts() -> int:
        return container().get("restartCount", 0)

    first = restarts()
    wait_until(lambda: restarts() > first, 45, f"the restart count to rise above {first}")
    status = pods(local_cluster, namespace, "crash")[0]["status"]
    assert status["phase"] == "Running"
    wait_until(
        lambda: container().get("state", {}).get("waiting", {}).get("reason") == "CrashLoopBackOff",
        30,
        "containerStatuses[0].state.waiting.reason == CrashLoopBackOff",
    )
    backoff = container()
    assert backoff["lastState"]["terminated"]["exitCode"] != 0
    assert not backoff["ready"]


@pytest.mark.cluster
def test_imagepull_label(local_cluster: LocalCluster, namespace: str, tmp_path: Path) -> None:
    apply(local_cluster, namespace, deployment("pull", fail="imagepull"), tmp_path)
    seen: set[str] = set()

    def both_seen() -> bool:
        table = pod_table(local_cluster, namespace, "pull")
        seen.update(r for r in ("ErrImagePull", "ImagePullBackOff") if r in table)
        return len(seen) == 2

    wait_until(both_seen, 45, "ErrImagePull and ImagePullBackOff in `kubectl get pods`")
    assert pods(local_cluster, namespace, "pull")[0]["status"]["phase"] == "Pending"


@pytest.mark.cluster
def test_configerror_label(local_cluster: LocalCluster, namespace: str, tmp_path: Path) -> None:
    apply(local_cluster, namespace, deployment("cfg", fail="configerror"), tmp_path)
    wait_until(
        lambda: "CreateContainerConfigError" in pod_table(local_cluster, namespace, "cfg"),
        30,
        "CreateContainerConfigError in `kubectl get pods`",
    )


@pytest.mark.cluster
def test_unschedulable_label(local_cluster: LocalCluster, namespace: str, tmp_path: Path) -> None:
    apply(local_cluster, namespace, deployment("stuck", fail="unschedulable"), tmp_path)

    def unschedulable() -> dict | None:
        items = pods(local_cluster, namespace, "stuck")
        if not items:
            return None
        for condition in items[0]["status"].get("conditions") or []:
            if condition["type"] == "PodScheduled" and condition.get("reason") == "Unschedulable":
                return items[0]
        return None

    pod = wait_until(unschedulable, 30, "PodScheduled=False reason Unschedulable")
    assert pod["status"]["phase"] == "Pending"
    assert "nodeName" not in pod["spec"]
    assert "Pending" in pod_table(local_cluster, namespace, "stuck")


def claim(name: str, storage_class: str | None = None) -> dict:
    spec: dict = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    if storage_class is not None:
        spec["storageClassName"] = storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": spec,
    }


def claim_status(cluster: LocalCluster, namespace: str, name: str) -> dict:
    found = cluster.kubectl("-n", namespace, "get", "pvc", name, "-o", "json")
    return json.loads(found)


@pytest.mark.cluster
def test_claim_without_a_class_is_bound_by_the_hostpath_provisioner(
    local_cluster: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    apply(local_cluster, namespace, claim("data"), tmp_path)
    bound = wait_until(
        lambda: claim_status(local_cluster, namespace, "data")["status"].get("phase") == "Bound",
        30,
        "the claim to be Bound",
    )
    assert bound
    found = claim_status(local_cluster, namespace, "data")
    assert found["spec"]["storageClassName"] == "standard"
    volume = json.loads(
        local_cluster.kubectl("get", "pv", found["spec"]["volumeName"], "-o", "json")
    )
    folder = Path(volume["spec"]["hostPath"]["path"])
    assert clusters.HOSTPATH_VOLUMES in folder.parents and folder.is_dir()
    assert folder in clusters.provisioned_volumes(local_cluster.name)
    # Deleting the claim deletes its volume and the folder (reclaimPolicy Delete).
    local_cluster.kubectl("-n", namespace, "delete", "pvc", "data")
    wait_until(lambda: not folder.exists(), 30, f"{folder} to be removed with its volume")


@pytest.mark.cluster
def test_claim_of_a_missing_class_stays_pending_with_the_controllers_reason(
    local_cluster: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    apply(local_cluster, namespace, claim("orphan", storage_class="fast-ssd"), tmp_path)

    def refusal() -> str:
        events = local_cluster.kubectl(
            "-n",
            namespace,
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=orphan",
            "-o",
            "jsonpath={.items[*].message}",
        )
        return events if "not found" in events else ""

    message = wait_until(refusal, 30, "the PersistentVolume controller's ProvisioningFailed event")
    assert 'storageclass.storage.k8s.io "fast-ssd" not found' in str(message)
    assert claim_status(local_cluster, namespace, "orphan")["status"]["phase"] == "Pending"


@pytest.mark.cluster
def test_exit_label_fails_a_jobs_pod_and_an_unlabelled_one_completes(
    local_cluster: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    def job(name: str, fail: str | None) -> dict:
        labels = {"app": name, **({clusters.FAIL_LABEL: fail} if fail else {})}
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "main", "image": "registry.invalid/job:1"}],
                    },
                },
            },
        }

    apply(local_cluster, namespace, job("fails", "exit"), tmp_path)
    apply(local_cluster, namespace, job("works", None), tmp_path)

    def finished(name: str, condition: str) -> bool:
        found = json.loads(local_cluster.kubectl("-n", namespace, "get", "job", name, "-o", "json"))
        return any(
            c["type"] == condition and c["status"] == "True"
            for c in found.get("status", {}).get("conditions") or []
        )

    wait_until(lambda: finished("fails", "Failed"), 30, "job/fails to fail")
    wait_until(lambda: finished("works", "Complete"), 30, "job/works to complete")
    [pod] = pods(local_cluster, namespace, "fails")
    assert pod["status"]["phase"] == "Failed"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (1, "Error")


@pytest.mark.cluster
def test_up_restarts_what_died_and_down_leaves_no_process_or_port(
    local_cluster: LocalCluster,
) -> None:
    name = THROWAWAY_CLUSTER
    if clusters.is_up(name):
        clusters.down(name, echo=lambda _msg: None)
    clusters.up(name, echo=lambda _msg: None)
    volumes: list[Path] = []
    try:
        # Runs side by side with the shared cluster, on its own ports.
        assert clusters.server_url(name) != clusters.server_url(local_cluster.name)
        pids = clusters.cluster_pids(name)
        assert set(pids) >= {
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kwok-controller",
        }
        ports = clusters.listening_ports(set(pids.values()))
        assert ports, "the throwaway cluster listens on no port?"

        # A component that died (e.g. kwok-controller losing its port to another
        # cluster) makes the cluster "not up", and `up` starts it afresh.
        os.kill(pids["kwok-controller"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while clusters.pid_alive(pids["kwok-controller"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert clusters.dead_components(name) == ["kwok-controller"]
        assert not clusters.is_up(name)
        clusters.up(name, echo=lambda _msg: None)
        assert clusters.dead_components(name) == []
        assert clusters.is_up(name)

        # An API server that died is restarted with the cluster's state (etcd) kept.
        clusters.kubectl(name, "create", "namespace", "kept-across-restarts")
        apiserver = clusters.cluster_pids(name)["kube-apiserver"]
        os.kill(apiserver, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while clusters.pid_alive(apiserver) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not clusters.is_up(name)
        said: list[str] = []
        clusters.up(name, echo=said.append)
        assert clusters.is_up(name)
        assert clusters.kubectl(name, "get", "namespace", "kept-across-restarts", "-o", "name")
        assert any("restarted" in line and "state kept" in line for line in said), said
        assert not any("gone" in line for line in said), said
        pids = clusters.cluster_pids(name)
        ports = clusters.listening_ports(set(pids.values()))

        # A volume the provisioner made for a claim still there goes with the cluster.
        manifest = Path(clusters.workdir(name)) / "claim.json"
        manifest.write_text(json.dumps(claim("kept")))
        clusters.kubectl(name, "-n", "default", "apply", "-f", str(manifest))
        volumes = list(
            wait_until(lambda: clusters.provisioned_volumes(name), 30, "a volume for the claim")
        )
        assert all(folder.is_dir() for folder in volumes)
    finally:
        clusters.down(name, echo=lambda _msg: None)
    assert not any(folder.exists() for folder in volumes)
    still_running = [pid for pid in pids.values() if clusters.pid_alive(pid)]
    assert not still_running
    assert not ports & clusters.listening_ports()
    assert not clusters.kubeconfig(name).exists()
    assert not clusters.workdir(name).exists()
    assert clusters.is_up(local_cluster.name)
