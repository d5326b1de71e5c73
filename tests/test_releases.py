"""Several releases per environment, and the CRDs their charts ship, on a real local cluster."""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from invoke import Context

from sandbox import clusters
from tasks.adapters import go_builds
from tasks.cli import chain
from tasks.config import registry
from tasks.config.context import StepContext, load_registry
from tasks.config.registry import Release
from tasks.core.runner import PROJECT_ROOT, Runner
from tasks.steps import crds, release
from tests.fixtures.chain import demo_registry, invoke, release_exists
from tests.fixtures.site_chart import unique_release

CLUSTER = "binder-staging"


def described(calls) -> list[str]:
    return [
        c.task.name.replace("_", "-")
        + (f"[{c.kwargs['env']}" if "env" in c.kwargs else "")
        + (f" {c.kwargs['release']}" if c.kwargs.get("release") else "")
        + ("]" if "env" in c.kwargs else "")
        for c in calls
    ]


def test_each_release_is_upgraded_and_rolled_out_before_the_next():
    steps = described(chain.plan(registry.load(), "local-staging"))
    own = steps[steps.index("lock[local-staging]") :]
    assert own == [
        "lock[local-staging]",
        "annotate-grafana[local-staging]",
        "upgrade[local-staging traefik]",
        "wait-rollout[local-staging traefik]",
        "upgrade[local-staging binder]",
        "wait-rollout[local-staging binder]",
        "smoke-test[local-staging]",
        "deploy-local-staging",
    ]
    # An environment of one release keeps its steps as they were.
    prod = described(chain.plan(registry.load(), "staging"))
    assert "upgrade[staging]" in prod and "wait-rollout[staging]" in prod


# -- CRDs ---------------------------------------------------------------------------


def crd(group: str, plural: str, fields: dict[str, str]) -> dict:
    kind = plural.capitalize().rstrip("s")
    properties = {name: {"type": kind_} for name, kind_ in fields.items()}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "names": {"kind": kind, "plural": plural, "singular": plural.rstrip("s")},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"spec": {"type": "object", "properties": properties}},
                        }
                    },
                }
            ],
        },
    }


def chart_with_crds(folder: Path, *documents: dict) -> Path:
    """A chart of one ConfigMap whose crds/ holds `documents`."""
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "templates").mkdir(parents=True)
    (folder / "crds").mkdir()
    (folder / "Chart.yaml").write_text("apiVersion: v2\nname: gadgets\nversion: 0.1.0\n")
    (folder / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: gadgets\ndata: {}\n"
    )
    for document in documents:
        name = document["metadata"]["name"]
        (folder / "crds" / f"{name}.yaml").write_text(yaml.safe_dump(document))
    return folder


@pytest.fixture
def crd_release(local_cluster, tmp_path) -> Iterator[tuple[StepContext, str, Path]]:
    """A context for an environment whose one release is a chart folder with CRDs."""
    group = f"t{uuid.uuid4().hex[:8]}.example.org"
    namespace = f"crd-{group.split('.')[0]}"
    folder = tmp_path / "gadgets"
    base = load_registry().get("local-staging")
    only = Release(unique_release(namespace), namespace, str(folder), site=False)
    env = replace(base, releases=(only,), listed=True)
    runner = Runner(
        Context(),
        env={"KUBECONFIG": str(local_cluster.kubeconfig)},
        tool_dirs=[go_builds.binary("helm").parent, go_builds.binary("kubectl").parent],
    )
    yield StepContext(Context(), load_registry(), env, runner, False, "upgrade"), group, folder
    clusters.kubectl(CLUSTER, "delete", "namespace", namespace, "--wait=false", check=False)
    names = clusters.kubectl(CLUSTER, "get", "crd", "-o", "name", check=False).split()
    doomed = [n for n in names if n.endswith(f".{group}")]
    if doomed:
        clusters.kubectl(CLUSTER, "delete", *doomed, "--wait=false", check=False)


