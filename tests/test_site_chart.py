"""The site chart with the real binderhub and jupyterhub charts: its lock, validate, schemas.

The charts come from the local copy of https://jupyterhub.github.io/helm-chart/
(sandbox/chartrepo.py); nothing here needs a cluster.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from sandbox import chartrepo
from tasks.adapters import go_builds
from tasks.core.errors import StepFailure
from tasks.core.runner import PROJECT_ROOT
from tasks.steps import charts
from tests.fakes.https_proxy import InterceptingProxy
from tests.fixtures.chain import invoke

CHART = PROJECT_ROOT / "mybinder"


@pytest.fixture(scope="module")
def repository_copy() -> Path:
    try:
        return chartrepo.mirror_folder()
    except StepFailure as missing:
        pytest.skip(f"{missing.why} {missing.fix}")


def helm(*args: str, env: dict[str, str], home: Path) -> subprocess.CompletedProcess:
    """The pinned helm with its configuration and caches in `home`, as on a fresh machine."""
    folders = {f"HELM_{k}_HOME": str(home / k.lower()) for k in ("CACHE", "CONFIG", "DATA")}
    return subprocess.run(
        [str(go_builds.binary("helm")), *args],
        env={**os.environ, **folders, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_chart_lock_is_what_helm_dependency_update_writes(repository_copy, tmp_path):
    """helm resolves Chart.yaml against the repository at its real URL (through a proxy), and
    traefik from a real OCI registry holding it.

    The registry is on loopback, so the Chart.yaml helm reads names it there; the
    lock helm writes for that is the committed one with the registry's address,
    and its digest is the one helm-deps computes for it.
    """
    chart = tmp_path / "mybinder"
    chart.mkdir()
    text = (CHART / "Chart.yaml").read_text()
    with chartrepo.mirror_oci_upstream() as registry:
        (chart / "Chart.yaml").write_text(text.replace(chartrepo.OCI_UPSTREAM, registry))
        with InterceptingProxy(chartrepo.UPSTREAM, repository_copy, tmp_path / "tls") as proxy:
            done = helm(
                "dependency",
                "update",
                str(chart),
                "--plain-http",
                env=proxy.environment,
                home=tmp_path,
            )
    assert done.returncode == 0, done.stderr
    assert f"GET {chartrepo.UPSTREAM}index.yaml" in proxy.requests
    written = yaml.safe_load((chart / "Chart.lock").read_text())
    committed = yaml.safe_load((CHART / "Chart.lock").read_text())
    for entry in written["dependencies"]:
        entry["repository"] = entry["repository"].replace(registry, chartrepo.OCI_UPSTREAM)
    assert written["dependencies"] == committed["dependencies"]
    requirements = yaml.safe_load(text)["dependencies"]
    assert charts.lock_digest(requirements, committed["dependencies"]) == committed["digest"]
    # helm-deps computes helm's own digest for an OCI dependency too.
    helm_wrote = yaml.safe_load((chart / "Chart.lock").read_text())
    requirements_read = yaml.safe_load((chart / "Chart.yaml").read_text())["dependencies"]
    assert charts.lock_digest(requirements_read, helm_wrote["dependencies"]) == helm_wrote["digest"]
    archives = sorted(p.name for p in (chart / "charts").iterdir())
    assert archives == ["binderhub-1.0.0-0.dev.git.3959.hb9fad995.tgz", "traefik-41.1.1.tgz"]


def test_stale_lock_digest_is_refused_by_helm_deps_as_by_helm(tmp_path):
    chart = tmp_path / "mybinder"
    shutil.copytree(CHART, chart, ignore=shutil.ignore_patterns("charts"))
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    meta["dependencies"][0]["condition"] = "binderhub.enabled"
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(StepFailure) as raised:
        charts.pinned_dependencies(chart)
    assert "Chart.lock's digest (sha256:" in raised.value.why
    assert "helm dependency update mybinder" in raised.value.fix
    refused = helm("dependency", "build", str(chart), env={}, home=tmp_path)
    assert refused.returncode != 0
    assert "out of sync with the dependencies file" in refused.stderr
    # The committed pair passes both.
    assert charts.pinned_dependencies(CHART)[0].name == "binderhub"


def test_lock_digest_follows_gos_encoding():
    requirement = {"name": "a", "version": "1.0.0", "repository": "https://x/?a=1&b=<2>"}
    locked = {"name": "a", "version": "1.0.0", "repository": "https://x/?a=1&b=<2>"}
    # The bytes Go's encoding/json writes for [requirements, locked]: HTML characters escaped.
    document = (
        '[[{"name":"a","version":"1.0.0","repository":"https://x/?a=1\\u0026b=\\u003c2\\u003e"}],'
        '[{"name":"a","version":"1.0.0","repository":"https://x/?a=1\\u0026b=\\u003c2\\u003e"}]]'
    )
    expected = "sha256:" + hashlib.sha256(document.encode()).hexdigest()
    assert charts.lock_digest([requirement], [locked]) == expected


def test_every_environment_validates_against_the_real_charts(chart_dependencies):
    result = invoke("validate")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    for env in ("staging", "prod", "local-staging", "local-prod"):
        site = r"validate(?: binder)?"
        assert re.search(rf"^{site}\s+{env}\s+ok\s+\S+\s+\d values layers rendered", out, re.M)
    # A release's own chart and layers are rendered too.
    assert re.search(r"^validate traefik\s+local-staging\s+ok\s+\S+\s+1 values layers", out, re.M)


def validate_with(tmp_path: Path, text: str) -> str:
    """`invoke validate --env=local-staging` with one more values file; its output."""
    extra = tmp_path / "operator.yaml"
    extra.write_text(text)
    registry = yaml.safe_load((PROJECT_ROOT / "config/environments.yaml").read_text())
    registry["environments"] = {"local-staging": registry["environments"]["local-staging"]}
    registry.pop("groups")
    registry["environments"]["local-staging"]["releases"][-1]["extra_values"] = [str(extra)]
    path = tmp_path / "environments.yaml"
    path.write_text(yaml.safe_dump(registry))
    result = invoke("validate", "--env=local-staging", env={"DEPLOY_REGISTRY": str(path)})
    assert result.returncode == 1, result.stdout[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    return result.stdout + result.stderr


def test_binderhub_value_its_schema_forbids_names_subchart_key_and_file(
    chart_dependencies, tmp_path
):
    out = validate_with(tmp_path, "binderhub:\n  enabled: true\n")
    assert "FAILED: validate of release binder on local-staging" in out
    assert (
        "why: The binderhub subchart's schema (values under binderhub:) refuses "
        "binderhub.enabled (additional properties 'enabled' not allowed), set in "
        f"{tmp_path}/operator.yaml." in out
    )
    assert "switched on and off by `binderhubEnabled`, its condition in mybinder/Chart.yaml" in out


def test_jupyterhub_value_inside_binderhub_names_the_nested_subchart(chart_dependencies, tmp_path):
    out = validate_with(
        tmp_path,
        "binderhub:\n  jupyterhub:\n    hub:\n      db:\n        kind: sqlite\n"
        "static:\n  replicas: -1\n",
    )
    assert "2 values of local-staging are refused by charts' schemas" in out
    assert (
        "the jupyterhub subchart's schema (values under binderhub.jupyterhub:) refuses "
        "binderhub.jupyterhub.hub.db.kind (additional properties 'kind' not allowed), "
        f"set in {tmp_path}/operator.yaml" in out
    )
    assert (
        "the site chart's schema (mybinder/values.schema.json) refuses static.replicas "
        f"(minimum: got -1, want 0), set in config/local-staging.yaml, {tmp_path}/operator.yaml "
        "(the last one wins)" in out
    )


def test_schema_report_of_helm_is_read_chart_by_chart():
    report = (
        "Error: values don't meet the specifications of the schema(s) in the following "
        "chart(s):\nmybinder:\n- at '/static/replicas': minimum: got -1, want 0\n"
        "binderhub:\n- at '': additional properties 'enabled', 'x' not allowed\n"
        "jupyterhub:\n- at '/hub': missing property 'db'\n\nUse --debug flag to render out\n"
    )
    assert charts.schema_errors(report) == [
        charts.SchemaError("mybinder", "/static/replicas", "minimum: got -1, want 0"),
        charts.SchemaError("binderhub", "", "additional properties 'enabled', 'x' not allowed"),
        charts.SchemaError("jupyterhub", "/hub", "missing property 'db'"),
    ]
    assert charts.schema_errors("Error: something else") == []


def test_value_paths_of_the_chart_tree(chart_dependencies):
    assert charts.chart_value_paths(CHART) == {
        "mybinder": [()],
        "binderhub": [("binderhub",)],
        "jupyterhub": [("binderhub", "jupyterhub")],
        "traefik": [("traefik",)],
    }


def test_missing_repository_copy_names_the_folder_and_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv(chartrepo.FOLDER_VARIABLE, str(tmp_path / "nowhere"))
    with pytest.raises(StepFailure) as raised:
        chartrepo.mirror_folder()
    assert str(tmp_path / "nowhere") in raised.value.why
    assert chartrepo.UPSTREAM in raised.value.why
    assert chartrepo.FOLDER_VARIABLE in raised.value.fix
    monkeypatch.delenv(chartrepo.FOLDER_VARIABLE)
    if (chartrepo.SHARED_FOLDER / "index.yaml").is_file():
        assert chartrepo.mirror_folder() == chartrepo.SHARED_FOLDER
