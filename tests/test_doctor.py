"""`invoke doctor`: every reason a deploy would fail, found before it starts.

A healthy local environment, then broken ones: a cluster that does not
answer, an expired client certificate, secrets still locked, a bastion that
refuses the key, a Grafana that refuses the token, a chart index without the
pinned version. The chart repository and Grafana are real HTTP servers on
127.0.0.1.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from invoke import Context
from invoke.exceptions import Exit

from sandbox import chartrepo
from tasks.cli import chain, operate
from tasks.config.context import load_registry
from tasks.core.runner import PROJECT_ROOT
from tasks.flows import doctor
from tasks.flows.doctor import FAIL, OK, WARN
from tasks.steps import charts
from tests.fakes.downloads import FileServer
from tests.fakes.environments import step_context, use_registry
from tests.fakes.sshd import LocalSshd, free_port, keypair
from tests.fixtures.cluster import LocalCluster
from tests.helpers_git import certificate, kubeconfig

UPSTREAM = "https://jupyterhub.github.io/helm-chart/"
GRAFANA_TOKEN = "glsa_doctor_test_token_0123456789"


@pytest.fixture(scope="module")
def oci_registry() -> Iterator[str]:
    """A real OCI registry holding traefik, as the demo's mirror of ghcr.io: its prefix."""
    with chartrepo.mirror_oci_upstream() as prefix:
        yield prefix


@pytest.fixture(autouse=True)
def chart_repository(monkeypatch: pytest.MonkeyPatch, oci_registry: str) -> Iterator[FileServer]:
    """The chart repository's index and traefik's registry, through the mirror map like the
    demo's."""
    pinned = charts.pinned_dependencies(PROJECT_ROOT / "mybinder")
    entries = {d.name: [{"name": d.name, "version": d.version}] for d in pinned if not d.is_oci}
    with FileServer() as server:
        server.add("/index.yaml", yaml.safe_dump({"apiVersion": "v1", "entries": entries}).encode())
        monkeypatch.setenv(
            "DEPLOY_CHART_MIRRORS",
            f"{UPSTREAM}={server.url}/,{chartrepo.OCI_UPSTREAM}={oci_registry}",
        )
        yield server


def of_repository(checks: list[doctor.Check], source: str) -> list[doctor.Check]:
    return [c for c in checks if source in c.detail]


def run_doctor(env: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], str]:
    """Exit code, the check lines (without fix lines), and everything printed."""
    code = 0
    try:
        operate.doctor(Context(), env=env)
    except Exit as stopped:
        code = stopped.code
        print(stopped.message)
    out = capsys.readouterr().out
    checks = [line for line in out.splitlines() if line.split(" ", 1)[0] in (OK, WARN, FAIL)]
    return code, checks, out


def line_of(checks: list[str], subject: str) -> str:
    return next(line for line in checks if line.split()[1] == subject)


def kubeconfig_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str, **extra: object
) -> Path:
    secrets = tmp_path / "secrets"
    (secrets / "config").mkdir(parents=True, exist_ok=True)
    (secrets / "config" / "common.yaml").write_text("# secret values\n")
    (secrets / "config" / "site.yaml").write_text(
        "federationRedirect:\n  secretToken: doctor-test-token\n"
    )
    (secrets / "kubeconfig").write_text(text)
    body = {"cluster": {"kind": "kubeconfig", "kubeconfig": "kubeconfig"}, **extra}
    use_registry(monkeypatch, tmp_path, {"site": body})
    return secrets


def closed_port_kubeconfig(cluster: LocalCluster) -> tuple[str, int]:
    """The local cluster's kubeconfig, pointed at a port where nothing listens."""
    port = free_port()
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
    return yaml.safe_dump(config), port


