"""The GitHub Actions workflow a fork runs (.github/workflows/ci.yml).

actionlint (built from Go modules at the version config/tools.yaml pins, with
shellcheck for the run: scripts) must find nothing in it, and must find what a
broken copy gets wrong. The rest holds the workflow to the project: the
secrets the registry names, the deploy's own time bounds, where the builds are
cached, the Go release the builds need.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from invoke.exceptions import Exit

from tasks.adapters import go_builds, toolchain
from tasks.adapters.secrets_keys import secret_env_names
from tasks.cli import chain
from tasks.config.context import load_registry
from tasks.core.runner import PROJECT_ROOT

WORKFLOWS = PROJECT_ROOT / ".github" / "workflows"
WORKFLOW = WORKFLOWS / "ci.yml"
# What a deploy job spends outside the chain's own timeouts: set-up (a cold build
# of the pinned tools included), decrypt-secrets, helm-deps, validate, preflight.
SETUP_SECONDS = 30 * 60


def actionlint(*files: Path, cwd: Path = PROJECT_ROOT) -> list[dict[str, Any]]:
    """actionlint's findings on `files`, as its JSON records (file, line, kind, message)."""
    try:
        binary = go_builds.binary("actionlint")
    except Exit as missing:
        pytest.fail(str(missing), pytrace=False)
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is not installed: ./setup.sh installs it", pytrace=False)
    done = subprocess.run(
        [str(binary), f"-shellcheck={shellcheck}", "-format", "{{json .}}", *map(str, files)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # 0: nothing found, 1: findings; anything else is actionlint failing to run.
    assert done.returncode in (0, 1), done.stdout + done.stderr
    return json.loads(done.stdout or "[]")


def workflow() -> dict[str, Any]:
    return yaml.safe_load(WORKFLOW.read_text())


def triggers(document: dict[str, Any]) -> dict[str, Any]:
    # YAML 1.1, which PyYAML reads, takes the key `on` for the boolean true.
    return document.get("on", document.get(True))


def ci_default(parameter: str) -> str:
    """The default of an `invoke ci` flag: the run command passes none."""
    return inspect.signature(chain.ci.body).parameters[parameter].default


def step_running(job: dict[str, Any], command: str) -> dict[str, Any]:
    [step] = [s for s in job["steps"] if s.get("run", "").strip() == command]
    return step


def position(job: dict[str, Any], predicate) -> int:
    [index] = [i for i, step in enumerate(job["steps"]) if predicate(step)]
    return index


def uses(action: str):
    return lambda step: step.get("uses", "").split("@")[0] == action


def test_actionlint_finds_nothing_in_the_workflows() -> None:
    files = sorted(WORKFLOWS.glob("*.y*ml"))
    assert WORKFLOW in files
    findings = actionlint(*files)
    assert findings == [], "\n".join(
        f"{f['filepath']}:{f['line']}:{f['column']}: {f['message']} [{f['kind']}]" for f in findings
    )


def test_actionlint_catches_what_a_broken_copy_gets_wrong(tmp_path: Path) -> None:
    broken = (
        WORKFLOW.read_text()
        .replace("persist-credentials: false", "persist-credential: false")
        .replace("${{ steps.pins.outputs.go }}", "${{ steps.pin.outputs.go }}")
        .replace("run: python3 -m invoke ci\n", "run: python3 -m invoke ci --env=$TARGET\n", 1)
    )
    copy = tmp_path / ".github" / "workflows" / "ci.yml"
    copy.parent.mkdir(parents=True)
    copy.write_text(broken)
    lines = broken.splitlines()

    def line_of(text: str) -> int:
        return next(number for number, line in enumerate(lines, 1) if text in line)

    found = {(f["kind"], f["line"]) for f in actionlint(copy, cwd=tmp_path)}
    assert found == {
        ("action", line_of("persist-credential: false")),
        ("expression", line_of("steps.pin.outputs.go")),
        ("shellcheck", line_of("--env=$TARGET")),
    }


def test_pull_requests_are_validated_without_any_secret() -> None:
    document = workflow()
    assert "pull_request" in triggers(document)
    validate = document["jobs"]["validate"]
    assert validate["if"] == "github.event_name == 'pull_request'"
    step_running(validate, "python3 -m invoke ci")
    assert "secrets." not in yaml.safe_dump(validate)


def test_pushes_to_main_deploy_one_at_a_time_queued_not_cancelled() -> None:
    document = workflow()
    branch = ci_default("branch")
    assert triggers(document)["push"] == {"branches": [branch]}
    deploy = document["jobs"]["deploy"]
    assert deploy["if"] == (
        f"github.event_name != 'pull_request' && github.ref == 'refs/heads/{branch}'"
    )
    step_running(deploy, "python3 -m invoke ci")
    # One group for every run, whatever its commit: runs wait for each other.
    assert "${{" not in deploy["concurrency"]["group"]
    assert deploy["concurrency"]["cancel-in-progress"] is False


def test_the_deploy_gets_every_secret_variable_the_registry_names() -> None:
    registry = load_registry()
    names = {name for env in registry.chain(ci_default("env")) for name in secret_env_names(env)}
    assert names, "the deployed environments name no secret variable"
    # The webhook a group's deploy notifies (tasks/adapters/notifications.py).
    group = registry.group(ci_default("env"))
    if group and group.notify and group.notify.url_env:
        names.add(group.notify.url_env)
    passed = step_running(workflow()["jobs"]["deploy"], "python3 -m invoke ci").get("env", {})
    missing = sorted(name for name in names if passed.get(name) != f"${{{{ secrets.{name} }}}}")
    assert missing == [], f"the deploy step does not pass these secrets: {missing}"


def test_the_deploy_job_outlasts_the_deploys_own_bounds() -> None:
    chain_of = load_registry().chain(ci_default("env"))
    bound = sum(e.timeouts.upgrade + e.timeouts.rollout + e.timeouts.smoke for e in chain_of)
    minutes = workflow()["jobs"]["deploy"]["timeout-minutes"]
    assert minutes * 60 >= bound + SETUP_SECONDS, (
        f"timeout-minutes {minutes} would cancel a deploy of {bound // 60} minutes "
        f"({', '.join(e.name for e in chain_of)}) plus {SETUP_SECONDS // 60} of set-up"
    )


def test_gke_clusters_get_gcloud_and_its_credential_plugin_before_the_deploy() -> None:
    chain_of = load_registry().chain(ci_default("env"))
    assert any(env.cluster.kind == "gke" for env in chain_of)
    deploy = workflow()["jobs"]["deploy"]
    gcloud = position(deploy, uses("google-github-actions/setup-gcloud"))
    components = deploy["steps"][gcloud]["with"]["install_components"].split(",")
    assert "gke-gcloud-auth-plugin" in [c.strip() for c in components]
    tools_step = position(deploy, lambda s: s.get("run", "").strip() == "python3 -m invoke tools")
    deploying = position(deploy, lambda s: s.get("run", "").strip() == "python3 -m invoke ci")
    assert gcloud < tools_step < deploying


def go_default_caches(tmp_path: Path) -> list[str]:
    """Go's module and build caches as a fresh runner has them, relative to its home."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("GOPATH", "GOMODCACHE", "GOCACHE", "XDG_CACHE_HOME")
    }
    env["HOME"] = str(tmp_path)
    out = subprocess.run(
        [go_builds.go_binary(), "env", "GOMODCACHE", "GOCACHE"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return ["~/" + str(Path(line).relative_to(tmp_path)) for line in out.split()]


def test_both_jobs_cache_the_pinned_builds_keyed_on_the_pins(tmp_path: Path) -> None:
    expected = {
        "~/" + str(go_builds.CACHE_ROOT.relative_to(Path.home())),
        *go_default_caches(tmp_path),
        str(toolchain.TOOLS_BIN.parent.relative_to(PROJECT_ROOT)),
    }
    for name, job in workflow()["jobs"].items():
        restore = position(job, uses("actions/cache/restore"))
        save = position(job, uses("actions/cache/save"))
        setup = position(job, lambda s: s.get("run", "").strip() == "./setup.sh")
        assert restore < setup < save, name
        for index in (restore, save):
            step = job["steps"][index]
            assert set(step["with"]["path"].split()) == expected, name
        assert "hashFiles('config/tools.yaml')" in job["steps"][restore]["with"]["key"]
        # The builds the deploy's `invoke tools` adds are saved too.
        if any(s.get("run", "").strip() == "python3 -m invoke tools" for s in job["steps"]):
            assert position(job, lambda s: "invoke tools" in s.get("run", "")) < save


def test_go_is_installed_at_the_release_config_tools_yaml_pins(tmp_path: Path) -> None:
    for name, job in workflow()["jobs"].items():
        [pins] = [s for s in job["steps"] if s.get("id") == "pins"]
        output = tmp_path / f"{name}-output"
        subprocess.run(
            ["bash", "-e", "-c", pins["run"]],
            cwd=PROJECT_ROOT,
            env={**os.environ, "GITHUB_OUTPUT": str(output)},
            check=True,
        )
        assert output.read_text() == f"go={go_builds.pinned_versions()['go']}\n"
        setup_go = job["steps"][position(job, uses("actions/setup-go"))]
        assert setup_go["with"]["go-version"] == "${{ steps.pins.outputs.go }}"
        assert position(job, lambda s: s.get("id") == "pins") < position(
            job, uses("actions/setup-go")
        )
