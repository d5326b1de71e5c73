"""Charts from OCI registries, against a real one: the CNCF distribution registry on loopback,
holding the traefik chart mybinder.org pins, pushed with `helm push`."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from sandbox import chartrepo
from tasks.adapters import oci
from tasks.config import registry
from tasks.core import web
from tasks.core.errors import Skipped, StepFailure
from tasks.core.runner import PROJECT_ROOT
from tasks.steps import charts

UPSTREAM = chartrepo.OCI_UPSTREAM  # oci://ghcr.io/traefik/helm
TRAEFIK = "traefik-41.1.1.tgz"


@pytest.fixture(scope="module")
def local_registry() -> Iterator[str]:
    """A running registry holding traefik 41.1.1 under traefik/helm: yields its prefix."""
    try:
        folder = chartrepo.oci_folder()
    except StepFailure as missing:
        pytest.skip(f"{missing.why} {missing.fix}")
    with chartrepo.oci_registry() as address:
        prefix = f"oci://{address}/traefik/helm"
        chartrepo.push(folder / TRAEFIK, prefix)
        yield prefix


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(web, "DOWNLOADS", replace(web.DOWNLOADS, first_pause=0.01))


def site_chart(tmp_path: Path, version: str = "41.1.1", repository: str = UPSTREAM) -> Path:
    """A chart depending on traefik from an OCI registry, its lock as helm writes it."""
    chart = tmp_path / "site"
    chart.mkdir()
    requirement = {"name": "traefik", "version": version, "repository": repository}
    (chart / "Chart.yaml").write_text(
        yaml.safe_dump(
            {"apiVersion": "v2", "name": "site", "version": "0.1.0", "dependencies": [requirement]}
        )
    )
    lock = {
        "dependencies": [requirement],
        "digest": charts.lock_digest([requirement], [requirement]),
    }
    (chart / "Chart.lock").write_text(yaml.safe_dump(lock))
    return chart


def test_an_oci_dependency_is_pulled_at_its_pin_through_the_mirror_map(tmp_path, local_registry):
    chart = site_chart(tmp_path)
    note = charts.sync_dependencies(chart, {UPSTREAM: local_registry})
    assert note == f"fetched {TRAEFIK}"
    assert [p.name for p in (chart / "charts").iterdir()] == [TRAEFIK]
    assert charts.archive_is_valid(
        chart / "charts" / TRAEFIK, charts.Dependency("traefik", "41.1.1", UPSTREAM)
    )
    # Pinned and there: the next run reaches no registry at all.
    with pytest.raises(Skipped):
        charts.sync_dependencies(chart, {UPSTREAM: "oci://127.0.0.1:9/traefik/helm"})


def test_a_version_the_registry_lacks_names_the_reference_and_the_versions_it_has(
    tmp_path, local_registry
):
    chart = site_chart(tmp_path, version="41.9.9")
    with pytest.raises(StepFailure) as raised:
        charts.sync_dependencies(chart, {UPSTREAM: local_registry})
    why, fix = raised.value.why, raised.value.fix
    assert why.startswith("That version is not in the registry: ")
    assert f"{local_registry}/traefik (mirror of {UPSTREAM}/traefik) has no 41.9.9" in why
    assert "The versions it has: 41.1.1." in why
    assert "The mirror may lag behind" in fix
    assert not (chart / "charts" / "traefik-41.9.9.tgz").exists()


def test_a_missing_version_of_the_registry_itself_does_not_blame_a_mirror(tmp_path, local_registry):
    chart = site_chart(tmp_path, version="40.0.0", repository=local_registry)
    with pytest.raises(StepFailure) as raised:
        charts.sync_dependencies(chart, {})
    assert f"{local_registry}/traefik has no 40.0.0" in raised.value.why
    assert "41.1.1" in raised.value.why and "mirror" not in raised.value.fix


def test_a_registry_that_is_down_is_retried_then_its_cause_named(tmp_path, capsys):
    down = f"oci://127.0.0.1:{chartrepo.free_port()}/traefik/helm"
    chart = site_chart(tmp_path)
    with pytest.raises(StepFailure) as raised:
        charts.sync_dependencies(chart, {UPSTREAM: down})
    assert capsys.readouterr().out.count("retrying in") == 3
    why = raised.value.why
    assert why.startswith(f"Could not reach the OCI registry of {down}/traefik (mirror of ")
    assert "connection refused (after 4 attempts)" in why
    assert "is it running?" in why
    assert "repository_mirrors" in raised.value.fix


def test_mirrors_replace_the_longest_matching_prefix_of_whole_path_segments():
    mirrors = {
        "oci://ghcr.io/traefik": "oci://m1/t",
        "oci://ghcr.io/traefik/helm/": "oci://127.0.0.1:5000/traefik/helm",
        "https://charts.example.org/": "http://127.0.0.1:8000/",
    }
    assert (
        oci.mirrored(f"{UPSTREAM}/traefik", mirrors) == "oci://127.0.0.1:5000/traefik/helm/traefik"
    )
    assert oci.mirrored("oci://ghcr.io/traefik/other", mirrors) == "oci://m1/t/other"
    assert oci.mirrored("oci://ghcr.io/traefikx/a", mirrors) == "oci://ghcr.io/traefikx/a"
    assert oci.registry_flags("oci://127.0.0.1:5000/a/b") == ["--plain-http"]
    assert oci.registry_flags("oci://ghcr.io/a/b") == []


def release_registry(tmp_path: Path, digest: str = "") -> registry.Registry:
    pinned = f", digest: '{digest}'" if digest else ""
    (tmp_path / "environments.yaml").write_text(
        "environments:\n"
        "  a:\n"
        "    cluster: {kind: local, name: binder-staging}\n"
        "    secrets: {dir: secrets/demo, key: {source: file, path: k.key}}\n"
        "    releases:\n"
        f"      - {{name: traefik, chart: {UPSTREAM}/traefik, version: 41.1.1, "
        f"namespace: traefik{pinned}}}\n"
        "      - {name: binder, chart: mybinder, namespace: binder}\n"
    )
    return registry.load(PROJECT_ROOT, tmp_path / "environments.yaml")


@pytest.fixture
def release_charts(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "release-charts"
    monkeypatch.setattr(charts, "RELEASE_CHARTS", folder)
    return folder


def test_a_release_chart_is_fetched_once_at_its_pinned_digest(
    tmp_path, local_registry, release_charts, monkeypatch
):
    monkeypatch.setenv("DEPLOY_CHART_MIRRORS", f"{UPSTREAM}={local_registry}")
    loaded = release_registry(tmp_path)
    note = charts.sync_release_charts(loaded, dry_run=False)
    assert note == f"fetched release charts {TRAEFIK}"
    digest = (release_charts / f"{TRAEFIK}.digest").read_text().strip()
    assert digest.startswith("sha256:") and len(digest) == 71
    traefik = loaded.get("a").target("traefik").release
    assert charts.chart_of(loaded, traefik) == release_charts / TRAEFIK
    # Pinned at that digest, the archive already there is enough: no registry is asked.
    monkeypatch.setenv("DEPLOY_CHART_MIRRORS", f"{UPSTREAM}=oci://127.0.0.1:9/traefik/helm")
    with pytest.raises(Skipped):
        charts.sync_release_charts(release_registry(tmp_path, digest), dry_run=False)


def test_a_release_chart_whose_digest_is_not_the_pinned_one_is_refused(
    tmp_path, local_registry, release_charts, monkeypatch
):
    monkeypatch.setenv("DEPLOY_CHART_MIRRORS", f"{UPSTREAM}={local_registry}")
    pinned = "sha256:" + "0" * 64
    with pytest.raises(StepFailure) as raised:
        charts.sync_release_charts(release_registry(tmp_path, pinned), dry_run=False)
    assert f"not the {pinned} pinned for it. It was not kept." in raised.value.why
    assert not (release_charts / TRAEFIK).exists()


class TokenRegistry(BaseHTTPRequestHandler):
    """A registry that wants a bearer token, as ghcr.io does (the distribution token protocol):
    401 with a challenge, an anonymous token from the realm, then the tag list."""

    def do_GET(self) -> None:
        port = self.server.server_address[1]
        if self.path.startswith("/token?"):
            body = {"token": "anonymous"}
        elif self.headers.get("Authorization") != "Bearer anonymous":
            self.send_response(401)
            realm = f'Bearer realm="http://127.0.0.1:{port}/token",service="registry"'
            self.send_header("WWW-Authenticate", realm + ',scope="repository:a/b:pull"')
            self.end_headers()
            return
        else:
            body = {"name": "a/b", "tags": ["1.0.0", "1.1.0", "2.0.0-rc.1_build.5"]}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_tags_are_listed_with_an_anonymous_token_where_the_registry_asks_for_one():
    server = ThreadingHTTPServer(("127.0.0.1", 0), TokenRegistry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        found = oci.tags(f"oci://127.0.0.1:{server.server_address[1]}/a/b")
    finally:
        server.shutdown()
        server.server_close()
    # A tag cannot hold "+": helm pushes a version's "+" as "_".
    assert found == ["1.0.0", "1.1.0", "2.0.0-rc.1+build.5"]
