"""upgrade, diff, rollback and recover-release against a real local cluster."""

import base64
import json
import os
import re
import signal
import subprocess
import time
from dataclasses import replace

import pytest
import yaml

from sandbox import clusters
from tasks.adapters import go_builds
from tasks.adapters.helm import values_args
from tasks.config.context import load_registry
from tasks.core import diagnoses
from tasks.core.errors import StepFailure
from tasks.core.run import current
from tasks.core.step import Step
from tasks.steps import release
from tests.fixtures.chain import slow_chart

# Tests that need the local cluster say so one by one: the pure logic runs without it.


def helm_json(ctx, *args):
    return json.loads(ctx.runner.run(["helm", *args, "--output", "json"], quiet=True).stdout)


def with_values(ctx, *paths):
    """The same environment and namespace, with further values files layered on."""
    site = replace(ctx.target.release, extra_values=tuple(str(p) for p in paths))
    return replace(ctx, env=replace(ctx.env, releases=(site,)))


def values_file(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.cluster
def test_upgrade_installs_the_site_chart_and_binderhub_after_its_hook(site_env):
    ctx = site_env()
    note = release.upgrade_release(ctx)
    assert note.startswith(f"release {ctx.target.release.name} in {ctx.target.namespace}; ")
    assert re.search(r"hook Job hook-image-awaiter succeeded in \d+\.\ds$", note), note
    status = helm_json(ctx, "status", ctx.target.release.name, "--namespace", ctx.target.namespace)
    assert status["info"]["status"] == "deployed"
    names = ctx.runner.run(
        ["kubectl", "get", "deploy,ds,sts", "-n", ctx.target.namespace, "-o", "name"], quiet=True
    ).stdout.split()
    # BinderHub's image cleaner is named after the release.
    workloads = [n.split("/")[1].replace(ctx.target.release.name, "RELEASE") for n in names]
    assert sorted(workloads) == [
        "RELEASE-image-cleaner",
        "binder",
        "federation-redirect",
        "hub",
        "node-agent",
        "proxy",
        "static-files",
        "user-placeholder",
        "user-scheduler",
    ]


@pytest.mark.cluster
def test_diff_is_empty_after_upgrade_and_shows_a_change(site_env, tmp_path):
    ctx = site_env()
    release.upgrade_release(ctx)
    # jupyterhub's install computes its checksum annotations from tokens it generates
    # twice; the first upgrade after it settles them (the chart's own comments say so).
    assert {c.split(":")[0] for c in release.diff_release(ctx)} <= {
        f"--- Deployment/hub (namespace {ctx.target.namespace})",
        f"--- Deployment/proxy (namespace {ctx.target.namespace})",
    }
    release.upgrade_release(ctx)
    assert release.diff_release(ctx) == []
    more = with_values(ctx, values_file(tmp_path, "more.yaml", "static:\n  replicas: 5\n"))
    [chunk] = release.diff_release(more)
    assert chunk.startswith("--- Deployment/static-files")
    assert "-  replicas: 2" in chunk and "+  replicas: 5" in chunk


@pytest.mark.cluster
def test_diff_masks_secret_data(site_env, tmp_path):
    ctx = site_env()
    release.upgrade_release(ctx)
    canary = "canary-federation-token-4242"
    token = values_file(tmp_path, "token.yaml", f"federationRedirect:\n  secretToken: {canary}\n")
    chunks = release.diff_release(with_values(ctx, token))
    secret = next(c for c in chunks if c.startswith("--- Secret/federation-redirect"))
    assert "<secret hmac:" in secret
    encoded = base64.b64encode(canary.encode()).decode()
    assert canary not in "\n".join(chunks) and encoded not in "\n".join(chunks)


@pytest.mark.cluster
def test_schema_violation_is_explained_with_the_key(site_env, tmp_path):
    ctx = site_env(values_file(tmp_path, "bad.yaml", "static:\n  replicas: two\n"))
    with pytest.raises(StepFailure) as raised:
        release.upgrade_release(ctx)
    assert raised.value.why.startswith(
        "The site chart's schema (mybinder/values.schema.json) refuses static.replicas ("
    )
    assert raised.value.fix.startswith(
        f"static.replicas is set in config/local-staging.yaml, {tmp_path}/bad.yaml "
        "(the last one wins)."
    )


@pytest.mark.cluster
def test_tab_in_values_stops_before_helm(site_env, tmp_path):
    ctx = site_env(values_file(tmp_path, "tabs.yaml", "static:\n\treplicas: 1\n"))
    with pytest.raises(StepFailure) as raised:
        release.upgrade_release(ctx)
    assert "nothing was deployed" in raised.value.why
    assert "tabs.yaml:2:1: tab character" in raised.value.details
    assert (
        "not found"
        in ctx.runner.run(
            ["helm", "status", ctx.target.release.name, "-n", ctx.target.namespace],
            quiet=True,
            check=False,
        ).stderr
    )


def kubeconfig(path, server, extra=""):
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: d\n"
        f"clusters:\n- name: d\n  cluster: {{server: '{server}'{extra}}}\n"
        "contexts:\n- name: d\n  context: {cluster: d, user: u}\n"
        "users:\n- name: u\n  user: {token: not-a-valid-token}\n"
    )
    return str(path)


