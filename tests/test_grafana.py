"""Grafana deploy annotations, against a fake Grafana over real HTTP on 127.0.0.1."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from invoke import Context
from invoke.exceptions import Exit

from tasks.cli.steps import annotate_grafana
from tasks.config.context import StepContext, keep_registry
from tasks.config.registry import (
    ClusterAccess,
    Environment,
    Grafana,
    KeySource,
    Registry,
    Release,
)
from tasks.core import web
from tasks.core.errors import StepFailure, Stop
from tasks.core.run import current
from tasks.core.runner import Runner
from tasks.steps import grafana
from tasks.steps.grafana import close_region, close_regions
from tests.fakes import environments
from tests.fakes.grafana_server import FakeGrafana

TOKEN = "glsa_fake_service_account_token_0123456789"
CI_VARIABLES = (
    "GITHUB_ACTIONS",
    "GITHUB_ACTOR",
    "GITHUB_SERVER_URL",
    "GITHUB_REPOSITORY",
    "GITHUB_RUN_ID",
    "TRAVIS",
    "TRAVIS_BUILD_WEB_URL",
    "CI",
    "GRAFANA_TOKEN",
)


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CI_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("USER", "operator")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setattr(web, "ANNOTATIONS", web.Retries(attempts=3, first_pause=0.01, timeout=0.3))


def region(env_name: str) -> grafana.Region | None:
    return current().environment(env_name).kept(grafana.Region)


def warnings() -> list[str]:
    return current().summary.warnings


def last_record_result() -> str:
    return current().summary.records[-1].result


@pytest.fixture
def server() -> Iterator[FakeGrafana]:
    with FakeGrafana(token=TOKEN) as fake:
        yield fake


@pytest.fixture
def secrets(tmp_path: Path) -> Path:
    folder = tmp_path / "secrets"
    folder.mkdir()
    (folder / "grafana-token").write_text(TOKEN + "\n")
    return folder


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A checkout whose last commit is a GitHub merge of pull request #123."""
    path = tmp_path / "repo"
    path.mkdir()
    git = ["git", "-C", str(path), "-c", "user.name=Dev", "-c", "user.email=dev@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run(
        [*git, "commit", "-q", "--allow-empty", "-m", "Merge pull request #123 from dev/fix"],
        check=True,
    )
    return path


def make_env(name: str, secrets: Path, settings: Grafana | None) -> Environment:
    return Environment(
        name=name,
        description="",
        cluster=ClusterAccess("local", {"name": name}),
        releases=(Release("binder", name, "mybinder"),),
        secrets_dir=secrets,
        key=KeySource(source="file", path="unused"),
        grafana=settings,
    )


def grafana_settings(server: FakeGrafana, **changes: object) -> Grafana:
    settings = Grafana(url=server.url, token_file="grafana-token", tags=("mybinder",))
    return replace(settings, **changes)


def step_context(env: Environment, repo: Path, dry_run: bool = False) -> StepContext:
    runner = Runner(Context(), dry_run=dry_run, cwd=repo)
    return environments.step_context(env, "annotate-grafana", runner=runner, dry_run=dry_run)


