"""Credentials for an environment's cluster, opened once per run and gone when it ends.

Each kind of cluster (tasks/adapters/kinds/) yields the variables (KUBECONFIG, ...) the
steps' commands need; an environment with a `bastion` also gets an SSH tunnel
to its API server and a kubeconfig pointed at it, TLS still naming the real
server. The end of the run closes the tunnel and deletes every temporary file;
the operator's own kubeconfig, kubectl context and gcloud login are never used.
"""

from __future__ import annotations

import os
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import yaml

from tasks.config.context import StepContext
from tasks.config.registry import Bastion, Environment, cluster_kind
from tasks.config.values import is_locked
from tasks.core.errors import StepFailure
from tasks.core.output import say, warn
from tasks.core.runner import PROJECT_ROOT

if TYPE_CHECKING:
    from fabric import Connection

# kubectl's discovery cache would otherwise land in the operator's ~/.kube/cache.
KUBE_CACHE_DIR = PROJECT_ROOT / ".local" / "kube-cache"
SSH_TIMEOUT = 15.0


def open_cluster(ctx: StepContext) -> AbstractContextManager[dict[str, str]]:
    """The credentials of the step's environment, opened by the run's first step that asks;
    held by the environment's part of the run, so each member opens and closes its own."""
    held = ctx.held
    variables = held.hold(("cluster", ctx.dry_run), lambda: credentials(ctx))
    return nullcontext(dict(variables))


@contextmanager
def credentials(ctx: StepContext) -> Iterator[dict[str, str]]:
    """Open an environment's credentials (and bastion tunnel) for the block's duration."""
    env = ctx.environment
    with ExitStack() as opened:
        variables = dict(opened.enter_context(cluster_kind(env.cluster.kind).open(ctx)))
        variables["KUBECACHEDIR"] = str(KUBE_CACHE_DIR)
        if env.bastion is not None:
            through = opened.enter_context(tunnel(ctx, Path(variables["KUBECONFIG"])))
            variables["KUBECONFIG"] = str(through)
        yield variables


def secret_file(env: Environment, relative: str, field: str) -> Path:
    """A credential file under the environment's secrets folder, present and decrypted."""
    path = env.secret_path(relative)
    if not path.is_file():
        raise StepFailure(
            f"The file {path} named by environment {env.name!r} ({field}) does not exist.",
            "Unlock the secrets (invoke decrypt-secrets) or fix the path in "
            "config/environments.yaml.",
        )
    if is_locked(path):
        raise StepFailure(
            f"{path} ({field}) is still encrypted.",
            f"Unlock the secrets first: invoke decrypt-secrets --env={env.name}",
        )
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        path.chmod(0o600)
    return path


