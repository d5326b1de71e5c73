"""helm-deps: exact pins, retries over a flaky network, mirrors, and clear failures."""

import time
from pathlib import Path

import pytest
import yaml

from tasks.adapters import go_builds
from tasks.core.errors import Skipped, StepFailure
from tasks.steps import charts
from tests.fakes.chart_repository import ChartRepository, make_chart, package_chart

UPSTREAM = "https://charts.example.org/stable/"


@pytest.fixture(scope="module")
def helm() -> Path:
    return go_builds.binary("helm")


@pytest.fixture
def repository(tmp_path, helm):
    sources = tmp_path / "sources"
    served = tmp_path / "served"
    for version in ("1.2.0", "1.3.0", "1.4.0-0.dev.git.7.habc"):
        package_chart(helm, make_chart(sources / version, "hub", version), served)
    with ChartRepository(served) as repo:
        yield repo


def site_chart(tmp_path: Path, version: str = "1.3.0", locked: str | None = None) -> Path:
    chart = tmp_path / "site"
    chart.mkdir()
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\nname: site\nversion: 0.1.0\ndependencies:\n"
        f"  - name: hub\n    version: {version}\n    repository: {UPSTREAM}\n"
    )
    requirements = [{"name": "hub", "version": version, "repository": UPSTREAM}]
    pins = [{"name": "hub", "version": locked or version, "repository": UPSTREAM}]
    lock = {"dependencies": pins, "digest": charts.lock_digest(requirements, pins)}
    (chart / "Chart.lock").write_text(yaml.safe_dump(lock))
    return chart


def test_fetches_the_pinned_version_through_the_mirror(tmp_path, repository):
    chart = site_chart(tmp_path)
    note = charts.sync_dependencies(chart, {UPSTREAM: repository.url})
    assert note == "fetched hub-1.3.0.tgz"
    assert [p.name for p in (chart / "charts").iterdir()] == ["hub-1.3.0.tgz"]
    assert charts.archive_is_valid(
        chart / "charts" / "hub-1.3.0.tgz", charts.Dependency("hub", "1.3.0", UPSTREAM)
    )


def test_second_run_touches_no_network_and_is_fast(tmp_path, repository):
    chart = site_chart(tmp_path)
    charts.sync_dependencies(chart, {UPSTREAM: repository.url})
    before = len(repository.requests)
    started = time.monotonic()
    with pytest.raises(Skipped, match="already in"):
        charts.sync_dependencies(chart, {UPSTREAM: repository.url})
    assert time.monotonic() - started < 0.5
    assert len(repository.requests) == before


def test_repository_failing_twice_then_answering_is_retried(tmp_path, repository, capsys):
    repository.fail_next(2, status=503)
    chart = site_chart(tmp_path)
    assert charts.sync_dependencies(chart, {UPSTREAM: repository.url}) == "fetched hub-1.3.0.tgz"
    assert repository.requests[:3] == ["/index.yaml"] * 3
    assert "HTTP 503" in capsys.readouterr().out


def test_repository_that_keeps_failing_names_url_and_last_error(tmp_path, repository):
    repository.fail_next(10, status=502)
    with pytest.raises(StepFailure) as raised:
        charts.sync_dependencies(site_chart(tmp_path), {UPSTREAM: repository.url})
    assert repository.url in raised.value.why
    assert "HTTP 502" in raised.value.why and "after 4 attempts" in raised.value.why


def test_unreachable_repository_is_a_connection_failure(tmp_path):
    with pytest.raises(StepFailure, match="connection failed"):
        charts.sync_dependencies(site_chart(tmp_path), {UPSTREAM: "http://127.0.0.1:9/"})


def test_version_not_in_index_lists_what_is_there_and_says_to_wait(tmp_path, repository):
    chart = site_chart(tmp_path, version="1.5.0")
    with pytest.raises(StepFailure) as raised:
        charts.sync_dependencies(chart, {UPSTREAM: repository.url})
    failure = raised.value
    assert "Can't get a valid version for hub: 1.5.0" in failure.why
    assert "1.4.0-0.dev.git.7.habc, 1.3.0, 1.2.0" in failure.why
    assert "not be published yet" in failure.fix
    assert list((chart / "charts").glob("*.tgz")) == []


def test_version_missing_from_a_mirror_names_the_mirror_that_was_read(tmp_path, repository):
    chart = site_chart(tmp_path, version="1.5.0")
    with pytest.raises(StepFailure) as raised:
        charts.sync_dependencies(chart, {UPSTREAM: repository.url})
    failure = raised.value
    mirror = repository.url.rstrip("/") + "/"
    assert f"is not in the index of {mirror} (mirror of {UPSTREAM})" in failure.why
    assert f"The mirror {mirror} may lag behind {UPSTREAM}" in failure.fix


def test_archive_not_matching_the_index_digest_is_not_kept(tmp_path, repository):
    repository.replace_archive("hub-1.3.0.tgz", b"not the archive the index describes")
    chart = site_chart(tmp_path)
    with pytest.raises(StepFailure, match="does not match the digest"):
        charts.sync_dependencies(chart, {UPSTREAM: repository.url})
    assert list((chart / "charts").glob("*.tgz")) == []


def test_lock_out_of_step_with_chart_yaml_is_refused(tmp_path, repository):
    chart = site_chart(tmp_path, version="1.3.0", locked="1.2.0")
    with pytest.raises(StepFailure, match=r"Chart\.lock is out of date for hub"):
        charts.sync_dependencies(chart, {UPSTREAM: repository.url})


def test_stale_archive_of_another_version_is_removed(tmp_path, repository):
    chart = site_chart(tmp_path)
    (chart / "charts").mkdir()
    (chart / "charts" / "hub-1.2.0.tgz").write_bytes(b"old")
    charts.sync_dependencies(chart, {UPSTREAM: repository.url})
    assert [p.name for p in (chart / "charts").iterdir()] == ["hub-1.3.0.tgz"]


def test_dry_run_fetches_nothing(tmp_path, repository, capsys):
    chart = site_chart(tmp_path)
    assert charts.sync_dependencies(chart, {UPSTREAM: repository.url}, dry_run=True) == "1 to fetch"
    assert repository.requests == []
    assert f"[dry-run] fetch hub-1.3.0.tgz from {repository.url}" in capsys.readouterr().out


def test_locked_secret_layers_are_replaced_by_placeholders_for_validation(tmp_path):
    from dataclasses import replace

    from tasks.config import registry
    from tasks.core.runner import PROJECT_ROOT

    secrets_dir = tmp_path / "secrets"
    (secrets_dir / "config").mkdir(parents=True)
    (secrets_dir / "config" / "staging.yaml").write_bytes(b"\x00GITCRYPT\x00" + bytes(32))
    env = replace(registry.load().get("staging"), secrets_dir=secrets_dir)
    layers, placeholders = charts.validation_layers(env.target())
    assert placeholders == [secrets_dir / "config" / "staging.yaml"]
    assert layers[-1] == PROJECT_ROOT / charts.PLACEHOLDER_SECRETS
    assert PROJECT_ROOT / "config" / "staging.yaml" in layers
