"""`invoke tools`: pinned downloads, verified, retried, and the Go build where they cannot arrive.

The downloads come from a real HTTP server on 127.0.0.1 serving a release
archive built by the test, with the test's own pinned checksum.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from invoke import Context
from invoke.exceptions import Exit

from tasks.adapters import go_builds, toolchain
from tasks.adapters.toolchain import Download
from tasks.cli import steps
from tasks.core.errors import StepFailure
from tests.fakes.downloads import FileServer

PINNED_HELM = go_builds.pinned_versions()["helm"]


def fake_binary(prints: str) -> bytes:
    return f"#!/bin/sh\necho '{prints}'\n".encode()


def helm_archive(prints: str = f"{PINNED_HELM}+gtest") -> bytes:
    """A release archive laid out like get.helm.sh's: linux-amd64/helm inside."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        body = fake_binary(prints)
        member = tarfile.TarInfo("linux-amd64/helm")
        member.size = len(body)
        member.mode = 0o755
        tar.addfile(member, io.BytesIO(body))
    return buffer.getvalue()


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer() as running:
        yield running


def helm_download(server: FileServer, archive: bytes, checksum: str | None = None) -> Download:
    url = server.add("/helm.tar.gz", archive)
    return Download(
        name="helm",
        version=PINNED_HELM,
        url=url,
        sha256=checksum if checksum is not None else sha256(archive),
        member="linux-amd64/helm",
    )


def test_verified_download_is_installed_into_the_tools_folder(
    server: FileServer, tmp_path: Path
) -> None:
    download = helm_download(server, helm_archive())
    installed = toolchain.install_download(download, tmp_path)
    assert installed == tmp_path / "helm"
    assert os.access(installed, os.X_OK)
    assert toolchain.version_of(installed, "helm") == PINNED_HELM
    assert sorted(p.name for p in tmp_path.iterdir()) == ["helm"]


def test_server_errors_are_retried_until_the_download_arrives(
    server: FileServer, tmp_path: Path
) -> None:
    download = helm_download(server, helm_archive())
    server.fail("/helm.tar.gz", 503, times=2)
    toolchain.install_download(download, tmp_path)
    assert server.hits["/helm.tar.gz"] == 3
    assert toolchain.version_of(tmp_path / "helm", "helm") == PINNED_HELM


def test_checksum_mismatch_is_refused_and_leaves_no_file(
    server: FileServer, tmp_path: Path
) -> None:
    download = helm_download(server, helm_archive(), checksum="0" * 64)
    with pytest.raises(StepFailure) as failure:
        toolchain.install_download(download, tmp_path)
    assert "SHA-256" in failure.value.why
    assert "0" * 64 in failure.value.why
    assert "nothing was installed" in failure.value.why
    assert not any(tmp_path.iterdir())