def api_server(kubeconfig: Path) -> str:
    """The server URL of the kubeconfig's current context."""
    try:
        config = yaml.safe_load(kubeconfig.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise StepFailure(f"Cannot read the kubeconfig {kubeconfig}: {error}") from None
    clusters = {c.get("name"): c.get("cluster") or {} for c in config.get("clusters") or []}
    contexts = {c.get("name"): c.get("context") or {} for c in config.get("contexts") or []}
    current = contexts.get(config.get("current-context"), {}).get("cluster")
    if current is None and len(clusters) == 1:
        current = next(iter(clusters))
    server = clusters.get(current, {}).get("server")
    if not server:
        raise StepFailure(
            f"The kubeconfig {kubeconfig} names no server for its current context.",
            "Set its current-context to the cluster to deploy to.",
        )
    return str(server)


def tunnelled_kubeconfig(source: Path, target: Path, local_port: int) -> None:
    """Write a copy of `source` whose server is the tunnel's end, TLS still naming the real one."""
    server = api_server(source)
    config = yaml.safe_load(source.read_text())
    real_host = urlsplit(server).hostname or ""
    base = source.parent
    for entry in config.get("clusters") or []:
        cluster = entry.get("cluster") or {}
        if cluster.get("server") == server:
            cluster["server"] = f"https://127.0.0.1:{local_port}"
            cluster.setdefault("tls-server-name", real_host)
        _absolute(cluster, "certificate-authority", base)
    for entry in config.get("users") or []:
        user = entry.get("user") or {}
        for field in ("client-certificate", "client-key", "tokenFile"):
            _absolute(user, field, base)
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    target.chmod(0o600)


def _absolute(section: dict, field: str, base: Path) -> None:
    # A kubeconfig's relative file names are relative to the kubeconfig itself,
    # and the copy lives elsewhere.
    value = section.get(field)
    if isinstance(value, str) and value and not os.path.isabs(value):
        section[field] = str(base / value)


@contextmanager
def tunnel(ctx: StepContext, kubeconfig: Path) -> Iterator[Path]:
    """An SSH tunnel through the environment's bastion to its API server, for the block."""
    env = ctx.environment
    bastion = env.bastion
    if bastion is None:
        raise StepFailure(f"Environment {env.name} has no bastion.")
    server = urlsplit(api_server(kubeconfig) if kubeconfig.exists() else "https://server")
    remote = (server.hostname or "", server.port or 443)
    where = f"{bastion.user}@{bastion.host}:{bastion.port}"
    if ctx.dry_run:
        say(f"[dry-run] ssh tunnel through {where} to {remote[0]}:{remote[1]}")
        yield kubeconfig
        return
    key = secret_file(env, bastion.key_file, "bastion.key_file")
    connection = _connection(env, bastion, key)
    local_port = _free_port()
    try:
        _connect(connection, bastion, key, where)
    except StepFailure:
        connection.close()
        raise
    with (
        connection,
        connection.forward_local(
            local_port=local_port,
            remote_port=remote[1],
            remote_host=remote[0],
            local_host="127.0.0.1",
        ),
        tempfile.TemporaryDirectory(prefix="deploy-tunnel-") as private,
    ):
        _wait_for_listener(local_port)
        say(f"tunnel: 127.0.0.1:{local_port} -> {where} -> {remote[0]}:{remote[1]}")
        copy = Path(private) / "kubeconfig"
        tunnelled_kubeconfig(kubeconfig, copy, local_port)
        yield copy


def _connection(env: Environment, bastion: Bastion, key: Path) -> Connection:
    # fabric and paramiko load only for an environment behind a bastion: importing them
    # costs every task's start-up, `invoke --list` included, some 40 ms.
    import paramiko
    from fabric import Config, Connection

    # Only the registry's key, never the operator's agent, ~/.ssh keys or ssh config.
    connection = Connection(
        bastion.host,
        user=bastion.user,
        port=bastion.port,
        connect_timeout=SSH_TIMEOUT,
        config=Config(overrides={"load_ssh_configs": False}),
        connect_kwargs={
            "key_filename": [str(key)],
            "look_for_keys": False,
            "allow_agent": False,
            "banner_timeout": SSH_TIMEOUT,
            "auth_timeout": SSH_TIMEOUT,
        },
    )
    if bastion.known_hosts:
        known = secret_file(env, bastion.known_hosts, "bastion.known_hosts")
        client = connection.client
        assert client is not None  # fabric makes it with the Connection
        client.load_host_keys(str(known))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    else:
        warn(
            f"The host key of {env.name}'s bastion {bastion.host} is not pinned "
            "(bastion.known_hosts); TLS still verifies the API server through the tunnel."
        )
    return connection


def _connect(connection: Connection, bastion: Bastion, key: Path, where: str) -> None:
    import paramiko
    from paramiko.ssh_exception import NoValidConnectionsError

    try:
        connection.open()
    except paramiko.AuthenticationException:
        raise StepFailure(
            f"The bastion refused the key {key.name} for {where}.",
            f"Add the public half of {key} to ~{bastion.user}/.ssh/authorized_keys on "
            f"{bastion.host}, or fix bastion.key_file and bastion.user in "
            "config/environments.yaml.",
        ) from None
    except paramiko.BadHostKeyException as error:
        raise StepFailure(
            f"The bastion {bastion.host} presented a host key that does not match "
            "bastion.known_hosts: it was rebuilt, or someone is in between.",
            "Confirm the new host key with its administrator before updating bastion.known_hosts.",
            details=str(error),
        ) from None
    except paramiko.SSHException as error:
        if "not found in known_hosts" in str(error):
            raise StepFailure(
                f"The bastion {bastion.host}'s host key is not in bastion.known_hosts.",
                f"Add it (ssh-keyscan -p {bastion.port} {bastion.host}, checked with its "
                "administrator) to the file bastion.known_hosts names.",
            ) from None
        if "private key" in str(error) or "not a valid" in str(error):
            raise StepFailure(
                f"{key} (bastion.key_file) is not an SSH private key: {error}.",
                "Put the bastion's deploy key there (OpenSSH or PEM format, no passphrase).",
            ) from None
        raise StepFailure(f"SSH to the bastion {where} failed: {error}.") from None
    except (OSError, NoValidConnectionsError) as error:
        raise StepFailure(
            f"The bastion {where} cannot be reached: {error}.",
            "Check the bastion's host and port in config/environments.yaml and the network "
            "(VPN, firewall) between here and it.",
        ) from None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_listener(port: int, seconds: float = 5.0) -> None:
    # forward_local listens from a thread of its own, a moment after it returns.
    # A test connection would open a channel the tunnel cannot take back, so
    # the kernel's table of listening sockets is asked instead.
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _listening(port):
            return
        time.sleep(0.02)
    raise StepFailure(f"The SSH tunnel did not start listening on 127.0.0.1:{port}.")


def _listening(port: int) -> bool:
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return True
    wanted = f"0100007F:{port:04X}"  # 127.0.0.1:port, in the state LISTEN (0A)
    return any(
        fields[1] == wanted and fields[3] == "0A" for fields in (line.split() for line in lines)
    )


@contextmanager
def cluster_of(ctx: StepContext, env: Environment) -> Iterator[StepContext]:
    """A context for reading `env`'s cluster (a member's gate's, say) from another's step."""
    other = StepContext(ctx.c, ctx.registry, env, ctx.runner, ctx.dry_run, ctx.step)
    with open_cluster(other) as extra_env:
        other.runner = ctx.runner.with_env(**extra_env)
        yield other
