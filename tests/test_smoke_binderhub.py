"""The smoke suite's cluster checks against the real BinderHub and JupyterHub charts.

Each test installs the site chart, BinderHub included, into a fresh namespace of
the local cluster (pods simulated by KWOK), runs the suite there as
`invoke smoke-test` does, then breaks one thing the way a bad deploy would and
checks that the suite names it.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from tasks.config.context import StepContext
from tasks.core.errors import StepFailure
from tasks.steps import release, smoke

pytestmark = pytest.mark.cluster

BINDERHUB_CHECKS = {
    "test_cluster::test_component_present[binderhub]",
    "test_cluster::test_every_pod_ready[binder]",
    "test_cluster::test_every_pod_ready[hub]",
    "test_cluster::test_every_pod_ready[proxy]",
    "test_cluster::test_binder_uses_the_hub_url_the_environment_declares",
    "test_cluster::test_hub_api_token_is_shared_by_hub_and_binder",
    "test_cluster::test_proxy_token_is_shared_by_hub_and_proxy",
    "test_cluster::test_hub_database_claim_is_bound",
}


def run_suite(ctx: StepContext, tmp_path: Path) -> tuple[dict[str, smoke.CheckOutcome], str]:
    """The suite against the context's namespace: outcomes by name, and the failure if any."""
    report = tmp_path / f"smoke-{ctx.target.namespace}.xml"
    ctx.runner = ctx.runner.with_env(SMOKE_RETRY_SECONDS="0.2")
    try:
        smoke.check_deployment(ctx, warmup=1, report=report)
        failure = ""
    except StepFailure as failed:
        failure = failed.why
    return {o.name: o for o in smoke.read_report(report)}, failure


def kubectl(ctx: StepContext, *args: str) -> str:
    return ctx.runner.run(
        ["kubectl", "--namespace", ctx.target.namespace, *args], quiet=True
    ).stdout


def test_demo_runs_more_checks_than_it_skips_and_they_pass(site_env, tmp_path):
    ctx = site_env()
    release.upgrade_release(ctx)
    outcomes, failure = run_suite(ctx, tmp_path)
    assert failure == ""
    passed = {name for name, o in outcomes.items() if o.result == "passed"}
    skipped = {name: o.message for name, o in outcomes.items() if o.result == "skipped"}
    assert passed >= BINDERHUB_CHECKS
    assert len(passed) > len(skipped)
    http = ("test_binder::", "test_hub::", "test_launch::", "test_build::", "test_federation::")
    assert all(name.startswith(http) for name in skipped)
    kwok = "its pods are simulated by KWOK and serve no HTTP"
    assert all(message.endswith(kwok) for message in skipped.values())


def test_binder_running_with_another_hub_url_is_named(site_env, tmp_path):
    ctx = site_env()
    release.upgrade_release(ctx)
    # What a drifted release looks like: binder's configuration names another hub.
    config = json.loads(kubectl(ctx, "get", "secret", "binder-secret", "-o", "json"))
    values = config["data"]["values.yaml"]
    text = (
        base64.b64decode(values)
        .decode()
        .replace("http://hub.binder-staging.local", "http://elsewhere.example")
    )
    patch = {"data": {"values.yaml": base64.b64encode(text.encode()).decode()}}
    kubectl(ctx, "patch", "secret", "binder-secret", "--type=merge", "-p", json.dumps(patch))
    outcomes, failure = run_suite(ctx, tmp_path)
    check = outcomes["test_cluster::test_binder_uses_the_hub_url_the_environment_declares"]
    assert check.result == "failed"
    assert check.message.startswith(
        f"Deployment binder in {ctx.target.namespace} runs with hub_url http://elsewhere.example "
        "(Secret binder-secret), but the environment declares http://hub.binder-staging.local"
    )
    assert "test_binder_uses_the_hub_url_the_environment_declares" in failure


def test_binder_reading_another_token_than_the_hub_is_named(site_env, tmp_path):
    ctx = site_env()
    release.upgrade_release(ctx)
    patch = [
        {
            "op": "replace",
            "path": "/spec/template/spec/containers/0/env/1/valueFrom/secretKeyRef/key",
            "value": "hub.services.other.apiToken",
        }
    ]
    env = json.loads(kubectl(ctx, "get", "deployment", "binder", "-o", "json"))
    assert env["spec"]["template"]["spec"]["containers"][0]["env"][1]["name"] == (
        "JUPYTERHUB_API_TOKEN"
    )
    kubectl(ctx, "patch", "deployment", "binder", "--type=json", "-p", json.dumps(patch))
    outcomes, _ = run_suite(ctx, tmp_path)
    check = outcomes["test_cluster::test_hub_api_token_is_shared_by_hub_and_binder"]
    assert check.result == "failed"
    assert check.message == (
        "binder takes JUPYTERHUB_API_TOKEN from ('hub', 'hub.services.other.apiToken'), but the "
        "hub reads the binder service's token as hub.services.binder.apiToken of Secret hub"
    )


def test_hub_claim_of_a_missing_storage_class_is_named(site_env, tmp_path):
    missing = tmp_path / "claim.yaml"
    missing.write_text(
        "binderhub:\n  jupyterhub:\n    hub:\n      db:\n        pvc:\n"
        "          storageClassName: fast-ssd\n"
    )
    ctx = site_env(missing)
    release.upgrade_release(ctx)
    outcomes, failure = run_suite(ctx, tmp_path)
    assert "test_hub_database_claim_is_bound" in failure
    claim = outcomes["test_cluster::test_hub_database_claim_is_bound"]
    assert claim.result == "failed"
    assert claim.message.startswith(
        f"the hub's database claim hub-db-dir in {ctx.target.namespace} is Pending "
        "(StorageClass fast-ssd)"
    )
    hub = outcomes["test_cluster::test_every_pod_ready[hub]"]
    assert hub.result == "failed"
    assert hub.message.startswith(
        f"Deployment hub in {ctx.target.namespace} has 0 ready pod(s) of 1"
    )
    assert "unbound immediate PersistentVolumeClaims" in hub.message
    assert outcomes["test_cluster::test_every_pod_ready[binder]"].result == "passed"
