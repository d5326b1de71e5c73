"""The run page on GitHub Actions: the step summary, annotations on the operator's files, and
every secret announced to the runner (`::add-mask::`) before anything else is printed."""

from __future__ import annotations

import re
import secrets as random_secrets
from pathlib import Path

import pytest
import yaml

from tasks.core.errors import Location, StepFailure
from tasks.core.masking import SecretMasker
from tasks.core.output import annotate
from tasks.core.report import FAILED, OK, StepRecord, Summary
from tasks.core.runner import PROJECT_ROOT
from tests.fixtures.chain import demo_registry, invoke

TOKEN = random_secrets.token_hex(20)


def demo_secret_values() -> list[str]:
    """The long string values of the demo's unlocked secret values files."""
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, str) and len(node) >= 12:
            found.append(node)

    for path in (PROJECT_ROOT / "secrets/demo/config").glob("*.yaml"):
        walk(yaml.safe_load(path.read_text()))
    assert found, "the demo secrets are locked: the demo_secrets fixture unlocks them"
    return found


def test_each_line_of_a_secret_is_announced_once_on_github_actions(monkeypatch, capsys):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    masker = SecretMasker()
    masker.register(f"{TOKEN}\n50%-of-a-key\r\n}}\n")
    masker.register(TOKEN)
    out = capsys.readouterr().out
    assert sorted(out.splitlines()) == sorted(
        [f"::add-mask::{TOKEN}", "::add-mask::50%25-of-a-key"]
    )


def test_no_secret_is_announced_anywhere_but_on_github_actions(monkeypatch, capsys):
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    SecretMasker().register(TOKEN)
    monkeypatch.setenv("GITHUB_ACTIONS", "false")
    SecretMasker().register(TOKEN)
    assert capsys.readouterr().out == ""


def test_annotations_escape_what_would_end_the_command(monkeypatch, capsys):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    failure = StepFailure(
        "bad", locations=[Location("config/a,b:c.yaml", 3, 5, "100% wrong\nhere")]
    )
    annotate(failure, "validate [local-staging]")
    assert capsys.readouterr().out.splitlines() == [
        "::error file=config/a%2Cb%3Ac.yaml,line=3,col=5,title=validate [local-staging]"
        "::100%25 wrong%0Ahere"
    ]
    monkeypatch.delenv("GITHUB_ACTIONS")
    annotate(failure, "validate")
    assert capsys.readouterr().out == ""


def test_the_markdown_summary_has_every_step_masked_and_the_screen_fenced():
    masker = SecretMasker()
    masker.register(TOKEN)
    summary = Summary(masker)
    summary.add(StepRecord("decrypt-secrets", "staging", OK, 1.5, "unlocked"))
    summary.add(StepRecord("upgrade", "staging", FAILED, 62, f"helm said {TOKEN} | <b>"))
    summary.warn(f"Grafana hung on {TOKEN}")
    page = summary.markdown("deploy", "prod", FAILED, "FAILED: upgrade\n  ```odd```")
    assert TOKEN not in page and TOKEN[:12] not in page
    assert "### invoke deploy prod: failed" in page
    assert "| decrypt-secrets | staging | ok | 1.5s | unlocked |" in page
    assert "| upgrade | staging | failed | 1m02s | helm said ******** \\| &lt;b> |" in page
    assert "- Grafana hung on ********" in page
    assert "````text\nFAILED: upgrade\n  ```odd```\n````" in page


def github(tmp_path: Path, **more: str) -> dict[str, str]:
    return {
        "GITHUB_ACTIONS": "true",
        "GITHUB_STEP_SUMMARY": str(tmp_path / "step-summary.md"),
        **more,
    }


def test_a_validate_failure_is_annotated_on_its_file_and_line_and_summarised(
    chart_dependencies, tmp_path
):
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("static:\n  replicas: two\nhub:\n\tb: 1\n")
    env, _ = demo_registry(tmp_path, {"extra_values": [str(wrong)]})
    result = invoke("validate", "--env=local-staging", env={**env, **github(tmp_path)})
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert f"::error file={wrong},line=4,col=1,title=validate [local-staging]::tab" in out
    # Once the file reads, the chart's schema refuses a value: on the line that sets it.
    wrong.write_text("static:\n  replicas: two\n")
    result = invoke("validate", "--env=local-staging", env={**env, **github(tmp_path)})
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert re.search(
        rf"::error file={re.escape(str(wrong))},line=2,col=3,title=validate \[local-staging\]"
        r"::the site chart's schema .* refuses static\.replicas",
        out,
    ), out
    page = (tmp_path / "step-summary.md").read_text()
    assert page.count("### invoke validate") == 2
    assert "| validate | local-staging | failed |" in page
    assert "```text\nFAILED: validate on local-staging\n" in page


@pytest.mark.usefixtures("demo_secrets")
def test_secrets_are_announced_before_anything_else_and_never_in_the_summary(
    chart_dependencies, tmp_path
):
    result = invoke(
        "ci",
        "--no-tests",
        env={**github(tmp_path), "GITHUB_EVENT_NAME": "pull_request"},
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    lines = result.stdout.splitlines()
    first_other = next(i for i, line in enumerate(lines) if not line.startswith("::add-mask::"))
    announced = {line.removeprefix("::add-mask::") for line in lines[:first_other]}
    secrets = demo_secret_values()
    assert set(secrets) <= announced
    page = (tmp_path / "step-summary.md").read_text()
    report = yaml.safe_load((PROJECT_ROOT / "reports/run-ci.json").read_text())
    for step in report["steps"]:
        assert f"| {step['step']} | {step['environment'] or '-'} | {step['result']} |" in page
    for secret in secrets:
        assert secret not in page and secret not in out.replace(f"::add-mask::{secret}", "")

    plain = invoke("ci", "--no-tests", env={"GITHUB_EVENT_NAME": "pull_request"})
    assert plain.returncode == 0
    assert "::add-mask::" not in plain.stdout + plain.stderr


def test_a_registry_mistake_is_annotated_on_its_line(tmp_path, monkeypatch, capsys):
    from tasks.config import registry
    from tests.test_registry import LOCAL, write_registry

    root = write_registry(tmp_path, "environments:\n  a:" + LOCAL + "    gated_bye: b\n")
    with pytest.raises(StepFailure) as raised:
        registry.load(root)
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    annotate(raised.value, "deploy")
    assert capsys.readouterr().out.startswith(
        "::error file=config/environments.yaml,line=7,col=5,title=deploy::"
        "environment 'a': unknown key 'gated_bye'."
    )
