"""A gated environment deploys exactly what its gate verified, or refuses and says what differs."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from sandbox import clusters
from tasks.core.runner import PROJECT_ROOT
from tasks.steps import promotion
from tasks.steps.promotion import Promotion, chart_files, differences
from tests.fakes.environments import step_context
from tests.fixtures.chain import change_environment, demo_registry, invoke, release_exists

VERIFIED = Promotion(
    environment="staging",
    commit="1111111111111111111111111111111111111111",
    chart="mybinder 0.1.0",
    chart_files={"Chart.lock": "sha256:aa", "charts/binderhub-1.tgz": "sha256:bb"},
    layers={
        "config/common.yaml": "sha256:c1",
        "secrets/config/common.yaml": "sha256:c2",
        "config/staging.yaml": "sha256:s1",
    },
)


def test_the_same_deploy_has_no_differences_whatever_its_own_layers():
    mine = replace(
        VERIFIED,
        environment="prod",
        layers={**VERIFIED.layers, "config/prod.yaml": "sha256:p1"},
    )
    assert differences(VERIFIED, mine) == []


def test_each_difference_is_named():
    mine = replace(
        VERIFIED,
        commit="2222222222222222222222222222222222222222",
        chart="mybinder 0.2.0",
        chart_files={**VERIFIED.chart_files, "charts/binderhub-1.tgz": "sha256:other"},
        layers={**VERIFIED.layers, "secrets/config/common.yaml": "sha256:changed"},
    )
    assert differences(VERIFIED, mine) == [
        "commit: staging verified 111111111111, this checkout is at 222222222222",
        "chart: staging verified mybinder 0.1.0, this checkout has mybinder 0.2.0",
        "chart files differ from what staging verified: charts/binderhub-1.tgz",
        "values layer secrets/config/common.yaml differs from the one staging verified",
    ]


def test_the_record_survives_the_cluster_round_trip():
    assert Promotion.from_data(VERIFIED.data()) == VERIFIED


def test_the_chart_digest_covers_its_files_and_pinned_archives_only(tmp_path):
    chart = tmp_path / "mybinder"
    shutil.copytree(PROJECT_ROOT / "mybinder", chart, ignore=shutil.ignore_patterns("charts"))
    (chart / "charts").mkdir()
    (chart / "charts" / "binderhub-0.0.1-old.tgz").write_bytes(b"left from an older version")
    found = chart_files(chart)
    assert "Chart.lock" in found and "values.yaml" in found
    assert any(name.startswith("templates/") for name in found)
    assert "charts/binderhub-0.0.1-old.tgz" not in found
    archives = {name: digest for name, digest in found.items() if name.startswith("charts/")}
    assert archives == {
        "charts/binderhub-1.0.0-0.dev.git.3959.hb9fad995.tgz": "missing",
        "charts/traefik-41.1.1.tgz": "missing",
    }


def test_the_record_holds_digests_of_secret_layers_never_their_values(demo_secrets):
    ctx = step_context("local-prod", "verified")
    env = ctx.environment
    record = promotion.describe(ctx, env)
    secret_layer = env.secret_path("config/local-prod.yaml")
    secret = yaml.safe_load(secret_layer.read_text())["federationRedirect"]["secretToken"]
    shown = str(secret_layer.relative_to(PROJECT_ROOT))
    assert record.layers[shown].startswith("sha256:")
    assert secret not in json.dumps(record.data())


def plant_verified_commit(namespace: str, commit: str) -> None:
    found = json.loads(
        clusters.kubectl(
            "binder-staging", "get", "configmap", promotion.RECORD, "-n", namespace, "-o", "json"
        )
    )
    found["data"]["commit"] = commit
    patch = json.dumps({"data": found["data"]})
    clusters.kubectl(
        "binder-staging", "patch", "configmap", promotion.RECORD, "-n", namespace, "-p", patch
    )


@pytest.mark.cluster
def test_a_member_refuses_what_staging_did_not_verify_before_touching_its_cluster(
    both_clusters, tmp_path: Path
):
    shared = tmp_path / "shared.yaml"
    shared.write_text("static:\n  replicas: 2\n")
    env, namespaces = demo_registry(tmp_path, {"extra_values": [str(shared)]})
    change_environment(env, "local-prod", extra_values=[str(shared)])
    staged = invoke("deploy", "--env=local-staging", env=env)
    assert staged.returncode == 0, (staged.stdout + staged.stderr)[-3000:]

    # A shared layer changed since staging verified it.
    shared.write_text("static:\n  replicas: 3\n")
    refused = invoke("upgrade", "--env=local-prod", env=env)
    out = refused.stdout + refused.stderr
    assert refused.returncode == 1, out[-3000:]
    assert "FAILED: upgrade on local-prod" in out
    assert f"values layer {shared} differs from the one local-staging verified" in out
    assert "--promote-unverified" in out and "Traceback" not in out
    assert not release_exists("binder-prod", namespaces["local-prod"])
    untouched = clusters.kubectl("binder-prod", "get", "namespaces", "-o", "name")
    assert f"namespace/{namespaces['local-prod']}" not in untouched

    # Another commit than the one staging verified.
    shared.write_text("static:\n  replicas: 2\n")
    plant_verified_commit(namespaces["local-staging"], "0123456789abcdef0123456789abcdef01234567")
    refused = invoke("upgrade", "--env=local-prod", env=env)
    out = refused.stdout + refused.stderr
    assert refused.returncode == 1, out[-3000:]
    assert "commit: local-staging verified 0123456789ab, this checkout is at" in out
    assert not release_exists("binder-prod", namespaces["local-prod"])

    # Overridden, the upgrade goes ahead and the summary says what was not verified.
    forced = invoke("upgrade", "--env=local-prod", "--promote-unverified", env=env)
    out = forced.stdout + forced.stderr
    assert forced.returncode == 0, out[-3000:]
    assert "local-prod was deployed with what local-staging did NOT verify" in out
    assert release_exists("binder-prod", namespaces["local-prod"])
