"""Cluster credentials: scoped to the run, opened once, the operator's own config untouched.

GKE cannot be reached from here: a recording `gcloud` checks the exact
commands and their isolation, and the real gcloud checks the error messages
(a malformed key, no network). The bastion is a real sshd on loopback in
front of a real local cluster.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from invoke import Context

from tasks.adapters import access
from tasks.config import registry
from tasks.config.context import StepContext, load_registry
from tasks.core.errors import StepFailure
from tasks.core.step import Step
from tasks.flows.pipeline import invocation, perform
from tests.fakes import gcloud
from tests.fakes.environments import step_context, use_registry
from tests.fakes.sshd import LocalSshd, keypair
from tests.fixtures.cluster import LocalCluster


def run_step(name: str, commands: list[list[str]]) -> list[dict[str, str]]:
    """Run a step needing the cluster; return each command's KUBECONFIG and output."""
    seen: list[dict[str, str]] = []

    def action(ctx: StepContext) -> str:
        for command in commands:
            result = ctx.runner.run(command, quiet=True)
            seen.append({"KUBECONFIG": ctx.runner.env["KUBECONFIG"], "out": result.stdout})
        return ""

    perform(Context(), Step("probe", action, needs_cluster=True), name)
    return seen


def service_account_key(path: Path, private_key: str | None = None) -> Path:
    if private_key is None:
        private_key = subprocess.run(
            ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "binderhub-288415",
                "private_key_id": "0123456789abcdef",
                "private_key": private_key,
                "client_email": "deployer@binderhub-288415.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        )
    )
    return path


GKE = {
    "cluster": {
        "kind": "gke",
        "project": "binderhub-288415",
        "zone": "us-central1",
        "cluster": "staging",
        "key_file": "gke-key.json",
    }
}


@pytest.fixture
def operator_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A HOME with the operator's own kubeconfig and gcloud login, to prove them untouched."""
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    (home / ".kube" / "config").write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: operators-own\n"
        "contexts:\n- name: operators-own\n  context: {cluster: theirs, user: them}\n"
        "clusters:\n- name: theirs\n  cluster: {server: 'https://10.0.0.1:6443'}\n"
        "users:\n- name: them\n  user: {token: their-token}\n"
    )
    (home / ".config" / "gcloud").mkdir(parents=True)
    (home / ".config" / "gcloud" / "active_config").write_text("operators-own")
    monkeypatch.setenv("HOME", str(home))
    return home


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# --- kubeconfig environments -------------------------------------------------------


@pytest.mark.cluster
def test_kubeconfig_environment_leaves_the_operators_kube_config_alone(
    local_cluster: LocalCluster,
    operator_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "kubeconfig").write_bytes(local_cluster.kubeconfig.read_bytes())
    use_registry(
        monkeypatch,
        tmp_path,
        {"site": {"cluster": {"kind": "kubeconfig", "kubeconfig": "kubeconfig"}}},
    )
    before = snapshot(operator_home)
    seen = run_step(
        "site",
        [["kubectl", "config", "current-context"], ["kubectl", "get", "namespace", "default"]],
    )
    assert seen[0]["KUBECONFIG"] == str(secrets / "kubeconfig")
    assert seen[0]["out"].strip() == f"kwok-{local_cluster.name}"
    assert "default" in seen[1]["out"]
    assert snapshot(operator_home) == before
    assert "KUBECONFIG" not in os.environ
    assert stat.S_IMODE((secrets / "kubeconfig").stat().st_mode) == 0o600


def test_locked_kubeconfig_stops_with_the_unlock_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "kubeconfig").write_bytes(b"\x00GITCRYPT\x00" + os.urandom(64))
    use_registry(
        monkeypatch,
        tmp_path,
        {"site": {"cluster": {"kind": "kubeconfig", "kubeconfig": "kubeconfig"}}},
    )
    with pytest.raises(StepFailure) as failure, access.credentials(step_context("site")):
        pass
    assert "still encrypted" in failure.value.why
    assert failure.value.fix == "Unlock the secrets first: invoke decrypt-secrets --env=site"