@pytest.mark.cluster
def test_a_healthy_local_environment_is_all_ok(
    local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DEPLOY_REGISTRY", raising=False)
    code, checks, out = run_doctor("local-staging", capsys)
    assert code == 0, out
    assert [line.split()[1] for line in checks] == [
        "tools",
        "tools",
        "tools",
        "secrets",
        "credentials",
        "cluster",
        "namespace",
        "lock",
        "release",
        "release",
        "grafana",
        "charts",
        "charts",
    ]
    assert all(line.startswith(OK) for line in checks), out
    assert "may create and patch Deployments in binder-staging" in line_of(checks, "namespace")


@pytest.mark.cluster
def test_a_cluster_that_does_not_answer_fails_with_its_address(
    local_cluster: LocalCluster,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    text, port = closed_port_kubeconfig(local_cluster)
    kubeconfig_environment(monkeypatch, tmp_path, text)
    code, checks, out = run_doctor("site", capsys)
    assert code == 1
    assert line_of(checks, "cluster") == (
        f"FAIL  cluster     Nothing answers at 127.0.0.1:{port}: the API server is down "
        "or the address is wrong."
    )
    assert not any(line.split()[1] == "namespace" for line in checks)
    assert "FAILED: doctor on site" in out


def test_an_expired_client_certificate_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = certificate(tmp_path / "pki", expired=True)
    kubeconfig_environment(monkeypatch, tmp_path, kubeconfig(cert, key))
    code, checks, out = run_doctor("site", capsys)
    assert code == 1
    credentials = line_of(checks, "credentials")
    assert credentials.startswith("FAIL")
    assert "expired on 2025-01-01 00:00 UTC" in credentials
    assert "k3s certificate rotate" in out
    assert not any(line.split()[1] == "cluster" for line in checks)


def test_a_client_certificate_about_to_expire_warns(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cert, key = certificate(tmp_path / "pki", days=10)
    kubeconfig_environment(monkeypatch, tmp_path, kubeconfig(cert, key))
    ctx = step_context("site", "doctor")
    checks = doctor.credential_checks(ctx)
    assert [c.status for c in checks] == [WARN]
    assert "expires within 30 days" in checks[0].detail


def test_locked_secrets_fail_with_the_unlock_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secrets = kubeconfig_environment(monkeypatch, tmp_path, "locked below")
    for name in ("kubeconfig", "config/site.yaml"):
        (secrets / name).write_bytes(b"\x00GITCRYPT\x00" + os.urandom(48))
    code, checks, out = run_doctor("site", capsys)
    assert code == 1
    assert line_of(checks, "secrets") == (
        f"FAIL  secrets     2 file(s) of {secrets} are still encrypted: "
        f"{secrets / 'config' / 'site.yaml'}, {secrets / 'kubeconfig'}"
    )
    assert "fix: invoke decrypt-secrets --env=site" in out
    assert "still encrypted" in line_of(checks, "credentials")


@pytest.mark.cluster
def test_a_wrong_bastion_key_fails_clearly(
    local_cluster: LocalCluster,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with LocalSshd(tmp_path / "sshd") as bastion:
        secrets = kubeconfig_environment(
            monkeypatch,
            tmp_path,
            local_cluster.kubeconfig.read_text(),
            bastion={
                "host": "127.0.0.1",
                "port": bastion.port,
                "user": bastion.user,
                "key_file": "bastion_key",
                "known_hosts": "known_hosts",
            },
        )
        keypair(secrets / "bastion_key")
        (secrets / "known_hosts").write_text(bastion.known_hosts_line)
        code, checks, _ = run_doctor("site", capsys)
    assert code == 1
    assert line_of(checks, "cluster") == (
        f"FAIL  cluster     The bastion refused the key bastion_key for "
        f"{bastion.user}@127.0.0.1:{bastion.port}."
    )


def grafana_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, grafana: FileServer, token: str
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / "grafana-token").write_text(token + "\n")
    body = {
        "cluster": {"kind": "local", "name": "binder-staging"},
        "grafana": {"url": grafana.url, "token_file": "grafana-token"},
    }
    use_registry(monkeypatch, tmp_path, {"site": body})


def test_grafana_accepting_the_token_is_ok(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with FileServer() as grafana:
        grafana.add("/api/annotations", b"[]", token=GRAFANA_TOKEN)
        grafana_environment(monkeypatch, tmp_path, grafana, GRAFANA_TOKEN)
        check = doctor.grafana_check(load_registry().get("site"))
    assert check == doctor.Check("grafana", OK, f"{grafana.url} accepts the token")


def test_grafana_refusing_the_token_fails(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with FileServer() as grafana:
        grafana.add("/api/annotations", b"[]", token=GRAFANA_TOKEN)
        grafana_environment(monkeypatch, tmp_path, grafana, "glsa_revoked_token_9876543210")
        check = doctor.grafana_check(load_registry().get("site"))
    assert check.status == FAIL
    assert check.detail == f"{grafana.url} refused the token (HTTP 401)"
    assert "grafana-token" in check.fix


def test_a_chart_index_without_the_pinned_version_fails(
    chart_repository: FileServer,
) -> None:
    chart_repository.add("/index.yaml", b"apiVersion: v1\nentries:\n  binderhub: []\n")
    checks = doctor.chart_checks(load_registry())
    assert [c.status for c in of_repository(checks, chart_repository.url)] == [FAIL]
    assert of_repository(checks, chart_repository.url)[0].detail.endswith(
        "the index does not list this version"
    )
    # traefik, a dependency and the demo's first release, is checked once, in its registry.
    [traefik] = of_repository(checks, "traefik")
    assert traefik.status == OK and traefik.detail.endswith("/traefik/helm/traefik: listed")


def test_an_oci_registry_without_the_pinned_version_fails(
    monkeypatch, oci_registry, chart_repository
) -> None:
    empty = oci_registry.replace("/traefik/helm", "/elsewhere/helm")
    monkeypatch.setenv(
        "DEPLOY_CHART_MIRRORS",
        f"{UPSTREAM}={chart_repository.url}/,{chartrepo.OCI_UPSTREAM}={empty}",
    )
    checks = of_repository(doctor.chart_checks(load_registry()), empty)
    assert [c.status for c in checks] == [FAIL]
    assert checks[0].detail == (
        f"traefik 41.1.1 from {empty}/traefik: the registry has no tag for this version"
    )


def test_an_unreachable_chart_repository_warns_when_the_archive_is_already_here(
    chart_repository: FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    chart_repository.fail("/index.yaml", 503, times=10)
    registry = load_registry()
    pinned = charts.pinned_dependencies(PROJECT_ROOT / registry.chart)
    fetched = all(
        charts.archive_is_valid(PROJECT_ROOT / registry.chart / "charts" / d.archive, d)
        for d in pinned
    )
    checks = of_repository(doctor.chart_checks(registry), chart_repository.url)
    assert [c.status for c in checks] == [WARN if fetched else FAIL]
    assert "HTTP 503" in checks[0].detail


@pytest.mark.cluster
def test_preflight_stops_a_deploy_before_it_changes_anything(
    local_cluster: LocalCluster,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    text, port = closed_port_kubeconfig(local_cluster)
    kubeconfig_environment(monkeypatch, tmp_path, text)
    with pytest.raises(Exit) as stopped:
        chain.deploy(Context(), env="site", yes=True)
    out = capsys.readouterr().out
    assert stopped.value.code == 1
    assert "FAILED: preflight on site" in str(stopped.value.message)
    assert f"Nothing answers at 127.0.0.1:{port}" in str(stopped.value.message)
    for later in ("lock", "annotate-grafana", "upgrade"):
        assert f"==> {later}" not in out


def test_preflight_defers_to_decrypt_secrets_when_they_are_locked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secrets = kubeconfig_environment(monkeypatch, tmp_path, "")
    (secrets / "kubeconfig").write_bytes(b"\x00GITCRYPT\x00" + os.urandom(48))
    doctor.preflight(Context(), "site")
    out = capsys.readouterr().out
    assert "WARN  secrets     still locked: the cluster is checked after decrypt-secrets" in out
