"""The deploy chain: staging's whole chain gates prod's, and a failure stops it there.

The cluster tests run `invoke deploy` for real, in a subprocess as an operator
would, on the two local clusters, with a registry (DEPLOY_REGISTRY) that puts
local-staging and local-prod in fresh namespaces and injects one failure into
local-staging. After each failure, prod's namespace must hold no release.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sandbox import clusters
from tasks.cli import chain
from tasks.config import registry
from tasks.core.runner import PROJECT_ROOT
from tests.fakes.webhook import WebhookReceiver
from tests.fixtures.chain import (
    command_line,
    demo_registry,
    descendants,
    invoke,
    lock_exists,
    once_helm_holds_the_release,
    release_exists,
    run_and_act,
    slow_chart,
    values,
)
from tests.fixtures.site_chart import unique_release


def described(calls) -> list[str]:
    """Each call as `task[env]`, the task named as invoke shows it (dashes, not underscores)."""
    return [
        c.task.name.replace("_", "-") + (f"[{c.kwargs['env']}]" if "env" in c.kwargs else "")
        for c in calls
    ]


def test_plan_runs_staging_fully_before_prod_and_shared_steps_once():
    steps = described(chain.plan(registry.load(), "prod"))
    assert steps == [
        "decrypt-secrets[staging]",
        "helm-deps",
        "validate[staging]",
        "validate[prod]",
        "preflight[staging]",
        "preflight[prod]",
        "lock[staging]",
        "annotate-grafana[staging]",
        "upgrade[staging]",
        "wait-rollout[staging]",
        "smoke-test[staging]",
        "deploy-staging",
        "check-promotion[prod]",
        "lock[prod]",
        "annotate-grafana[prod]",
        "upgrade[prod]",
        "wait-rollout[prod]",
        "smoke-test[prod]",
        "deploy-prod",
    ]


def test_plan_for_staging_runs_staging_alone():
    steps = described(chain.plan(registry.load(), "staging"))
    assert steps[-1] == "deploy-staging"
    assert not any("prod" in s for s in steps)


def test_unknown_environment_lists_the_known_ones():
    result = invoke("deploy", "--env=nowhere", "--dry-run")
    assert result.returncode == 1
    assert "Unknown environment or group 'nowhere'" in result.stderr + result.stdout
    assert "local-prod" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout


def local_state() -> dict[str, float]:
    """What a run may leave in the checkout outside git: reports, charts, local builds."""
    folders = ["reports", "mybinder/charts", ".local/tools"]
    return {
        str(path): path.stat().st_mtime
        for folder in folders
        for path in (PROJECT_ROOT / folder).rglob("*")
        if path.is_file()
    }


def test_dry_run_of_prod_prints_the_whole_plan_quickly_and_changes_nothing():
    files_before = local_state()
    before = subprocess.run(
        ["git", "status", "--porcelain"], cwd=PROJECT_ROOT, capture_output=True, text=True
    ).stdout
    started = time.monotonic()
    result = invoke("deploy", "--env=prod", "--dry-run")
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert elapsed < 2.0
    out = result.stdout
    staging_upgrade = out.index("helm upgrade staging mybinder")
    prod_upgrade = out.index("helm upgrade prod mybinder")
    assert (
        staging_upgrade
        < out.index(
            "-m pytest /work/main/tests/smoke --env=staging".replace(
                "/work/main", str(PROJECT_ROOT)
            )
        )
        < prod_upgrade
    )
    assert "gcloud container clusters get-credentials prod" in out
    assert out.count("[dry-run]") > 10
    after = subprocess.run(
        ["git", "status", "--porcelain"], cwd=PROJECT_ROOT, capture_output=True, text=True
    ).stdout
    assert before == after
    assert local_state() == files_before


def test_ci_on_a_pull_request_validates_offline(chart_dependencies):
    result = invoke(
        "ci", "--no-tests", env={"GITHUB_ACTIONS": "true", "GITHUB_EVENT_NAME": "pull_request"}
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "::group::yaml-lint" in out and "::endgroup::" in out
    assert "helm upgrade" not in out
    for env in ("staging", "prod", "local-staging", "local-prod"):
        assert re.search(rf"^validate(?: binder)?\s+{env}\s+ok", out, re.MULTILINE), env
    assert re.search(r"^check-secrets\s+-\s+ok", out, re.MULTILINE)
    assert "RESULT" in out and "DURATION" in out


def test_ci_pull_request_mode_detection(monkeypatch):
    for name in ("GITHUB_EVENT_NAME", "TRAVIS_PULL_REQUEST", "CI_PULL_REQUEST"):
        monkeypatch.delenv(name, raising=False)
    assert chain.pull_request_ci() is None
    monkeypatch.setenv("TRAVIS_PULL_REQUEST", "false")
    assert chain.pull_request_ci() is False
    monkeypatch.setenv("TRAVIS_PULL_REQUEST", "42")
    assert chain.pull_request_ci() is True
    monkeypatch.setenv("GITHUB_EVENT_NAME", "push")
    assert chain.pull_request_ci() is False


# -- the chain on the local clusters ---------------------------------------------


def assert_stopped_on_staging(result, step: str, namespaces: dict[str, str]) -> str:
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-4000:]
    assert f"FAILED: {step} on local-staging" in out, out[-4000:]
    assert "Traceback" not in out
    assert "upgrade [local-prod]" not in out
    assert not release_exists("binder-prod", namespaces["local-prod"])
    return out


@pytest.mark.cluster
def test_demo_chain_deploys_staging_then_prod(both_clusters, tmp_path):
    env, namespaces = demo_registry(tmp_path)
    result = invoke("deploy", "--env=local-prod", "--yes", env=env)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert out.index("smoke-test [local-staging]") < out.index("upgrade [local-prod]")
    assert release_exists("binder-staging", namespaces["local-staging"])
    assert release_exists("binder-prod", namespaces["local-prod"])
    for cluster, namespace in (
        ("binder-staging", namespaces["local-staging"]),
        ("binder-prod", namespaces["local-prod"]),
    ):
        ready = clusters.kubectl(
            cluster,
            "get",
            "deploy,ds",
            "-n",
            namespace,
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}="
            "{.status.readyReplicas}{.status.numberReady} {end}",
        )
        release = unique_release(namespace)
        assert sorted(ready.split()) == [
            f"{release}-image-cleaner=2",
            "binder=1",
            "federation-redirect=2",
            "hub=1",
            "node-agent=2",
            "proxy=1",
            "static-files=2",
            "user-scheduler=2",
        ]
        claim = clusters.kubectl(
            cluster, "get", "pvc", "hub-db-dir", "-n", namespace, "-o", "jsonpath={.status.phase}"
        )
        assert claim == "Bound"
    # Each upgrade waited for jupyterhub's image-puller hook; each smoke test ran the
    # cluster checks, more of them than the HTTP checks KWOK's pods cannot answer.
    upgrades = re.findall(r"^upgrade: ok in .*; hook Job hook-image-awaiter succeeded", out, re.M)
    assert len(upgrades) == 2, out[-3000:]
    # local-prod deployed what local-staging had just verified.
    assert re.search(r"^check-promotion: ok in .*: what local-staging verified$", out, re.M), out
    for env in ("local-staging", "local-prod"):
        found = re.search(rf"smoke tests on {env}: (\d+) passed, (\d+) skipped", out)
        assert found and int(found.group(1)) > int(found.group(2)), out[-3000:]


@pytest.mark.cluster
def test_prod_untouched_when_staging_decrypt_secrets_fails(both_clusters, tmp_path):
    env, namespaces = demo_registry(
        tmp_path,
        {
            "secrets": {
                "dir": "secrets/missing",
                "key": {"source": "file", "name": "demo", "path": "config/demo/git-crypt-demo.key"},
            }
        },
    )
    assert_stopped_on_staging(
        invoke("deploy", "--env=local-prod", "--yes", env=env), "decrypt-secrets", namespaces
    )


@pytest.mark.cluster
def test_prod_untouched_when_helm_deps_fails(both_clusters, tmp_path):
    chart = tmp_path / "mybinder"
    shutil.copytree(PROJECT_ROOT / "mybinder", chart, ignore=shutil.ignore_patterns("charts"))
    env, namespaces = demo_registry(tmp_path, top={"chart": str(chart)})
    env["DEPLOY_CHART_MIRRORS"] = "https://jupyterhub.github.io/helm-chart/=http://127.0.0.1:9/"
    result = invoke("deploy", "--env=local-prod", "--yes", env=env)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-4000:]
    assert "FAILED: helm-deps" in out and "Could not fetch the index" in out
    assert not release_exists("binder-staging", namespaces["local-staging"])
    assert not release_exists("binder-prod", namespaces["local-prod"])


# Passes the schema and `helm template`; only the API server refuses it.
REFUSED_BY_THE_CLUSTER = "static:\n  podLabels:\n    team: not a valid label value!\n"


@pytest.mark.cluster
def test_a_target_is_rolled_back_automatically_when_its_smoke_tests_fail(both_clusters, tmp_path):
    env, namespaces = demo_registry(tmp_path)
    first = invoke("deploy", "--env=local-staging", env=env)
    assert first.returncode == 0, (first.stdout + first.stderr)[-4000:]

    registry_file = Path(env["DEPLOY_REGISTRY"])
    document = yaml.safe_load(registry_file.read_text())
    broken = tmp_path / "no-static.yaml"
    broken.write_text("static:\n  replicas: 0\n")
    document["environments"]["local-staging"]["extra_values"] = [str(broken)]
    document["environments"]["local-staging"]["notify"] = {"url_env": "DEPLOY_TEST_WEBHOOK"}
    registry_file.write_text(yaml.safe_dump(document))

    with WebhookReceiver() as hook:
        env["DEPLOY_TEST_WEBHOOK"] = f"{hook.url}/services/prod-hook-token"
        result = invoke("deploy", "--env=local-staging", "--rollback-on-failure", env=env)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-4000:]
    assert "FAILED: smoke-test on local-staging" in out
    assert "rolling local-staging back to its last good revision" in out
    assert "local-staging was rolled back to its last good revision" in out
    assert "Traceback" not in out
    # The team's chat hears of it once: what failed, where, and the rollback.
    [(_, notice)] = hook.received
    assert notice["text"].startswith("Deploy of local-staging FAILED (invoke deploy)\n")
    assert "- smoke-test failed on local-staging: " in notice["text"]
    assert "- local-staging was rolled back to its last good revision" in notice["text"]
    replicas = clusters.kubectl(
        "binder-staging",
        "get",
        "deploy/static-files",
        "-n",
        namespaces["local-staging"],
        "-o",
        "jsonpath={.spec.replicas}",
    )
    assert replicas == "2"


@pytest.mark.cluster
def test_ci_on_the_main_branch_deploys_without_prompts(both_clusters, tmp_path):
    env, namespaces = demo_registry(tmp_path)
    env.update({"GITHUB_ACTIONS": "true", "GITHUB_EVENT_NAME": "push", "GITHUB_REF_NAME": "main"})
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "ci", "--env=local-staging"],
        cwd=PROJECT_ROOT,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "::group::upgrade [local-staging]" in out
    assert "::group::smoke-test [local-staging]" in out
    assert re.search(r"^smoke-test\s+local-staging\s+ok", out, re.MULTILINE)
    assert release_exists("binder-staging", namespaces["local-staging"])


def test_ci_on_another_branch_only_validates(chart_dependencies):
    result = invoke(
        "ci",
        "--no-tests",
        env={"GITHUB_ACTIONS": "true", "GITHUB_EVENT_NAME": "push", "GITHUB_REF_NAME": "feature"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "helm upgrade" not in result.stdout
    assert re.search(r"^validate\s+prod\s+ok", result.stdout, re.MULTILINE)


def plant_lock(
    namespace: str, holder: str, expires: int | str, cluster: str = "binder-staging", **more: str
) -> None:
    clusters.kubectl(cluster, "create", "namespace", namespace, check=False)
    clusters.kubectl(
        cluster,
        "create",
        "configmap",
        "binder-deploy-lock",
        "-n",
        namespace,
        f"--from-literal=holder={holder}",
        "--from-literal=started=2026-11-26T10:00:00+00:00",
        f"--from-literal=expires={expires}",
        *(f"--from-literal={key}={value}" for key, value in more.items()),
    )


@pytest.mark.cluster
def test_a_second_deploy_of_the_same_environment_is_refused(both_clusters, tmp_path):
    env, namespaces = demo_registry(tmp_path)
    plant_lock(namespaces["local-staging"], "octocat on CI run 41", int(time.time()) + 600)
    # Found by preflight, before the first change.
    out = assert_stopped_on_staging(
        invoke("deploy", "--env=local-prod", "--yes", "--wait-for-lock=0", env=env),
        "preflight",
        namespaces,
    )
    assert "another deploy of local-staging is running: octocat on CI run 41" in out
    assert "invoke unlock --env=local-staging" in out
    assert not release_exists("binder-staging", namespaces["local-staging"])
    assert lock_exists(namespaces["local-staging"])

    unlocked = invoke("unlock", "--env=local-staging", env=env)
    assert (
        unlocked.returncode == 0 and "removed the lock of octocat on CI run 41" in unlocked.stdout
    )
    assert not lock_exists(namespaces["local-staging"])


@pytest.mark.cluster
def test_an_expired_lock_is_taken_over_and_every_lock_is_released(both_clusters, tmp_path):
    env, namespaces = demo_registry(tmp_path)
    plant_lock(namespaces["local-staging"], "a deploy that died", int(time.time()) - 1)
    result = invoke("deploy", "--env=local-staging", env=env)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "held by a deploy that died" in out and "taking it over" in out
    assert not lock_exists(namespaces["local-staging"])


@pytest.mark.cluster
def test_a_failed_deploy_releases_its_lock(both_clusters, tmp_path):
    env, namespaces = demo_registry(
        tmp_path, {"extra_values": values(tmp_path, REFUSED_BY_THE_CLUSTER)}
    )
    assert_stopped_on_staging(
        invoke("deploy", "--env=local-prod", "--yes", env=env), "upgrade", namespaces
    )
    assert not lock_exists(namespaces["local-staging"])


@pytest.mark.cluster
def test_rollback_on_failure_of_a_first_install_says_there_is_nothing_to_return_to(
    both_clusters, tmp_path
):
    env, _ = demo_registry(tmp_path)
    registry_file = Path(env["DEPLOY_REGISTRY"])
    document = yaml.safe_load(registry_file.read_text())
    document["environments"]["local-staging"]["extra_values"] = values(
        tmp_path, "static:\n  replicas: 0\n"
    )
    registry_file.write_text(yaml.safe_dump(document))
    result = invoke("deploy", "--env=local-staging", "--rollback-on-failure", env=env)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-4000:]
    assert "FAILED: smoke-test on local-staging" in out
    assert "has no earlier good revision to roll back to" in out
    assert "Traceback" not in out


def test_validate_reports_every_environment_that_fails(chart_dependencies, tmp_path):
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("static:\n  replicas: two\n")
    env, _ = demo_registry(tmp_path, {"extra_values": [str(wrong)]})
    registry_file = Path(env["DEPLOY_REGISTRY"])
    document = yaml.safe_load(registry_file.read_text())
    document["environments"]["local-prod"]["extra_values"] = [str(wrong)]
    registry_file.write_text(yaml.safe_dump(document))
    result = invoke("validate", env=env)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert re.search(r"FAILED: validate on local-(staging|prod), local-(prod|staging)", out)
    assert "2 environments do not validate" in out
    assert out.count("refuses static.replicas") >= 2
    assert "Traceback" not in out


def test_a_dry_run_of_validate_does_not_claim_to_have_rendered(chart_dependencies):
    result = invoke("validate", "--env=local-staging", "--dry-run")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "would render and lint them" in out
    assert "rendered and linted" not in out


@pytest.mark.cluster
def test_rollback_returns_to_the_last_good_revision_and_respects_the_lock(both_clusters, tmp_path):
    env, namespaces = demo_registry(tmp_path)
    assert invoke("deploy", "--env=local-staging", env=env).returncode == 0
    registry_file = Path(env["DEPLOY_REGISTRY"])
    document = yaml.safe_load(registry_file.read_text())
    crash = "static:\n  podLabels:\n    kwok.binder.test/fail: crashloop\n"
    document["environments"]["local-staging"]["extra_values"] = values(tmp_path, crash)
    registry_file.write_text(yaml.safe_dump(document))
    for _ in range(2):  # two failed deploys in a row: revisions 2 and 3 are both broken
        assert invoke("deploy", "--env=local-staging", env=env).returncode == 1

    plant_lock(namespaces["local-staging"], "a deploy in progress", int(time.time()) + 600)
    refused = invoke("rollback", "--env=local-staging", env=env)
    assert refused.returncode == 1
    assert "Another deploy of local-staging is running: a deploy in progress" in refused.stderr
    assert invoke("unlock", "--env=local-staging", env=env).returncode == 0

    result = invoke("rollback", "--env=local-staging", env=env)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "rolling back to revision 1, the last good one before the current" in out
    assert not lock_exists(namespaces["local-staging"])

    wrong = invoke("rollback", "--env=local-staging", "--revision=last", env=env)
    assert wrong.returncode == 1
    assert "--revision must be a revision number, not 'last'" in wrong.stderr


@pytest.mark.cluster
def test_a_mistake_in_prods_values_stops_the_run_before_staging_is_touched(both_clusters, tmp_path):
    env, namespaces = demo_registry(tmp_path)
    registry_file = Path(env["DEPLOY_REGISTRY"])
    document = yaml.safe_load(registry_file.read_text())
    document["environments"]["local-prod"]["extra_values"] = values(
        tmp_path, "static:\n  replicas: two\n"
    )
    registry_file.write_text(yaml.safe_dump(document))
    result = invoke("deploy", "--env=local-prod", "--yes", env=env)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-3000:]
    assert "FAILED: validate on local-prod" in out
    assert "==> upgrade" not in out
    assert not release_exists("binder-staging", namespaces["local-staging"])


# -- found before the first change ----------------------------------------------


@pytest.mark.cluster
def test_a_locked_target_stops_the_deploy_before_staging_is_touched(both_clusters, tmp_path):
    env, namespaces = demo_registry(tmp_path)
    plant_lock(
        namespaces["local-prod"], "octocat on CI run 7", int(time.time()) + 600, "binder-prod"
    )
    result = invoke("deploy", "--env=local-prod", "--yes", "--wait-for-lock=0", env=env)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-3000:]
    assert "FAILED: preflight on local-prod" in out, out[-3000:]
    assert "another deploy of local-prod is running: octocat on CI run 7" in out
    assert "invoke unlock --env=local-prod" in out
    assert "==> upgrade" not in out
    assert not release_exists("binder-staging", namespaces["local-staging"])
    assert lock_exists(namespaces["local-prod"], "binder-prod")


@pytest.mark.cluster
def test_a_stuck_target_release_stops_the_deploy_before_staging_is_touched(both_clusters, tmp_path):
    env, namespaces = demo_registry(tmp_path)
    # A real stuck release: helm killed half-way through installing local-prod.
    stuck_env = {**env, "DEPLOY_REGISTRY": str(tmp_path / "slow.yaml")}
    document = yaml.safe_load(Path(env["DEPLOY_REGISTRY"]).read_text())
    document["chart"] = str(slow_chart(tmp_path))
    Path(stuck_env["DEPLOY_REGISTRY"]).write_text(yaml.safe_dump(document))

    def kill_helm(process: subprocess.Popen) -> None:
        for pid in descendants(process.pid):
            command = command_line(pid)
            if Path(command[0]).name == "helm" and "upgrade" in command:
                os.kill(pid, signal.SIGKILL)

    # Run alone, without local-staging ever deployed: nothing verified to promote.
    killed = run_and_act(
        ["upgrade", "--env=local-prod", "--promote-unverified"],
        stuck_env,
        "$ helm upgrade",
        once_helm_holds_the_release(namespaces["local-prod"], kill_helm, "binder-prod"),
    )
    assert "stuck in pending-install" in killed.output, killed.output[-3000:]

    result = invoke("deploy", "--env=local-prod", "--yes", env=env)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-3000:]
    assert "FAILED: preflight on local-prod" in out, out[-3000:]
    assert "is stuck in pending-install" in out
    assert "invoke recover-release --env=local-prod" in out
    assert "==> upgrade" not in out
    assert not release_exists("binder-staging", namespaces["local-staging"])


@pytest.mark.cluster
def test_a_lock_with_an_unreadable_expiry_is_explained_not_called_a_bug(both_clusters, tmp_path):
    env, namespaces = demo_registry(tmp_path)
    plant_lock(namespaces["local-staging"], "someone by hand", "tomorrow")
    result = invoke("deploy", "--env=local-staging", env=env)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-3000:]
    assert "its expiry ('tomorrow') is not a time this pipeline wrote" in out, out[-3000:]
    assert "invoke unlock --env=local-staging" in out
    assert "bug" not in out
    assert not release_exists("binder-staging", namespaces["local-staging"])


# -- invoke's own --dry ------------------------------------------------------------


@pytest.mark.cluster
def test_invokes_own_dry_flag_is_a_dry_run_that_deploys_nothing(both_clusters, tmp_path):
    env, namespaces = demo_registry(tmp_path)
    result = invoke("--dry", "deploy", "--env=local-prod", "--yes", env=env)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    release = unique_release(namespaces["local-staging"])
    assert f"helm upgrade {release} mybinder --install" in out and "[dry-run]" in out
    assert "local-prod: would be deployed and validated" in out
    assert not release_exists("binder-staging", namespaces["local-staging"])
    assert not release_exists("binder-prod", namespaces["local-prod"])


def test_invokes_own_dry_flag_is_refused_where_a_task_has_no_dry_run():
    for task in ("doctor", "diff", "ci", "cluster.status", "test"):
        args = [task, "--env=local-staging"] if task == "diff" else [task]
        result = invoke("--dry", *args)
        out = result.stdout + result.stderr
        assert result.returncode == 1, (task, out[-2000:])
        assert "has no dry run: nothing was done" in out, (task, out[-2000:])
        assert "Traceback" not in out


# -- one run per checkout ----------------------------------------------------------


@pytest.mark.cluster
def test_a_second_run_from_the_same_checkout_is_refused_before_it_touches_anything(
    both_clusters, tmp_path
):
    env, _ = demo_registry(tmp_path, top={"chart": str(slow_chart(tmp_path))})
    second: list[subprocess.CompletedProcess] = []

    def start_another(first: subprocess.Popen) -> None:
        second.append(invoke("deploy", "--env=local-prod", "--yes", env=env))
        second.append(invoke("decrypt-secrets", "--env=local-staging", env=env))
        first.send_signal(signal.SIGINT)

    run_and_act(["deploy", "--env=local-prod", "--yes"], env, "$ helm upgrade", start_another)
    for refused in second:
        out = refused.stdout + refused.stderr
        assert refused.returncode == 1, out[-3000:]
        assert "Another run is changing this checkout" in out, out[-3000:]
        assert "`invoke deploy --env=local-prod --yes`" in out
        assert "unlocking" not in out and "==> upgrade" not in out

    # The kernel gives the checkout back when its holder dies, however it dies.
    def kill(process: subprocess.Popen) -> None:
        process.kill()
        process.wait()

    run_and_act(["deploy", "--env=local-staging"], env, "==> validate", kill)
    after = invoke("decrypt-secrets", "--env=local-staging", env=env)
    assert after.returncode == 0, (after.stdout + after.stderr)[-3000:]


@pytest.mark.cluster
def test_a_lock_left_by_a_dead_process_on_this_machine_is_taken_over(both_clusters, tmp_path):
    slow_smoke = values(tmp_path, "static:\n  replicas: 0\n")
    env, namespaces = demo_registry(tmp_path, {"extra_values": slow_smoke})
    env["SMOKE_WARMUP_SECONDS"] = "50"

    def kill_everything(process: subprocess.Popen) -> None:
        time.sleep(2)
        children = descendants(process.pid)
        process.kill()
        process.wait()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    run_and_act(
        ["deploy", "--env=local-staging"], env, "==> smoke-test [local-staging]", kill_everything
    )
    assert lock_exists(namespaces["local-staging"])

    result = invoke("deploy", "--env=local-staging", env={**env, "SMOKE_WARMUP_SECONDS": "2"})
    out = result.stdout + result.stderr
    assert "is no longer running on this machine; taking it over" in out, out[-3000:]
    assert "==> upgrade [local-staging]" in out
    assert not lock_exists(namespaces["local-staging"])


@pytest.mark.cluster
def test_a_live_lock_of_this_machine_is_never_taken_over(both_clusters, tmp_path):
    from tasks.steps import lock

    env, namespaces = demo_registry(tmp_path)
    # This test's own process: alive, on this machine.
    plant_lock(
        namespaces["local-staging"],
        "a deploy in this machine's other terminal",
        int(time.time()) + 600,
        process=lock.process_identity(os.getpid()),
    )
    result = invoke("deploy", "--env=local-staging", "--wait-for-lock=0", env=env)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-3000:]
    assert "another deploy of local-staging is running" in out
    assert not release_exists("binder-staging", namespaces["local-staging"])


@pytest.mark.cluster
def test_after_an_automatic_rollback_the_failure_no_longer_says_to_roll_back(
    both_clusters, tmp_path
):
    env, _ = demo_registry(tmp_path)
    assert invoke("deploy", "--env=local-staging", env=env).returncode == 0
    registry_file = Path(env["DEPLOY_REGISTRY"])
    document = yaml.safe_load(registry_file.read_text())
    crash = "static:\n  podLabels:\n    kwok.binder.test/fail: crashloop\n"
    document["environments"]["local-staging"]["extra_values"] = values(tmp_path, crash)
    registry_file.write_text(yaml.safe_dump(document))
    result = invoke("deploy", "--env=local-staging", "--rollback-on-failure", env=env)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-4000:]
    assert "local-staging was rolled back to its last good revision" in out
    screen = out[out.index("FAILED: wait-rollout on local-staging") :]
    assert "was rolled back automatically" in screen
    assert "invoke rollback --env=local-staging" not in screen
    assert "kubectl --kubeconfig" in screen