@pytest.mark.cluster
def test_unreachable_cluster_gets_its_own_diagnosis(site_env, tmp_path):
    ctx = site_env()
    dead = kubeconfig(tmp_path / "dead", "https://127.0.0.1:1")
    ctx.runner = ctx.runner.with_env(KUBECONFIG=dead)
    with pytest.raises(StepFailure) as raised:
        release.upgrade_release(ctx)
    assert "could not reach the cluster's API server" in raised.value.why


@pytest.mark.cluster
def test_refused_credentials_get_their_own_diagnosis(site_env, local_cluster, tmp_path):
    ctx = site_env()
    server = local_cluster.kubectl("config", "view", "-o", "jsonpath={.clusters[0].cluster.server}")
    bogus = kubeconfig(tmp_path / "bogus", server, ", insecure-skip-tls-verify: true")
    ctx.runner = ctx.runner.with_env(KUBECONFIG=bogus)
    with pytest.raises(StepFailure) as raised:
        release.upgrade_release(ctx)
    assert "refused the deployer's credentials" in raised.value.why


def kill_helm_mid_upgrade(ctx, tmp_path):
    """Leave the release in pending-upgrade the way a cancelled deploy does."""
    stuck = values_file(
        tmp_path, "stuck.yaml", "static:\n  podLabels:\n    kwok.binder.test/fail: unschedulable\n"
    )
    command = [
        str(go_builds.binary("helm")),
        "upgrade",
        ctx.target.release.name,
        "mybinder",
        "--namespace",
        ctx.target.namespace,
        "--wait=watcher",
        "--timeout",
        "120s",
        *values_args(ctx.target.values_files()),
        "--values",
        str(stuck),
    ]
    helm = subprocess.Popen(
        command,
        env={**os.environ, **ctx.runner.env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if release.release_status(ctx) == "pending-upgrade":
            break
        time.sleep(0.2)
    helm.send_signal(signal.SIGKILL)
    helm.wait()
    assert release.release_status(ctx) == "pending-upgrade"


@pytest.mark.cluster
def test_pending_release_is_refused_and_recovered(site_env, tmp_path):
    ctx = site_env()
    release.upgrade_release(ctx)
    kill_helm_mid_upgrade(ctx, tmp_path)
    with pytest.raises(StepFailure) as raised:
        release.upgrade_release(ctx)
    assert "stuck in pending-upgrade" in raised.value.why
    assert f"invoke recover-release --env={ctx.env.name}" in raised.value.fix

    with pytest.raises(StepFailure, match="not confirmed"):
        release.recover(ctx, lambda question: False)
    assert release.release_status(ctx) == "pending-upgrade"

    questions = []
    assert (
        release.recover(ctx, lambda q: questions.append(q) or True) == "rolled back to revision 1"
    )
    assert "to revision 1" in questions[0]
    assert release.release_status(ctx) == "deployed"
    release.upgrade_release(ctx)


def test_previous_good_revision_skips_the_latest_and_failed_ones():
    assert release.previous_good_revision([]) is None
    assert release.previous_good_revision([{"revision": 1, "status": "deployed"}]) is None
    revisions = [
        {"revision": 1, "status": "superseded"},
        {"revision": 2, "status": "failed"},
        {"revision": 3, "status": "deployed"},
    ]
    assert release.previous_good_revision(revisions) == 1
    crash_looped = [
        {"revision": 1, "status": "superseded"},
        {"revision": 2, "status": "superseded"},
        {"revision": 3, "status": "deployed"},
    ]
    assert release.previous_good_revision(crash_looped) == 2
    assert release.previous_good_revision(crash_looped, verified={1}) == 1


def test_recovery_plans():
    assert release.recovery_plan([]) == ("nothing", None)
    assert release.recovery_plan([{"revision": 1, "status": "deployed"}]) == ("nothing", None)
    assert release.recovery_plan(
        [{"revision": 1, "status": "superseded"}, {"revision": 2, "status": "pending-upgrade"}]
    ) == ("rollback", 1)
    assert release.recovery_plan([{"revision": 1, "status": "pending-install"}]) == (
        "uninstall",
        None,
    )


@pytest.mark.cluster
def test_rollback_returns_to_the_previous_revision(site_env, tmp_path):
    ctx = site_env()
    release.upgrade_release(ctx)
    bigger = with_values(ctx, values_file(tmp_path, "r.yaml", "static:\n  replicas: 3\n"))
    release.upgrade_release(bigger)
    assert release.rollback_release(ctx, 1) == "rolled back to revision 1"
    replicas = ctx.runner.run(
        [
            "kubectl",
            "get",
            "deploy/static-files",
            "-n",
            ctx.target.namespace,
            "-o",
            "jsonpath={.spec.replicas}",
        ],
        quiet=True,
    ).stdout
    assert replicas == "2"


@pytest.mark.cluster
def test_dry_run_touches_nothing(site_env, capsys):
    ctx = site_env(dry_run=True)
    release.upgrade_release(ctx)
    out = capsys.readouterr().out
    assert (
        "[dry-run] KUBECONFIG=" in out
        and f"helm upgrade {ctx.target.release.name} mybinder --install --cleanup-on-fail" in out
    )
    assert "secretToken" not in out
    ctx.runner.dry_run = False
    assert release.release_status(ctx) is None


@pytest.mark.cluster
def test_every_step_masks_the_environments_secret_values(demo_secrets):
    from invoke import Context

    from tasks.flows.pipeline import perform

    perform(Context(), Step("probe", lambda ctx: None), "local-staging")
    secret_values = load_registry().get("local-staging").secret_path("config/local-staging.yaml")
    token = secret_values.read_text().split('"')[1]
    assert current().masker.mask(f"x {token} y") == "x ******** y"


@pytest.mark.cluster
def test_tab_in_a_secret_values_file_is_named_without_its_content(site_env, tmp_path, capfd):
    secrets_dir = tmp_path / "secrets"
    (secrets_dir / "config").mkdir(parents=True)
    canary = "canary-secret-in-a-tabbed-file-777"
    (secrets_dir / "config" / "common.yaml").write_text("{}\n")
    (secrets_dir / "config" / "local-staging.yaml").write_text(
        f"federationRedirect:\n\tsecretToken: {canary}\n"
    )
    ctx = site_env(secrets_dir=secrets_dir)
    with pytest.raises(StepFailure) as raised:
        release.upgrade_release(ctx)
    failure = raised.value
    assert "local-staging.yaml:2:1: tab character" in failure.details
    everything = failure.why + failure.fix + failure.details + "".join(capfd.readouterr())
    assert canary not in everything


@pytest.mark.cluster
def test_diff_keys_checksum_annotations_which_would_let_a_secret_be_guessed(site_env, tmp_path):
    ctx = site_env()
    release.upgrade_release(ctx)
    token = values_file(
        tmp_path, "token.yaml", "federationRedirect:\n  secretToken: a-guessable-token-1234\n"
    )
    chunks = release.diff_release(with_values(ctx, token))
    deployment = next(c for c in chunks if c.startswith("--- Deployment/federation-redirect"))
    assert "checksum/secret: <checksum hmac:" in deployment
    # A plain sha256 of the rendered Secret would let a guess be checked offline.
    assert not re.search(r"\b[0-9a-f]{64}\b", "\n".join(chunks))


# Passes the schema and `helm template`; only the API server refuses it.
REFUSED_BY_THE_CLUSTER = "static:\n  podLabels:\n    team: not a valid label value!\n"


@pytest.mark.cluster
def test_an_upgrade_the_api_server_refuses_says_what_to_do(site_env, tmp_path):
    ctx = site_env(values_file(tmp_path, "refused.yaml", REFUSED_BY_THE_CLUSTER))
    with pytest.raises(StepFailure) as raised:
        release.upgrade_release(ctx)
    assert 'The API server refused Deployment.apps "static-files"' in raised.value.why
    assert "Invalid value" in raised.value.why
    assert "invoke diff --env=local-staging" in raised.value.fix


def expired_client_kubeconfig(local_cluster, tmp_path) -> str:
    """The local cluster's kubeconfig with a client certificate its CA issued, expired in 2025."""
    pki = clusters.workdir(local_cluster.name) / "pki"
    work = tmp_path / "expired"
    work.mkdir()
    (work / "index.txt").write_text("")
    (work / "ca.cnf").write_text(
        "[ca]\ndefault_ca = throwaway\n[throwaway]\ndatabase = index.txt\nnew_certs_dir = .\n"
        "serial = serial\ndefault_md = sha256\npolicy = any\nrand_serial = yes\n"
        "[any]\norganizationName = optional\ncommonName = supplied\n"
    )
    openssl = ["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes"]
    subject = ["-subj", "/O=system:masters/CN=kwok-admin"]
    subprocess.run([*openssl, "-keyout", "c.key", "-out", "c.csr", *subject], cwd=work, check=True)
    subprocess.run(
        [
            *("openssl", "ca", "-batch", "-config", "ca.cnf", "-in", "c.csr", "-out", "c.crt"),
            *("-cert", pki / "ca.crt", "-keyfile", pki / "ca.key"),
            *("-startdate", "20240101000000Z", "-enddate", "20250101000000Z"),
        ],
        cwd=work,
        check=True,
        capture_output=True,
    )
    config = yaml.safe_load(local_cluster.kubeconfig.read_text())
    user = config["users"][0]["user"]
    user.pop("client-certificate"), user.pop("client-key")
    user["client-certificate-data"] = base64.b64encode((work / "c.crt").read_bytes()).decode()
    user["client-key-data"] = base64.b64encode((work / "c.key").read_bytes()).decode()
    path = work / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.cluster
def test_upgrade_alone_names_an_expired_client_certificate(site_env, local_cluster, tmp_path):
    ctx = site_env()
    ctx.runner = ctx.runner.with_env(KUBECONFIG=expired_client_kubeconfig(local_cluster, tmp_path))
    with pytest.raises(StepFailure) as raised:
        release.upgrade_release(ctx)
    assert "The client certificate of user" in raised.value.why
    assert "expired on 2025-01-01" in raised.value.why
    # The cluster's own refusal, as the first command to reach it (kubectl) got it.
    assert re.search(diagnoses.CREDENTIALS_REFUSED, raised.value.details), raised.value.details


# -- hooks: jupyterhub's image-puller Job runs before every upgrade ---------------


def hook_pods_labelled(tmp_path, failure: str):
    """Values that route the image-puller hook's pod to a simulated failure."""
    return values_file(
        tmp_path,
        "hook.yaml",
        "binderhub:\n  jupyterhub:\n    prePuller:\n      labels:\n"
        f"        kwok.binder.test/fail: {failure}\n",
    )


def failed_upgrade(ctx, timeout):
    with pytest.raises(StepFailure) as raised:
        release.upgrade_release(ctx, timeout=timeout)
    return ctx, raised.value


@pytest.mark.cluster
def test_hook_job_whose_pods_fail_is_named_with_pod_and_exit_code(site_env, tmp_path):
    ctx, failure = failed_upgrade(site_env(hook_pods_labelled(tmp_path, "exit")), 15)
    assert failure.why.startswith("The pre-install hook Job hook-image-awaiter did not complete")
    assert re.search(
        r"pod hook-image-awaiter-\w+ failed: container hook-image-awaiter exited with code 1 "
        r"\(Error\)",
        failure.why,
    ), failure.why
    assert re.search(r"\d+ of its pods failed \(the Job gives up after 6 failures\)", failure.why)
    assert re.search(
        r"describe pod hook-image-awaiter-\w+ --namespace " + ctx.target.namespace, failure.fix
    )
    assert "prePuller.hook.enabled: false" in failure.fix
    assert "context deadline exceeded" not in failure.why
    assert release.release_status(ctx) == "failed"


@pytest.mark.cluster
def test_hook_job_that_never_completes_names_what_its_pod_waits_for(site_env, tmp_path):
    ctx, failure = failed_upgrade(site_env(hook_pods_labelled(tmp_path, "imagepull")), 10)
    assert re.search(
        r"did not complete: pod hook-image-awaiter-\w+ waits: container "
        r"hook-image-awaiter is (ErrImagePull|ImagePullBackOff)",
        failure.why,
    ), failure.why
    assert "Helm waited up to 10s" in failure.fix
    # Once the hook's pod is fixed, the next upgrade runs the hook afresh and deploys.
    assert "succeeded" in release.upgrade_release(with_values(ctx))


@pytest.mark.cluster
def test_hook_pod_that_never_completes_is_named_not_blamed_on_the_cluster(site_env, tmp_path):
    # helm ends such a wait with "context deadline exceeded", which is not about the network.
    ctx = site_env()
    ctx = replace(ctx, registry=replace(ctx.registry, chart=slow_chart(tmp_path)))
    with pytest.raises(StepFailure) as raised:
        release.upgrade_release(ctx, timeout=10)
    failure = raised.value
    assert failure.why.startswith(
        "The pre-install hook Pod never-done-hook did not complete: pod never-done-hook is "
    ), failure.why
    assert "Unschedulable" in failure.why
    assert "reach the cluster" not in failure.why
    assert f"describe pod never-done-hook --namespace {ctx.target.namespace}" in failure.fix


def test_hook_runs_are_read_from_helms_status():
    status = {
        "hooks": [
            {"name": "hook-image-puller", "kind": "DaemonSet", "last_run": {"phase": "Succeeded"}},
            {
                "name": "hook-image-awaiter",
                "kind": "Job",
                "last_run": {
                    "started_at": "2026-11-29T05:33:03.415150056Z",
                    "completed_at": "2026-11-29T07:33:04.487565553+02:00",
                    "phase": "Succeeded",
                },
            },
        ]
    }
    assert release.hooks_run(status) == ["hook Job hook-image-awaiter succeeded in 1.1s"]
    assert release.hooks_run({"hooks": []}) == [] and release.hooks_run(None) == []


def test_hook_job_that_gave_up_is_named_with_the_reason_and_the_failed_pod():
    job = {
        "spec": {"backoffLimit": 2},
        "status": {
            "failed": 3,
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit",
                }
            ],
        },
    }

    def pod(name: str, created: str, phase: str) -> dict:
        terminated = {"exitCode": 2, "reason": "Error"}
        return {
            "metadata": {"name": name, "creationTimestamp": created},
            "status": {
                "phase": phase,
                "containerStatuses": [{"name": "awaiter", "state": {"terminated": terminated}}],
            },
        }

    why, lines, shown = release.describe_hook_job(
        "pre-upgrade",
        "hook-image-awaiter",
        job,
        [
            pod("a-2", "2026-11-29T05:00:02Z", "Failed"),
            pod("a-1", "2026-11-29T05:00:01Z", "Failed"),
        ],
    )
    assert why == (
        "The pre-upgrade hook Job hook-image-awaiter did not complete: the Job failed "
        "(BackoffLimitExceeded: Job has reached the specified backoff limit); 3 of its pods "
        "failed (the Job gives up after 2 failures)."
    )
    assert lines == [
        "pod a-1 failed: container awaiter exited with code 2 (Error)",
        "pod a-2 failed: container awaiter exited with code 2 (Error)",
    ]
    assert shown == "a-2"
    gone = release.describe_hook_job("post-install", "x", None, [])
    assert gone == (
        "The post-install hook Job x did not complete, and is gone from the cluster.",
        [],
        "",
    )


