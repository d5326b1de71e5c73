"""One catalogue of helm and kubectl failures: a failure reads the same in every step."""

from pathlib import Path

import pytest
from invoke import Context

from tasks.adapters import go_builds
from tasks.core import diagnoses
from tasks.core.errors import CommandFailed, StepFailure, explain
from tasks.core.runner import Runner
from tasks.steps import release
from tests.fakes.environments import step_context


def helm_failure(tmp_path: Path, values: str) -> CommandFailed:
    """What the real helm says when it cannot parse a values file (the same for every
    subcommand that takes `--values`: template, lint, upgrade, diff)."""
    chart = tmp_path / "chart"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: chart\nversion: 0.1.0\n")
    (tmp_path / "broken.yaml").write_text(values)
    runner = Runner(Context(), tool_dirs=[go_builds.binary("helm").parent])
    with pytest.raises(CommandFailed) as failed:
        runner.run(
            ["helm", "template", "r", chart, "--values", tmp_path / "broken.yaml"], quiet=True
        )
    return failed.value


def test_an_upgrade_that_fails_converting_yaml_gets_the_diagnosis_validate_gives(
    tmp_path: Path,
) -> None:
    failed = helm_failure(tmp_path, "hub: [\n")
    assert "error converting YAML" in failed.output
    ctx = step_context("local-staging", "upgrade")
    env = ctx.environment

    upgrade = release.explain_helm_failure(ctx, failed, "helm upgrade failed")
    validate = explain(
        failed, diagnoses.for_env(diagnoses.RENDER_FAILURES, env.name), "helm template failed"
    )

    assert upgrade.why.startswith("The chart did not render: error converting YAML to JSON")
    assert (upgrade.why, upgrade.fix) == (validate.why, validate.fix)
    assert "invoke validate --env=local-staging" in upgrade.fix


def test_a_release_status_read_by_kubectl_tells_kubectls_failure_as_kubectls(
    tmp_path: Path,
) -> None:
    # The release's status is read with kubectl from helm's records: a cluster nobody
    # answers for is named by its address, not told as helm's failure.
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: x\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: x, context: {cluster: c, user: u}}]\n"
    )
    runner = Runner(
        Context(),
        env={"KUBECONFIG": str(kubeconfig)},
        tool_dirs=[go_builds.binary("kubectl").parent],
    )
    ctx = step_context("local-staging", "upgrade", runner=runner)
    with pytest.raises(StepFailure) as failed:
        release.refuse_if_pending(ctx)
    assert failed.value.why == (
        "Nothing answers at 127.0.0.1:9: the API server is down or the address is wrong."
    )
    assert "helm" not in failed.value.why
