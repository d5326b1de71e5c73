"""Local Kubernetes clusters: real control planes with simulated nodes, run by kwokctl.

Each cluster is a real etcd, kube-apiserver, kube-controller-manager and
kube-scheduler (the pinned builds of tasks/adapters/go_builds.py) plus a KWOK
controller that plays the kubelet for simulated nodes. `kwokctl create cluster
--runtime binary` starts them as local processes on free ports, so several
clusters run side by side.

Where things live (all git-ignored, nothing outside the project or the tool cache):

    .local/clusters/<name>/kubeconfig      the only kubeconfig written; ~/.kube is never touched
    .local/kwok/clusters/<name>/           kwokctl's work dir: pids, logs, certificates, etcd data

Failure simulation: label a pod (or a Deployment's pod template) with

    kwok.binder.test/fail: crashloop      Error / CrashLoopBackOff, restart count rising
    kwok.binder.test/fail: imagepull      ErrImagePull / ImagePullBackOff, stays Pending
    kwok.binder.test/fail: configerror    CreateContainerConfigError, stays Pending
    kwok.binder.test/fail: unschedulable  Pending, PodScheduled=False reason Unschedulable
    kwok.binder.test/fail: exit           exit code 1, pod Failed (a Job's pod whose command fails)
    kwok.binder.test/fail: notready       on a node, containers never started: never Ready,
                                          never failing (a rollout that hangs)

All but `unschedulable` are KWOK Stages (`stages.yaml`); `unschedulable` is a
MutatingAdmissionPolicy (`policies.yaml`) adding a node selector no node matches, so
the real scheduler refuses the pod; `notready` needs neither: KWOK's pod-ready stage
leaves every labelled pod alone.

Storage: a default StorageClass (`storage.yaml`) whose claims
kube-controller-manager's in-tree hostPath provisioner binds (`kwokctl.yaml`),
each to a folder under /tmp/hostpath_pv/ that `down()` removes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml
from invoke.exceptions import Exit

from tasks.adapters import go_builds
from tasks.adapters.kinds.local import CLUSTERS_DIR

# The demo's federation: its gate, then one cluster per member.
DEMO_CLUSTERS: tuple[str, ...] = ("binder-staging", "binder-prod", "binder-prod-b")
NODES_PER_CLUSTER = 2
FAIL_LABEL = "kwok.binder.test/fail"
FAILURES: tuple[str, ...] = (
    "crashloop",
    "imagepull",
    "configerror",
    "unschedulable",
    "exit",
    "notready",
)

# The label of the nodes a test adds as a pool of its own (sandbox/nodes.py).
POOL_LABEL = "kwok.binder.test/pool"

LOCAL_DIR = go_builds.REPO_ROOT / ".local"
KWOK_WORKDIR = LOCAL_DIR / "kwok"
KUBE_CACHE_DIR = LOCAL_DIR / "kube-cache"
STAGES_FILE = Path(__file__).with_name("stages.yaml")
KWOKCTL_FILE = Path(__file__).with_name("kwokctl.yaml")
POLICIES_FILE = Path(__file__).with_name("policies.yaml")
STORAGE_FILE = Path(__file__).with_name("storage.yaml")
# Where kube-controller-manager's hostPath provisioner puts every volume (fixed in its code).
HOSTPATH_VOLUMES = Path("/tmp/hostpath_pv")

Echo = Callable[[str], None]


@dataclass(frozen=True)
class ClusterStatus:
    """What `status()` knows about one local cluster."""

    name: str
    up: bool
    server: str | None
    kubeconfig: Path
    pids: dict[str, int]

    @property
    def running_pids(self) -> dict[str, int]:
        return {name: pid for name, pid in self.pids.items() if pid_alive(pid)}


def kubeconfig(name: str) -> Path:
    """Path of the cluster's kubeconfig (it exists once the cluster has been created)."""
    _check_name(name)
    return CLUSTERS_DIR / name / "kubeconfig"


def workdir(name: str) -> Path:
    """kwokctl's work dir for the cluster: pid files, component logs, certificates."""
    _check_name(name)
    return KWOK_WORKDIR / "clusters" / name


def known_clusters() -> list[str]:
    """Names of the clusters that have state on disk, running or not."""
    names = set()
    for parent in (CLUSTERS_DIR, KWOK_WORKDIR / "clusters"):
        if parent.is_dir():
            names.update(p.name for p in parent.iterdir() if p.is_dir())
    return sorted(names)