def crd_fields(name: str) -> set[str]:
    found = json.loads(clusters.kubectl(CLUSTER, "get", "crd", name, "-o", "json"))
    schema = found["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return set(schema["properties"]["spec"]["properties"])


@pytest.mark.cluster
def test_crds_are_applied_before_the_release_and_kept_current(crd_release, capsys):
    ctx, group, folder = crd_release
    widgets, gadgets = f"widgets.{group}", f"gadgets.{group}"
    chart_with_crds(
        folder, crd(group, "widgets", {"size": "integer"}), crd(group, "gadgets", {"a": "string"})
    )
    note = release.upgrade_release(ctx)
    assert "2 CRD(s) applied" in note
    assert crd_fields(widgets) == {"size"}
    labels = json.loads(clusters.kubectl(CLUSTER, "get", "crd", widgets, "-o", "json"))["metadata"][
        "labels"
    ]
    assert labels[crds.RELEASE_LABEL] == ctx.target.release.name
    managers = clusters.kubectl(
        CLUSTER, "get", "crd", widgets, "--show-managed-fields", "-o", "json"
    )
    assert {m["manager"] for m in json.loads(managers)["metadata"]["managedFields"]} >= {"helm"}

    # The next chart version adds a field to widgets, drops `size`, and no longer ships gadgets.
    chart_with_crds(folder, crd(group, "widgets", {"color": "string"}))
    changes = release.diff_release(ctx)
    assert any(c.startswith(f"--- CustomResourceDefinition/{widgets}: changed") for c in changes)
    assert any("+" in c and "color" in c for c in changes)
    assert any(
        c.startswith(f"--- CustomResourceDefinition/{gadgets}: no longer shipped") for c in changes
    )
    capsys.readouterr()
    note = release.upgrade_release(ctx)
    # helm's own field manager: a field the new CRD drops is removed, not left behind.
    assert crd_fields(widgets) == {"color"}
    assert f"dropped from the chart, left in place: {gadgets}" in note
    said = capsys.readouterr().err
    assert f"kubectl delete crd {gadgets}" in said
    assert clusters.kubectl(CLUSTER, "get", "crd", gadgets, "-o", "name").strip()


@pytest.mark.cluster
def test_a_dry_run_shows_the_crds_it_would_apply_and_applies_nothing(crd_release, capsys):
    ctx, group, folder = crd_release
    chart_with_crds(folder, crd(group, "widgets", {"size": "integer"}))
    ctx.dry_run = ctx.runner.dry_run = True
    release.upgrade_release(ctx)
    out = capsys.readouterr().out
    apply = out.index("kubectl apply --server-side --force-conflicts --field-manager=helm -f ")
    assert f"widgets.{group}" in out
    assert apply < out.index(f"helm upgrade {ctx.target.release.name} {folder}")
    assert "--skip-crds" in out
    missing = clusters.kubectl(CLUSTER, "get", "crd", f"widgets.{group}", check=False)
    assert not missing.strip()


# -- a deploy of several releases -----------------------------------------------------


def set_first_release(env: dict[str, str], name: str, **changes: object) -> None:
    path = Path(env["DEPLOY_REGISTRY"])
    document = yaml.safe_load(path.read_text())
    document["environments"][name]["releases"][0].update(changes)
    path.write_text(yaml.safe_dump(document))


@pytest.mark.cluster
def test_a_failure_in_the_first_release_leaves_the_second_untouched(
    local_cluster, chart_dependencies, tmp_path
):
    env, namespaces = demo_registry(tmp_path, releases=True)
    crash = tmp_path / "crash.yaml"
    crash.write_text("deployment:\n  podLabels:\n    kwok.binder.test/fail: crashloop\n")
    set_first_release(env, "local-staging", extra_values=[str(crash)])
    first = "t" + unique_release(namespaces["local-staging/traefik"])[1:]
    result = invoke("deploy", "--env=local-staging", env=env)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-3000:]
    screen = out[out.index("FAILED: ") :]
    assert screen.startswith(f"FAILED: wait-rollout of release {first} on local-staging"), screen
    assert "CrashLoopBackOff" in screen
    assert not release_exists(CLUSTER, namespaces["local-staging"])
    assert f"upgrade [local-staging {unique_release(namespaces['local-staging'])}]" not in out
    report = json.loads((PROJECT_ROOT / "reports" / "run-deploy.json").read_text())
    failed = [s for s in report["steps"] if s["result"] == "failed"]
    assert [(s["step"], s["release"]) for s in failed] == [("wait-rollout", first)]

    # Fixed, the deploy rolls out each release in order and verifies both.
    set_first_release(env, "local-staging", extra_values=[])
    result = invoke("deploy", "--env=local-staging", env=env)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    site = unique_release(namespaces["local-staging"])
    order = [
        f"upgrade {first}: ok",
        f"wait-rollout {first}: ok",
        f"upgrade {site}: ok",
        f"wait-rollout {site}: ok",
        "smoke-test: ok",
    ]
    positions = [out.index(line) for line in order]
    assert positions == sorted(positions), out[-3000:]
    assert re.search(rf"^upgrade {first}\s+local-staging\s+ok .*CRD\(s\) applied", out, re.M)
    # Each release's verified revision, in its own record: traefik's first crashed.
    for namespace, record, verified in (
        (namespaces["local-staging/traefik"], f"{release.VERIFIED}-{first}", "2"),
        (namespaces["local-staging"], release.VERIFIED, "1"),
    ):
        revisions = clusters.kubectl(
            CLUSTER, "get", "configmap", record, "-n", namespace, "-o", "jsonpath={.data.revisions}"
        )
        assert revisions == verified
    # What the environment verified names each release's chart.
    recorded = json.loads(
        clusters.kubectl(
            CLUSTER,
            "get",
            "configmap",
            "binder-deploy-promotion",
            "-n",
            namespaces["local-staging"],
            "-o",
            "jsonpath={.data.releases}",
        )
    )
    assert recorded[first].startswith("oci://ghcr.io/traefik/helm/traefik 41.1.1 sha256:")
    assert recorded[site] == "mybinder (the site chart)"


@pytest.mark.cluster
def test_a_rollback_of_several_releases_goes_last_first_and_a_revision_needs_its_release(
    local_cluster,
):
    dry = invoke("rollback", "--env=local-staging", "--dry-run")
    out = dry.stdout + dry.stderr
    assert dry.returncode == 0, out[-3000:]
    site = out.index("helm rollback binder --namespace binder-staging")
    assert site < out.index("helm rollback traefik --namespace traefik")
    refused = invoke("rollback", "--env=local-staging", "--revision", "3")
    out = refused.stdout + refused.stderr
    assert refused.returncode == 1
    assert "local-staging has several releases (traefik, binder)" in out
    assert "invoke rollback --env=local-staging --release NAME --revision 3" in out


@pytest.mark.cluster
def test_doctor_checks_every_release_of_an_environment(local_cluster):
    result = invoke("doctor", "--env=local-staging")
    out = result.stdout + result.stderr
    traefik = re.search(r"^\w+\s+release\s+release traefik in traefik is ", out, re.M)
    site = re.search(r"^\w+\s+release\s+release binder in binder-staging is ", out, re.M)
    assert traefik and site and traefik.start() < site.start(), out[-3000:]