DEPLOYED = """\
apiVersion: v1
kind: Secret
metadata:
  name: hub
data:
  token: b2xkLXRva2VuLXZhbHVl
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: hub
spec:
  template:
    metadata:
      annotations:
        checksum/secret: 0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0
"""


def test_diff_manifests_names_each_changed_resource_and_masks_secret_data():
    proposed = DEPLOYED.replace("b2xkLXRva2VuLXZhbHVl", "bmV3LXRva2VuLXZhbHVl").replace(
        "0f1e2d3c4b5a6978", "1111111111111111"
    )

    chunks = release.diff_manifests(DEPLOYED, proposed, "binder")

    assert [c.splitlines()[0] for c in chunks] == [
        "--- Deployment/hub (namespace binder): changed",
        "--- Secret/hub (namespace binder): changed",
    ]
    everything = "\n".join(chunks)
    assert "b2xkLXRva2VuLXZhbHVl" not in everything and "bmV3LXRva2VuLXZhbHVl" not in everything
    assert "<secret hmac:" in everything and "checksum/secret: <checksum hmac:" in everything
    assert not re.search(r"\b[0-9a-f]{64}\b", everything)


def test_diff_manifests_is_empty_when_nothing_changes():
    assert release.diff_manifests(DEPLOYED, DEPLOYED, "binder") == []
