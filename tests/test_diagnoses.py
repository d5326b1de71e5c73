"""One catalogue of helm and kubectl failures: a failure reads the same in every step."""

from pathlib import Path

import pytest
from invoke import Context

from tasks.adapters import go_builds
from tasks.core import diagnoses
from tasks.core.errors import CommandFailed, explain
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