@pytest.fixture
def use_registry(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Make the tasks see a registry holding just the given environments."""

    def install(*envs: Environment) -> None:
        keep_registry(Registry({env.name: env for env in envs}, Path("mybinder")))

    return install


def posts(server: FakeGrafana) -> list:
    return [r for r in server.requests if r.method == "POST"]


def test_start_posts_a_region_with_commit_pull_request_and_deployer(
    server: FakeGrafana, secrets: Path, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_ACTOR", "alice")
    monkeypatch.setenv("GITHUB_SERVER_URL", "https://github.com")
    monkeypatch.setenv("GITHUB_REPOSITORY", "jupyterhub/mybinder.org-deploy")
    monkeypatch.setenv("GITHUB_RUN_ID", "4242")
    settings = grafana_settings(server, dashboard_uid="deploys", org_id=2)
    env = make_env("staging", secrets, settings)

    grafana.start_region(step_context(env, repo))

    [request] = server.requests
    body = request.json
    sha = subprocess.run(
        ["git", "-C", str(repo), "log", "-1", "--format=%h"], capture_output=True, text=True
    ).stdout.strip()
    assert request.path == "/api/annotations"
    assert isinstance(body["time"], int) and body["time"] > 1_600_000_000_000
    assert body["timeEnd"] == body["time"]
    assert body["tags"] == ["deployment", "staging", "mybinder"]
    assert sha in body["text"] and "Merge pull request #123 from dev/fix" in body["text"]
    assert "Pull request: #123" in body["text"]
    assert "alice via GitHub Actions" in body["text"]
    assert "https://github.com/jupyterhub/mybinder.org-deploy/actions/runs/4242" in body["text"]
    assert body["dashboardUID"] == "deploys"
    assert request.header("X-Grafana-Org-Id") == "2"
    assert request.header("Authorization") == f"Bearer {TOKEN}"
    assert region("staging").annotation_id == 1


def test_squash_subject_and_local_user_are_named() -> None:
    assert grafana.pull_request_number("Bump binderhub chart (#3120)") == 3120
    assert grafana.pull_request_number("Merge pull request #7 from a/b") == 7
    assert grafana.pull_request_number("Fix typo in #12 handling") is None
    assert grafana.deployer() == "operator"


def test_success_closes_the_region_keeping_its_tags(
    server: FakeGrafana, secrets: Path, repo: Path
) -> None:
    env = make_env("staging", secrets, grafana_settings(server))
    grafana.start_region(step_context(env, repo))

    close_regions("success")

    post, patch = server.requests
    assert patch.method == "PATCH" and patch.path == "/api/annotations/1"
    assert patch.json["timeEnd"] >= post.json["time"]
    assert patch.json["tags"] == ["deployment", "staging", "mybinder", "success"]
    assert server.annotations[1]["tags"] == patch.json["tags"]
    assert grafana.open_regions() == []


def test_failure_is_tagged_with_the_failed_step(
    server: FakeGrafana, secrets: Path, repo: Path
) -> None:
    env = make_env("prod", secrets, grafana_settings(server))

    with pytest.raises(Stop), grafana.regions_closed_on_exit():
        grafana.start_region(step_context(env, repo))
        raise Stop("rollout", "prod", StepFailure("pods crash"))

    patch = server.requests[-1]
    assert patch.json["tags"] == [
        "deployment",
        "prod",
        "mybinder",
        "failure",
        "failed-step:rollout",
    ]


def test_interrupted_deploy_closes_every_open_region(
    server: FakeGrafana, secrets: Path, repo: Path
) -> None:
    for name in ("staging", "prod"):
        grafana.start_region(step_context(make_env(name, secrets, grafana_settings(server)), repo))

    close_regions(*grafana.outcome_of(KeyboardInterrupt()))

    patches = [r for r in server.requests if r.method == "PATCH"]
    assert [p.path for p in patches] == ["/api/annotations/1", "/api/annotations/2"]
    assert all(p.json["tags"][-1] == "interrupted" for p in patches)
    assert grafana.open_regions() == []


def test_refused_token_warns_without_failing_the_deploy(
    server: FakeGrafana, secrets: Path, use_registry, capfd: pytest.CaptureFixture[str]
) -> None:
    (secrets / "grafana-token").write_text("glsa_revoked_token_9876543210\n")
    use_registry(make_env("staging", secrets, grafana_settings(server)))

    annotate_grafana(Context(), env="staging")

    err = capfd.readouterr().err
    assert "token is invalid or lacks permission to create annotations" in err
    assert "Editor role" in err
    assert len(server.requests) == 1, "a refused token is not retried"
    assert last_record_result() == "ok"
    assert any("not opened" in w for w in warnings())
    assert grafana.open_regions() == []


def test_refused_token_is_fatal_when_strict(
    server: FakeGrafana, secrets: Path, use_registry
) -> None:
    server.forbid()
    use_registry(make_env("staging", secrets, grafana_settings(server)))

    with pytest.raises(Exit) as stopped:
        annotate_grafana(Context(), env="staging", strict=True)

    assert stopped.value.code == 1
    assert "lacks permission to create annotations" in str(stopped.value.message)
    assert last_record_result() == "failed"


def test_a_refused_token_from_a_variable_never_shows(
    server: FakeGrafana,
    secrets: Path,
    use_registry,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    server.forbid()
    monkeypatch.setenv("GRAFANA_TOKEN", "wrong-token-654321")
    settings = grafana_settings(server, token_env="GRAFANA_TOKEN", strict=True)
    use_registry(make_env("staging", secrets, settings))

    with pytest.raises(Exit) as stopped:
        annotate_grafana(Context(), env="staging")

    printed = capfd.readouterr()
    assert "FAILED: annotate-grafana on staging" in str(stopped.value.message)
    assert "wrong-token-654321" not in str(stopped.value.message) + printed.out + printed.err


def test_strict_registry_setting_makes_it_fatal_too(
    server: FakeGrafana, secrets: Path, use_registry
) -> None:
    server.forbid()
    use_registry(make_env("staging", secrets, grafana_settings(server, strict=True)))

    with pytest.raises(Exit):
        annotate_grafana(Context(), env="staging")


def test_server_errors_are_retried_and_one_annotation_is_created(
    server: FakeGrafana, secrets: Path, repo: Path
) -> None:
    server.fail_next(2, status=500)
    env = make_env("staging", secrets, grafana_settings(server))

    grafana.start_region(step_context(env, repo))

    assert len(posts(server)) == 3
    assert list(server.annotations) == [1]
    assert region("staging").annotation_id == 1
    assert warnings() == []


def test_a_post_left_unanswered_is_never_sent_again(
    server: FakeGrafana, secrets: Path, repo: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # The fake creates the annotation, then answers too late: as a hanging Grafana does.
    server.delay_all(1.0)
    env = make_env("staging", secrets, grafana_settings(server))

    note = grafana.start_region(step_context(env, repo))

    assert len(posts(server)) == 1
    assert "no annotation" in (note or "")
    warning = warnings()[0]
    assert "no answer within 0.3s" in warning
    assert "may have created the region" in warning and "not sent again" in warning


def test_a_hanging_grafana_is_not_asked_again_in_the_same_run(
    server: FakeGrafana, secrets: Path, repo: Path
) -> None:
    server.delay_all(1.0)
    settings = grafana_settings(server)
    for name in ("staging", "prod"):
        grafana.start_region(step_context(make_env(name, secrets, settings), repo))
    close_regions("success")

    assert len(server.requests) == 1
    assert "did not answer earlier in this run" in warnings()[1]


def test_a_gateway_error_on_a_post_is_not_retried(
    server: FakeGrafana, secrets: Path, repo: Path
) -> None:
    server.fail_next(1, status=504)
    env = make_env("staging", secrets, grafana_settings(server))

    grafana.start_region(step_context(env, repo))

    assert len(posts(server)) == 1
    assert "may have created the region" in warnings()[0]


def test_retries_stop_when_the_requests_budget_is_spent(
    server: FakeGrafana, secrets: Path, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        web, "ANNOTATIONS", web.Retries(attempts=6, first_pause=0.2, timeout=0.3, budget=0.5)
    )
    server.fail_next(6, status=500)
    env = make_env("staging", secrets, grafana_settings(server))

    grafana.start_region(step_context(env, repo))

    assert 1 < len(posts(server)) < 6
    assert server.annotations == {}


def test_unreachable_grafana_is_a_warning(secrets: Path, repo: Path) -> None:
    with FakeGrafana(token=TOKEN) as gone:
        settings = grafana_settings(gone)
    env = make_env("staging", secrets, settings)

    grafana.start_region(step_context(env, repo))

    assert "could not connect" in warnings()[0]


def test_failed_close_warns_and_is_fatal_only_when_strict(
    server: FakeGrafana, secrets: Path, repo: Path
) -> None:
    for name, strict in (("staging", False), ("prod", True)):
        settings = grafana_settings(server, strict=strict)
        grafana.start_region(step_context(make_env(name, secrets, settings), repo))
    server.annotations.clear()

    with pytest.raises(StepFailure, match="no annotation at"):
        close_regions("success")

    assert len([r for r in server.requests if r.method == "PATCH"]) == 2
    assert "staging not closed as success" in warnings()[0]
    assert grafana.open_regions() == []


def test_failed_close_of_a_failed_deploy_keeps_the_deploy_failure_as_the_one_reported(
    server: FakeGrafana, secrets: Path, repo: Path
) -> None:
    env = make_env("prod", secrets, grafana_settings(server, strict=True))
    grafana.start_region(step_context(env, repo))
    server.forbid()

    close_regions("failure", failed_step="upgrade")

    assert "prod not closed as failure" in warnings()[0]


def test_strict_close_failure_after_a_good_deploy_stops_the_pipeline(
    server: FakeGrafana, secrets: Path, repo: Path
) -> None:
    env = make_env("prod", secrets, grafana_settings(server, strict=True))

    with pytest.raises(Stop) as stopped, grafana.regions_closed_on_exit():
        grafana.start_region(step_context(env, repo))
        server.forbid()

    assert stopped.value.step == "annotate-grafana" and stopped.value.env == "prod"
    assert "lacks permission" in stopped.value.failure.why


def test_no_grafana_configured_skips_with_a_notice(
    secrets: Path, use_registry, capfd: pytest.CaptureFixture[str]
) -> None:
    use_registry(make_env("local-staging", secrets, None))

    annotate_grafana(Context(), env="local-staging")

    assert "skipped: no Grafana configured for local-staging" in capfd.readouterr().out
    assert last_record_result() == "skipped"
    close_region("local-staging", "success")


def test_token_from_the_environment_variable_wins_over_the_file(
    server: FakeGrafana,
    secrets: Path,
    repo: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    (secrets / "grafana-token").write_text("glsa_stale_file_token_000000\n")
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    env = make_env("staging", secrets, grafana_settings(server, token_env="GRAFANA_TOKEN"))

    grafana.start_region(step_context(env, repo))

    assert server.requests[0].header("Authorization") == f"Bearer {TOKEN}"
    assert "from the environment variable GRAFANA_TOKEN" in capfd.readouterr().out


def test_token_file_is_used_when_the_variable_is_unset(
    server: FakeGrafana, secrets: Path, repo: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    env = make_env("staging", secrets, grafana_settings(server, token_env="GRAFANA_TOKEN"))

    grafana.start_region(step_context(env, repo))

    assert server.requests[0].header("Authorization") == f"Bearer {TOKEN}"
    assert f"from {secrets / 'grafana-token'}" in capfd.readouterr().out


def test_locked_token_file_says_to_decrypt_the_secrets(
    server: FakeGrafana, secrets: Path, repo: Path
) -> None:
    (secrets / "grafana-token").write_bytes(b"\x00GITCRYPT\x00" + bytes(range(40)))
    env = make_env("prod", secrets, grafana_settings(server))

    grafana.start_region(step_context(env, repo))

    assert server.requests == []
    assert "still encrypted" in warnings()[0]
    assert "invoke decrypt-secrets --env=prod" in warnings()[0]
    with pytest.raises(StepFailure, match="secrets are locked"):
        grafana.start_region(step_context(env, repo), strict=True)


def test_dry_run_shows_the_requests_and_sends_nothing(
    server: FakeGrafana,
    secrets: Path,
    repo: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    settings = grafana_settings(server, org_id=1)
    env = make_env("staging", secrets, settings)

    grafana.start_region(step_context(env, repo, dry_run=True))
    close_regions("success")

    out = capfd.readouterr().out
    assert server.requests == []
    assert f"[dry-run] POST {server.url}/api/annotations" in out
    assert f"[dry-run] PATCH {server.url}/api/annotations/<id>" in out
    assert "Authorization: Bearer ********" in out
    assert "X-Grafana-Org-Id: 1" in out
    assert '"tags": [' in out and "Pull request: #123" in out


def test_token_never_appears_in_any_output(
    server: FakeGrafana,
    secrets: Path,
    repo: Path,
    use_registry,
    capfd: pytest.CaptureFixture[str],
) -> None:
    env = make_env("staging", secrets, grafana_settings(server))
    use_registry(env)
    grafana.start_region(step_context(env, repo, dry_run=True))
    close_regions("success")
    grafana.start_region(step_context(env, repo))
    server.forbid()
    close_regions("failure", "smoke-test")
    with pytest.raises(Exit) as stopped:
        annotate_grafana(Context(), env="staging", strict=True)

    captured = capfd.readouterr()
    everything = "\n".join([captured.out, captured.err, str(stopped.value.message), *warnings()])
    assert "Bearer ********" in everything
    assert TOKEN not in everything
    assert TOKEN not in repr(grafana.Region("x", env.grafana, TOKEN, (), 0, False))
