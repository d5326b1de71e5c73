"""Shared fixtures for the project's own tests.

`tests/smoke/` is not part of this suite: it is the deployment validation
suite that `invoke smoke-test --env=X` runs against a live environment.
"""

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tasks.core import run, web
from tests.fixtures.chain import both_clusters, demo_clusters, demo_namespaces_cleaned_up
from tests.fixtures.cluster import LocalCluster, local_cluster
from tests.fixtures.site_chart import chart_dependencies, demo_secrets, site_env

collect_ignore = ["smoke"]
HERE = Path(__file__).parent

# `invoke test` runs the suite as two shards at once (tasks/cli/checks.py), BINDER_TEST_SHARD
# naming the one a pytest runs: "1" or "2", or "1-quick" or "2-quick" for `--quick`. The
# second runs the cluster tests of SECOND_SHARD's files, or with `--quick` the tests of
# QUICK_SECOND_SHARD's; the first runs everything else. Each share is about half the
# time (figures in the README's Tests section).
SECOND_SHARD = {
    "test_federation.py",
    "test_release.py",
    "test_smoke_suite.py",
    "test_rollout.py",
    "test_cluster.py",
    "test_smoke_binderhub.py",
}
QUICK_SECOND_SHARD = {
    "test_smoke_suite.py",
    "test_run_page.py",
    "test_site_chart.py",
    "test_helm_deps.py",
    "test_notifications.py",
    "test_web.py",
    "test_grafana.py",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    shard = os.environ.get("BINDER_TEST_SHARD")
    # The smoke suite, which the tests run in pytests of its own, is never sharded.
    if not shard or any(item.path.parent != HERE for item in items):
        return
    number, _, quick = shard.partition("-")
    kept, left = [], []
    for item in items:
        cluster = item.get_closest_marker("cluster") is not None
        if quick:
            second = item.path.name in QUICK_SECOND_SHARD
        else:
            second = cluster and item.path.name in SECOND_SHARD
        (kept if second == (number == "2") else left).append(item)
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = kept


@pytest.fixture(autouse=True)
def fresh_run() -> Iterator[run.Run]:
    """Every test in a run of its own: its masker, summary, registry and held credentials."""
    with run.fresh() as state:
        yield state


@pytest.fixture(autouse=True)
def quick_http_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP retries as the pipeline makes them, without its pauses between them."""
    for name in ("DOWNLOADS", "PROBES", "ANNOTATIONS"):
        monkeypatch.setattr(web, name, replace(getattr(web, name), first_pause=0.01))


__all__ = [
    "LocalCluster",
    "both_clusters",
    "chart_dependencies",
    "demo_clusters",
    "demo_namespaces_cleaned_up",
    "demo_secrets",
    "fresh_run",
    "local_cluster",
    "quick_http_retries",
    "site_env",
]