# --- GKE ----------------------------------------------------------------------------


@pytest.fixture
def fake_gcloud(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, local_cluster: LocalCluster
) -> Path:
    """A recording gcloud first on PATH; its get-credentials hands out the local cluster."""
    bin_dir = tmp_path / "fake-bin"
    record = tmp_path / "gcloud-calls.jsonl"
    gcloud.install(bin_dir, record, local_cluster.kubeconfig)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return record


@pytest.mark.cluster
def test_gke_credentials_come_from_a_private_gcloud_config_opened_once_per_run(
    fake_gcloud: Path, operator_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key = service_account_key(tmp_path / "secrets" / "gke-key.json")
    use_registry(monkeypatch, tmp_path, {"staging": dict(GKE, namespace="default")})
    before = snapshot(operator_home)
    seen: list[dict[str, str]] = []
    with invocation("deploy"):
        for _step in ("upgrade", "wait-rollout", "smoke-test"):
            seen += run_step("staging", [["kubectl", "get", "namespace", "default"]])
        private = Path(seen[0]["KUBECONFIG"]).parent
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
    calls = gcloud.calls(fake_gcloud)
    assert [call["argv"] for call in calls] == [
        ["auth", "activate-service-account", f"--key-file={key}"],
        [
            "container",
            "clusters",
            "get-credentials",
            "staging",
            "--project=binderhub-288415",
            "--region=us-central1",
        ],
    ]
    env = calls[0]["env"]
    assert env["CLOUDSDK_CONFIG"] == str(private / "gcloud")
    assert env["KUBECONFIG"] == str(private / "kubeconfig")
    assert env["CLOUDSDK_CORE_DISABLE_PROMPTS"] == "1"
    assert env["USE_GKE_GCLOUD_AUTH_PLUGIN"] == "True"
    assert {s["KUBECONFIG"] for s in seen} == {str(private / "kubeconfig")}
    assert all("default" in s["out"] for s in seen)
    assert not private.exists(), "the run's end deletes the private gcloud config"
    assert snapshot(operator_home) == before


def test_zonal_clusters_get_zone_not_region(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bin_dir, record = tmp_path / "fake-bin", tmp_path / "calls.jsonl"
    gcloud.install(bin_dir, record, tmp_path / "none")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    service_account_key(tmp_path / "secrets" / "gke-key.json")
    zonal = {"cluster": dict(GKE["cluster"], zone="us-central1-b")}
    use_registry(monkeypatch, tmp_path, {"zonal": zonal})
    with pytest.raises(StepFailure), access.credentials(step_context("zonal")):
        pass  # the fake writes no kubeconfig here; only the command matters
    assert gcloud.calls(record)[1]["argv"][-1] == "--zone=us-central1-b"


def test_missing_gcloud_is_named_with_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    service_account_key(tmp_path / "secrets" / "gke-key.json")
    use_registry(monkeypatch, tmp_path, {"staging": GKE})
    ctx = step_context("staging")
    ctx.runner.tool_dirs = []
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(StepFailure) as failure, access.credentials(ctx):
        pass
    assert failure.value.why.startswith("gcloud is not installed")
    assert "apt-get install google-cloud-cli" in failure.value.fix


def test_missing_gke_auth_plugin_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    service_account_key(tmp_path / "secrets" / "gke-key.json")
    bin_dir = tmp_path / "fake-bin"
    gcloud.install(bin_dir, tmp_path / "calls.jsonl", tmp_path / "none")
    use_registry(monkeypatch, tmp_path, {"staging": GKE})
    ctx = step_context("staging")
    ctx.runner.tool_dirs = []
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(StepFailure) as failure, access.credentials(ctx):
        pass
    assert failure.value.why.startswith("gke-gcloud-auth-plugin is not installed")
    assert "gke-gcloud-auth-plugin" in failure.value.fix


def test_a_file_that_is_no_service_account_key_stops_before_gcloud(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "gke-key.json").write_text('{"type": "authorized_user"}')
    use_registry(monkeypatch, tmp_path, {"staging": GKE})
    with (
        pytest.raises(StepFailure, match="is not a service-account key"),
        access.credentials(step_context("staging")),
    ):
        pass


def test_real_gcloud_rejecting_a_malformed_key_is_explained(
    operator_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    garbage = "-----BEGIN PRIVATE KEY-----\n" + base64.b64encode(b"x" * 64).decode()
    service_account_key(tmp_path / "secrets" / "gke-key.json", private_key=garbage)
    use_registry(monkeypatch, tmp_path, {"staging": GKE})
    with pytest.raises(StepFailure) as failure, access.credentials(step_context("staging")):
        pass
    assert failure.value.why == (
        "gcloud could not use the service-account key file: it is not a valid key."
    )
    assert not (operator_home / ".config" / "gcloud" / "credentials.db").exists()


def test_real_gcloud_without_network_is_explained(
    operator_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    service_account_key(tmp_path / "secrets" / "gke-key.json")
    use_registry(monkeypatch, tmp_path, {"staging": GKE})
    with pytest.raises(StepFailure) as failure, access.credentials(step_context("staging")):
        pass
    assert (
        failure.value.why == "gcloud could not reach Google's API: the network is down or blocked."
    )
    assert "oauth2.googleapis.com" in failure.value.details
    assert sorted(os.listdir(operator_home / ".config" / "gcloud")) == ["active_config"]


# --- bastion -----------------------------------------------------------------------


@pytest.fixture
def bastion(tmp_path: Path) -> Iterator[LocalSshd]:
    with LocalSshd(tmp_path / "sshd") as sshd:
        yield sshd


def bastion_environment(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    sshd: LocalSshd,
    cluster_name: str,
    key: Path | None = None,
    known_hosts: str | None = None,
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / "bastion_key").write_bytes((key or sshd.client_key).read_bytes())
    (secrets / "known_hosts").write_text(known_hosts or sshd.known_hosts_line)
    use_registry(
        monkeypatch,
        tmp_path,
        {
            "private": {
                "cluster": {"kind": "local", "name": cluster_name},
                "bastion": {
                    "host": "127.0.0.1",
                    "port": sshd.port,
                    "user": sshd.user,
                    "key_file": "bastion_key",
                    "known_hosts": "known_hosts",
                },
            }
        },
    )


@pytest.mark.cluster
def test_kubectl_reaches_the_cluster_through_the_bastion_tunnel(
    local_cluster: LocalCluster,
    bastion: LocalSshd,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    bastion_environment(monkeypatch, tmp_path, bastion, local_cluster.name)
    real_server = yaml.safe_load(local_cluster.kubeconfig.read_text())["clusters"][0]["cluster"]
    seen: list[dict[str, str]] = []

    def action(ctx: StepContext) -> str:
        config = yaml.safe_load(Path(ctx.runner.env["KUBECONFIG"]).read_text())
        seen.append(config["clusters"][0]["cluster"])
        result = ctx.runner.run(
            ["kubectl", "get", "namespace", "default", "-o", "name"], quiet=True
        )
        seen.append({"out": result.stdout})
        return ""

    perform(Context(), Step("probe", action, needs_cluster=True), "private")
    tunnelled, answer = seen
    assert tunnelled["server"].startswith("https://127.0.0.1:")
    assert tunnelled["server"] != real_server["server"]
    assert tunnelled["tls-server-name"] == "127.0.0.1"
    assert tunnelled["certificate-authority"] == real_server["certificate-authority"]
    assert answer["out"].strip() == "namespace/default"
    assert "Accepted publickey" in bastion.log.read_text()


@pytest.mark.cluster
def test_a_wrong_bastion_key_is_refused_clearly(
    local_cluster: LocalCluster,
    bastion: LocalSshd,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    stranger = keypair(tmp_path / "stranger")
    bastion_environment(monkeypatch, tmp_path, bastion, local_cluster.name, key=stranger)
    with pytest.raises(StepFailure) as failure, access.credentials(step_context("private")):
        pass
    assert failure.value.why == (
        f"The bastion refused the key bastion_key for {bastion.user}@127.0.0.1:{bastion.port}."
    )
    assert "authorized_keys" in failure.value.fix


@pytest.mark.cluster
def test_a_bastion_with_another_host_key_is_not_trusted(
    local_cluster: LocalCluster,
    bastion: LocalSshd,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    impostor = keypair(tmp_path / "impostor").with_suffix(".pub").read_text().split()
    line = f"[127.0.0.1]:{bastion.port} {impostor[0]} {impostor[1]}\n"
    bastion_environment(monkeypatch, tmp_path, bastion, local_cluster.name, known_hosts=line)
    with (
        pytest.raises(StepFailure, match="does not match"),
        access.credentials(step_context("private")),
    ):
        pass


def test_an_unreachable_bastion_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tests.fakes.sshd import free_port

    secrets = tmp_path / "secrets"
    secrets.mkdir()
    keypair(secrets / "bastion_key")
    (secrets / "kubeconfig").write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
        "clusters: [{name: c, cluster: {server: 'https://10.1.2.3:6443'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
    )
    port = free_port()
    use_registry(
        monkeypatch,
        tmp_path,
        {
            "private": {
                "cluster": {"kind": "kubeconfig", "kubeconfig": "kubeconfig"},
                "bastion": {
                    "host": "127.0.0.1",
                    "port": port,
                    "user": "deploy",
                    "key_file": "bastion_key",
                },
            }
        },
    )
    with pytest.raises(StepFailure) as failure, access.credentials(step_context("private")):
        pass
    assert failure.value.why.startswith(f"The bastion deploy@127.0.0.1:{port} cannot be reached")


def test_tunnelled_kubeconfig_keeps_the_real_name_for_tls(tmp_path: Path) -> None:
    source = tmp_path / "site" / "kubeconfig"
    source.parent.mkdir()
    source.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: site\n"
        "contexts: [{name: site, context: {cluster: site, user: deployer}}]\n"
        "clusters:\n"
        "- {name: site, cluster: {server: 'https://api.internal.example.org:6443', "
        "certificate-authority: ca.crt}}\n"
        "- {name: other, cluster: {server: 'https://other.example.org'}}\n"
        "users: [{name: deployer, user: {client-certificate: c.crt, client-key: /abs/c.key}}]\n"
    )
    target = tmp_path / "tunnelled"
    access.tunnelled_kubeconfig(source, target, 40123)
    config = yaml.safe_load(target.read_text())
    site, other = (c["cluster"] for c in config["clusters"])
    assert site["server"] == "https://127.0.0.1:40123"
    assert site["tls-server-name"] == "api.internal.example.org"
    assert site["certificate-authority"] == str(source.parent / "ca.crt")
    assert other == {"server": "https://other.example.org"}
    assert config["users"][0]["user"] == {
        "client-certificate": str(source.parent / "c.crt"),
        "client-key": "/abs/c.key",
    }
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


# --- the registry's bastion entry ----------------------------------------------------


def test_registry_reads_a_bastion(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_registry(
        monkeypatch,
        tmp_path,
        {
            "private": {
                "cluster": {"kind": "kubeconfig", "kubeconfig": "kubeconfig"},
                "bastion": {"host": "bastion.example.org", "user": "deploy", "key_file": "id"},
            }
        },
    )
    assert load_registry().get("private").bastion == registry.Bastion(
        host="bastion.example.org", user="deploy", key_file="id", port=22
    )


def test_registry_names_the_line_of_a_bad_bastion_port(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = use_registry(
        monkeypatch,
        tmp_path,
        {
            "private": {
                "cluster": {"kind": "kubeconfig", "kubeconfig": "kubeconfig"},
                "bastion": {"host": "b", "user": "u", "key_file": "id", "port": "ssh"},
            }
        },
    )
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "port:" in text)
    with pytest.raises(StepFailure) as failure:
        load_registry()
    assert failure.value.why == (
        f"{path}:{line}: environment 'private' bastion port must be a TCP port number, not 'ssh'."
    )