def test_checksum_mismatch_never_falls_back_to_the_go_build(
    server: FileServer, tmp_path: Path
) -> None:
    download = helm_download(server, helm_archive(), checksum="1" * 64)
    with pytest.raises(StepFailure, match="SHA-256"):
        toolchain.ensure(download, source="auto", bin_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_archive_of_another_version_is_refused(server: FileServer, tmp_path: Path) -> None:
    download = helm_download(server, helm_archive(prints="v3.0.0+gold"))
    with pytest.raises(StepFailure, match=r"reports version v3\.0\.0"):
        toolchain.install_download(download, tmp_path)
    assert not any(tmp_path.iterdir())


def test_download_without_recorded_checksum_is_refused(server: FileServer, tmp_path: Path) -> None:
    download = helm_download(server, helm_archive(), checksum="")
    with pytest.raises(StepFailure, match="records no SHA-256"):
        toolchain.install_download(download, tmp_path)
    assert server.hits["/helm.tar.gz"] == 0


def test_unreachable_download_falls_back_to_the_pinned_go_build(
    server: FileServer, tmp_path: Path
) -> None:
    download = helm_download(server, helm_archive())
    server.fail("/helm.tar.gz", 503, times=4)
    how = toolchain.ensure(download, source="auto", bin_dir=tmp_path)
    assert how == "Go build from the module proxy"
    linked = tmp_path / "helm"
    assert linked.resolve() == go_builds.binary("helm").resolve()
    assert toolchain.version_of(linked, "helm") == PINNED_HELM


def test_download_only_source_fails_instead_of_building(server: FileServer, tmp_path: Path) -> None:
    download = helm_download(server, helm_archive())
    server.fail("/helm.tar.gz", 502, times=4)
    with pytest.raises(StepFailure) as failure:
        toolchain.ensure(download, source="download", bin_dir=tmp_path)
    assert "HTTP 502" in failure.value.why
    assert "--source=go" in failure.value.fix


def test_a_tool_already_at_its_version_is_not_fetched_again(
    server: FileServer, tmp_path: Path
) -> None:
    download = helm_download(server, helm_archive())
    toolchain.ensure(download, bin_dir=tmp_path)
    assert toolchain.ensure(download, bin_dir=tmp_path) == "already there"
    assert server.hits["/helm.tar.gz"] == 1


def test_pins_and_download_addresses_come_from_tools_yaml() -> None:
    pinned = toolchain.downloads()
    kubernetes = go_builds.pinned_versions()["kubernetes"]
    assert pinned["kubectl"].version == kubernetes
    assert pinned["kubectl"].url == (
        f"https://dl.k8s.io/release/{kubernetes}/bin/linux/amd64/kubectl"
    )
    assert len(pinned["kubectl"].sha256) == 64
    assert pinned["helm"].url == f"https://get.helm.sh/helm-{PINNED_HELM}-linux-amd64.tar.gz"
    assert pinned["helm"].member == "linux-amd64/helm"
    assert toolchain.system_tools()["git-crypt"].version == "0.7.0"
    assert toolchain.system_tools()["gcloud"].needed_by == "gke"


def test_the_tools_folder_comes_before_everything_else(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(toolchain, "TOOLS_BIN", tmp_path)
    (tmp_path / "helm").write_bytes(fake_binary("v3.9.9"))
    (tmp_path / "helm").chmod(0o755)
    dirs = toolchain.search_dirs()
    assert dirs[0] == tmp_path
    assert toolchain.locate("helm") == tmp_path / "helm"
    line = next(line for line in toolchain.describe_tools() if line.startswith("helm"))
    assert line == (
        f"helm v3.9.9 ({tmp_path / 'helm'}), but {PINNED_HELM} is pinned. "
        "Run `invoke tools` to install the pinned version."
    )


def test_describe_tools_names_each_binary_and_version() -> None:
    lines = toolchain.describe_tools()
    assert [line.split()[0] for line in lines] == ["helm", "kubectl", "git-crypt"]
    assert lines[0].startswith(f"helm {PINNED_HELM} (")


def test_invoke_tools_installs_both_tools_then_reports_them(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    server: FileServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kubernetes = go_builds.pinned_versions()["kubernetes"]
    kubectl = fake_binary(f"Client Version: {kubernetes}")
    pinned = {
        "helm": helm_download(server, helm_archive()),
        "kubectl": Download(
            "kubectl", kubernetes, server.add("/kubectl", kubectl), sha256(kubectl)
        ),
    }
    server.fail("/kubectl", 500, times=1)
    monkeypatch.setattr(toolchain, "TOOLS_BIN", tmp_path / "bin")
    monkeypatch.setattr(toolchain, "downloads", lambda: pinned)
    steps.tools(Context(), env="local-staging")
    out = capsys.readouterr().out
    assert f"helm {PINNED_HELM}: downloaded and verified" in out
    assert f"kubectl {kubernetes}: downloaded and verified" in out
    assert f"OK    kubectl {kubernetes} ({tmp_path / 'bin' / 'kubectl'})" in out
    assert "gcloud" not in out  # local-staging does not need it


def test_invoke_tools_check_fails_on_a_wrong_version_and_installs_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(toolchain, "TOOLS_BIN", tmp_path)
    (tmp_path / "kubectl").write_bytes(fake_binary("Client Version: v1.20.0"))
    (tmp_path / "kubectl").chmod(0o755)
    with pytest.raises(Exit) as stopped:
        steps.tools(Context(), env="local-staging", check=True)
    assert stopped.value.code == 1
    assert "kubectl" in str(stopped.value.message)
    assert "invoke tools" in str(stopped.value.message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kubectl"]