def server_url(name: str) -> str | None:
    """The API server URL from the cluster's kubeconfig, None without one."""
    try:
        config = yaml.safe_load(kubeconfig(name).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    for cluster in config.get("clusters") or []:
        server = (cluster.get("cluster") or {}).get("server")
        if server:
            return str(server)
    return None


def kubectl(name: str, *args: str, timeout: float = 60, check: bool = True) -> str:
    """Run the pinned kubectl against the cluster; return stdout (raise Exit on failure)."""
    command = [
        str(go_builds.binary("kubectl")),
        "--kubeconfig",
        str(kubeconfig(name)),
        # kubectl's discovery cache would otherwise land in ~/.kube/cache
        "--cache-dir",
        str(KUBE_CACHE_DIR),
        *args,
    ]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise Exit(f"kubectl {' '.join(args)} on {name} timed out after {timeout:g}s") from None
    if check and result.returncode != 0:
        raise Exit(
            f"kubectl {' '.join(args)} on {name} failed ({result.returncode}): "
            f"{result.stderr.strip() or result.stdout.strip()}"
        )
    return result.stdout


def is_up(name: str) -> bool:
    """True when the cluster's API server answers /readyz."""
    if not kubeconfig(name).is_file() or dead_components(name):
        return False
    try:
        out = kubectl(name, "get", "--raw", "/readyz", "--request-timeout=3s", timeout=10)
    except Exit:
        return False
    return out.strip() == "ok"


def up(name: str, nodes: int = NODES_PER_CLUSTER, echo: Echo = print) -> Path:
    """Start the cluster (reusing it when it already runs); return its kubeconfig path.

    Builds the pinned tools first when they are missing.
    """
    with cluster_lock(name):
        return _up(name, nodes, echo)


def down(name: str, echo: Echo = print) -> None:
    """Stop the cluster and delete its state; verify no process or listening port remains."""
    with cluster_lock(name):
        _down(name, echo)


@contextlib.contextmanager
def cluster_lock(name: str) -> Iterator[None]:
    """Serialise up/down of one cluster across processes sharing the checkout."""
    CLUSTERS_DIR.mkdir(parents=True, exist_ok=True)
    # Beside the cluster's folder, not in it: down() deletes that folder.
    with (CLUSTERS_DIR / f".{name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _up(name: str, nodes: int, echo: Echo) -> Path:
    if is_up(name):
        echo(f"{name}: already up at {server_url(name)}")
        _ensure_nodes(name, nodes, echo)
        return kubeconfig(name)
    paths = go_builds.ensure_built(echo=echo)
    config = kubeconfig(name)
    if workdir(name).exists():
        # A cluster that stopped answering still has its etcd data: restart every
        # component on it, so its namespaces and releases survive. Only a cluster
        # that cannot be restarted is replaced, and that is said out loud.
        problem = _restart(paths, name, echo)
        if not problem:
            _ensure_nodes(name, nodes, echo)
            echo(f"{name}: restarted at {server_url(name)} with its state kept")
            return config
        echo(
            f"{name}: could not be restarted from its state ({problem}); starting a new, "
            "empty cluster instead: the namespaces and releases it held are gone"
        )
        _down(name, echo=lambda _msg: None)
    for attempt in (1, 2):
        _create(paths, name, config, echo)
        problem = _dead_after_start(name)
        if not problem:
            break
        # Another cluster started at the same moment can take a port kwokctl chose.
        if attempt == 2:
            raise Exit(f"{name}: {problem}. Its logs are in {workdir(name) / 'logs'}.")
        echo(f"{name}: {problem}; starting again")
        _down(name, echo=lambda _msg: None)
    kubectl(name, "apply", "-f", str(POLICIES_FILE), "-f", str(STORAGE_FILE))
    _ensure_nodes(name, nodes, echo)
    # Pods are refused until the controller manager has made the default service account.
    _wait_for(
        lambda: bool(kubectl(name, "get", "serviceaccount", "default", "-o", "name", check=False)),
        60,
        f"{name}: the default service account never appeared",
    )
    echo(f"{name}: up at {server_url(name)}, kubeconfig {config}")
    return config


def _restart(paths: dict[str, Path], name: str, echo: Echo) -> str:
    """Restart a cluster that stopped answering, on its own state; "" when it answers again."""
    if not kubeconfig(name).is_file():
        return f"its kubeconfig {kubeconfig(name)} is gone"
    echo(f"{name}: not answering; restarting its components on its state in {workdir(name)}")
    _kwokctl(paths, name, ["stop", "cluster"], timeout=60, check=False)
    try:
        _kwokctl(paths, name, ["start", "cluster", "--wait", "1m"], timeout=90, check=False)
    except Exit as error:
        return str(error)
    return _dead_after_start(name) or ("" if is_up(name) else "its API server does not answer")


def _create(paths: dict[str, Path], name: str, config: Path, echo: Echo) -> None:
    config.parent.mkdir(parents=True, exist_ok=True)
    echo(f"{name}: starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok")
    _kwokctl(
        paths,
        name,
        [
            "create",
            "cluster",
            "--runtime",
            "binary",
            "--kube-apiserver-binary",
            str(paths["kube-apiserver"]),
            "--kube-controller-manager-binary",
            str(paths["kube-controller-manager"]),
            "--kube-scheduler-binary",
            str(paths["kube-scheduler"]),
            "--etcd-binary",
            str(paths["etcd"]),
            "--kwok-controller-binary",
            str(paths["kwok"]),
            "--kubeconfig",
            str(config),
            "--config",
            str(STAGES_FILE),
            "--config",
            str(KWOKCTL_FILE),
            "--wait",
            "2m",
            "--timeout",
            "4m",
        ],
        timeout=300,
    )


def dead_components(name: str) -> list[str]:
    """Components of the cluster whose process is gone (kwok-controller, etcd, ...)."""
    return [component for component, pid in cluster_pids(name).items() if not pid_alive(pid)]


def _dead_after_start(name: str) -> str:
    """Which components exited right after starting, and why; "" when none did."""
    time.sleep(1)  # a component that cannot bind its port exits within a moment
    dead = dead_components(name)
    if not dead:
        return ""
    return f"{', '.join(dead)} exited right after starting ({_last_log_line(name, dead[0])})"


def _last_log_line(name: str, component: str) -> str:
    log = workdir(name) / "logs" / f"{component}.log"
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    last = lines[-1] if lines else "empty log"
    return last if len(last) < 300 else last[:300] + "…"


def _down(name: str, echo: Echo) -> None:
    pids = cluster_pids(name)
    alive = {component: pid for component, pid in pids.items() if pid_alive(pid)}
    ports = listening_ports(set(alive.values()))
    volumes = provisioned_volumes(name) if alive else []
    if workdir(name).exists():
        paths = {n: p for n, p in _cached_paths().items() if p.is_file()}
        if "kwokctl" in paths:
            _kwokctl(
                paths,
                name,
                ["delete", "cluster", "--kubeconfig", str(kubeconfig(name))],
                timeout=120,
                check=False,
            )
    leftovers = {component: pid for component, pid in alive.items() if pid_alive(pid)}
    for component, pid in leftovers.items():
        echo(f"{name}: {component} (pid {pid}) outlived kwokctl delete; stopping it")
        _terminate(pid)
    _wait_for(
        lambda: not any(pid_alive(pid) for pid in alive.values()),
        30,
        f"{name}: processes still running after down: {alive}",
    )
    _wait_for(
        lambda: not (ports & listening_ports()),
        30,
        f"{name}: ports still listening after down: {sorted(ports & listening_ports())}",
    )
    _remove_tree(workdir(name))
    _remove_tree(kubeconfig(name).parent)
    for folder in volumes:
        shutil.rmtree(folder, ignore_errors=True)
    if alive:
        echo(f"{name}: down (stopped pids {sorted(alive.values())}, freed ports {sorted(ports)})")
    else:
        echo(f"{name}: was not running; state removed")


def provisioned_volumes(name: str) -> list[Path]:
    """The folders the hostPath provisioner made for the cluster's volumes still there.

    Only paths below HOSTPATH_VOLUMES count: a volume an operator made by hand
    pointing anywhere else is never deleted.
    """
    if not is_up(name):
        return []
    listed = kubectl(
        name,
        "get",
        "persistentvolumes",
        "-o",
        "jsonpath={range .items[*]}{.spec.hostPath.path}{'\\n'}{end}",
        check=False,
    )
    paths = [Path(line) for line in listed.split() if line]
    return [p for p in paths if HOSTPATH_VOLUMES in p.parents and ".." not in p.parts]


def status(name: str) -> ClusterStatus:
    """What runs for the cluster, its API server URL and where its kubeconfig is."""
    return ClusterStatus(
        name=name,
        up=is_up(name),
        server=server_url(name),
        kubeconfig=kubeconfig(name),
        pids=cluster_pids(name),
    )


def cluster_pids(name: str) -> dict[str, int]:
    """Component name -> pid, from kwokctl's pid files (running or not)."""
    pids = {}
    pid_dir = workdir(name) / "pids"
    if pid_dir.is_dir():
        for path in sorted(pid_dir.glob("*.pid")):
            try:
                pids[path.stem] = int(path.read_text().strip())
            except (OSError, ValueError):
                continue
    return pids


def listening_ports(pids: set[int] | None = None) -> set[int]:
    """TCP ports in LISTEN state, all of them or only those owned by `pids`."""
    inodes: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # state 0A is LISTEN
            if len(fields) > 9 and fields[3] == "0A":
                inodes[fields[9]] = int(fields[1].rsplit(":", 1)[1], 16)
    if pids is None:
        return set(inodes.values())
    ports = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            fds = list(fd_dir.iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = target[len("socket:[") : -1]
                if inode in inodes:
                    ports.add(inodes[inode])
    return ports


def kwokctl_env(paths: dict[str, Path]) -> dict[str, str]:
    """Environment for kwokctl: pinned binaries only, work dir and kubeconfig in the project.

    kwokctl looks `kubectl` up on PATH before using its configured binary, and would
    download any binary it is not given; the prefixes point at the local cache so a
    missing binary fails instead of reaching the network.
    """
    kube_bin = paths["kubectl"].parent
    bin_dirs = [str(kube_bin), str(paths["etcd"].parent), str(paths["kwokctl"].parent)]
    return {
        **os.environ,
        "PATH": os.pathsep.join([*bin_dirs, os.environ.get("PATH", "")]),
        "KWOK_WORKDIR": str(KWOK_WORKDIR),
        "KWOK_KUBE_VERSION": go_builds.pinned_versions()["kubernetes"],
        "KWOK_KUBECTL_BINARY": str(paths["kubectl"]),
        "KWOK_KUBE_BINARY_PREFIX": str(kube_bin),
        "KWOK_ETCD_BINARY_PREFIX": str(paths["etcd"].parent),
        "KWOK_BINARY_PREFIX": str(paths["kwok"].parent),
    }


def _kwokctl(
    paths: dict[str, Path], name: str, args: list[str], timeout: float, check: bool = True
) -> str:
    env = kwokctl_env(paths)
    # Without a kubeconfig flag kwokctl edits $KUBECONFIG (default ~/.kube/config).
    env["KUBECONFIG"] = str(kubeconfig(name))
    log = LOCAL_DIR / "logs" / f"kwokctl-{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [str(paths["kwokctl"]), "--name", name, *args]
    try:
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise Exit(f"kwokctl {args[0]} {args[1]} for {name} timed out after {timeout:g}s") from None
    with log.open("a") as f:
        f.write(f"\n$ {' '.join(command)}\n{result.stdout}{result.stderr}")
    if check and result.returncode != 0:
        raise Exit(
            f"kwokctl {args[0]} {args[1]} for {name} failed (exit {result.returncode}). "
            f"Full output: {log}; component logs: {workdir(name) / 'logs'}."
        )
    return result.stdout


def _ensure_nodes(name: str, nodes: int, echo: Echo) -> None:
    # The cluster's own nodes: a test's node pool (sandbox/nodes.py) may come and go meanwhile.
    own = f"!{POOL_LABEL}"
    names = kubectl(name, "get", "nodes", "-l", own, "-o", "name").split()
    if len(names) < nodes:
        paths = go_builds.ensure_built(echo=lambda _msg: None)
        _kwokctl(paths, name, ["scale", "node", "--replicas", str(nodes)], timeout=60)
    kubectl(name, "wait", "--for=condition=Ready", "node", "-l", own, "--timeout=60s", timeout=70)
    echo(f"{name}: {max(nodes, len(names))} simulated nodes Ready")


def _cached_paths() -> dict[str, Path]:
    return {
        name: go_builds.component_dir(component) / "bin" / name
        for name, component in go_builds.BINARIES.items()
    }


def pid_alive(pid: int) -> bool:
    """True while the process runs (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    # A zombie has exited; only its parent's wait() is missing.
    return state != "Z"


def _terminate(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _wait_for(condition: Callable[[], bool], seconds: float, failure: str) -> None:
    deadline = time.monotonic() + seconds
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            raise Exit(failure)
        time.sleep(0.5)


def _remove_tree(path: Path) -> None:
    if not path.exists():
        return
    # Only ever below .local/ (or the folders of it that a copy of the checkout links to,
    # as `invoke test` makes one): a wrong path here must not delete anything else.
    allowed = {LOCAL_DIR.resolve(), *(folder.resolve() for folder in (CLUSTERS_DIR, KWOK_WORKDIR))}
    if not allowed & set(path.resolve().parents):
        raise Exit(f"refusing to delete {path}: not under {LOCAL_DIR}")
    shutil.rmtree(path)


def _check_name(name: str) -> None:
    if not name or "/" in name or name.startswith(".") or not name.replace("-", "").isalnum():
        raise Exit(f"{name!r} is not a valid cluster name (letters, digits and '-').")
