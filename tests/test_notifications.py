"""A notice in the chat when a deploy fails, is interrupted or rolled back; a notice that cannot
be delivered is a loud warning and leaves the deploy's result alone."""

from __future__ import annotations

import secrets as random_secrets
import socket
from dataclasses import replace
from pathlib import Path

import pytest

from tasks.adapters import notifications
from tasks.config import registry
from tasks.config.context import keep_registry
from tasks.core import web
from tasks.core.errors import StepFailure
from tasks.core.report import FAILED, INTERRUPTED, OK, StepRecord
from tasks.core.run import current
from tests.fakes.webhook import WebhookReceiver
from tests.fixtures.chain import demo_registry, invoke
from tests.test_registry import LOCAL, write_registry

TOKEN = random_secrets.token_hex(16)
GITHUB_RUN = {
    "GITHUB_SERVER_URL": "https://github.com",
    "GITHUB_REPOSITORY": "org/site-deploy",
    "GITHUB_RUN_ID": "4242",
}
RUN_LINK = "https://github.com/org/site-deploy/actions/runs/4242"


def deploy_run(tmp_path: Path, notify: str, monkeypatch) -> None:
    """The current run as a deploy of environment `a`, whose registry has `notify`."""
    for name, value in GITHUB_RUN.items():
        monkeypatch.setenv(name, value)
    root = write_registry(tmp_path, "environments:\n  a:" + LOCAL + notify)
    run = current()
    keep_registry(registry.load(root))
    run.task, run.target = "deploy", "a"


def test_a_failed_deploy_posts_one_notice_with_what_failed_where_and_the_run(
    tmp_path, monkeypatch, capsys
):
    with WebhookReceiver() as hook:
        monkeypatch.setenv("HOOK_URL", f"{hook.url}/services/{TOKEN}")
        deploy_run(tmp_path, "    notify: {url_env: HOOK_URL}\n", monkeypatch)
        current().summary.add(StepRecord("upgrade", "a", FAILED, 3, "helm said <no> & stopped"))
        notifications.notify_outcome(current(), FAILED)
    assert len(hook.received) == 1
    path, body = hook.received[0]
    assert path == f"/services/{TOKEN}"
    assert body["text"] == (
        "Deploy of a FAILED (invoke deploy)\n"
        "- upgrade failed on a: helm said &lt;no&gt; &amp; stopped\n"
        f"<{RUN_LINK}|The run>"
    )
    out = capsys.readouterr()
    assert "notice sent to notify: of a ($HOOK_URL)" in out.out
    assert TOKEN not in out.out + out.err


def test_zulip_gets_its_own_link_and_a_rollback_is_news_in_a_run_that_passed(tmp_path, monkeypatch):
    with WebhookReceiver() as hook:
        monkeypatch.setenv("HOOK_URL", f"{hook.url}/api/v1/external/slack_incoming?api_key=x1")
        deploy_run(tmp_path, "    notify: {url_env: HOOK_URL, format: zulip}\n", monkeypatch)
        current().summary.add(StepRecord("rollback", "a", OK, 3, "back to revision 4"))
        notifications.notify_outcome(current(), OK)
    [(_, body)] = hook.received
    assert "- a was rolled back to its last good revision" in body["text"]
    assert body["text"].endswith(f"\n[The run]({RUN_LINK})")


def test_a_success_posts_only_when_configured(tmp_path, monkeypatch):
    with WebhookReceiver() as hook:
        monkeypatch.setenv("HOOK_URL", f"{hook.url}/services/{TOKEN}")
        deploy_run(tmp_path, "    notify: {url_env: HOOK_URL}\n", monkeypatch)
        current().summary.add(StepRecord("upgrade", "a", OK, 3))
        notifications.notify_outcome(current(), OK)
        assert hook.received == []
        deploy_run(
            tmp_path / "again", "    notify: {url_env: HOOK_URL, on_success: true}\n", monkeypatch
        )
        notifications.notify_outcome(current(), OK)
    [(_, body)] = hook.received
    assert body["text"].startswith("Deploy of a succeeded (invoke deploy)")


def undelivered(tmp_path, monkeypatch, capsys, url: str, result: str = FAILED) -> str:
    """Notify through `url`; the one warning left, checked to hold no secret."""
    monkeypatch.setenv("HOOK_URL", url)
    deploy_run(tmp_path, "    notify: {url_env: HOOK_URL}\n", monkeypatch)
    current().summary.add(StepRecord("smoke-test", "a", result, 3, "503 from the hub"))
    notifications.notify_outcome(current(), result)  # raises nothing: the deploy's result stands
    [warning] = current().summary.warnings
    out = capsys.readouterr()
    assert TOKEN not in warning + out.out + out.err
    assert warning in out.err.replace("WARNING: ", "")
    assert f"The deploy's result stands: {result}." in warning
    return warning


def test_a_receiver_answering_500_leaves_a_loud_warning(tmp_path, monkeypatch, capsys):
    with WebhookReceiver() as hook:
        hook.status = 500
        warning = undelivered(tmp_path, monkeypatch, capsys, f"{hook.url}/services/{TOKEN}")
    assert len(hook.received) == 1
    assert warning.startswith("NOTICE NOT DELIVERED to notify: of a ($HOOK_URL)")
    assert "the webhook answered 500 Internal Server Error: internal error" in warning


def test_a_receiver_that_does_not_answer_is_not_sent_the_notice_twice(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(web, "NOTICES", replace(web.NOTICES, timeout=0.5))
    with WebhookReceiver() as hook:
        hook.delay = 2
        warning = undelivered(
            tmp_path, monkeypatch, capsys, f"{hook.url}/services/{TOKEN}", INTERRUPTED
        )
        assert len(hook.received) == 1
    assert "no answer within 0.5s; it may have been posted all the same" in warning


def test_a_receiver_that_is_not_there_leaves_a_warning(tmp_path, monkeypatch, capsys):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    warning = undelivered(tmp_path, monkeypatch, capsys, f"http://127.0.0.1:{port}/s/{TOKEN}")
    assert "could not be sent (connection failed)" in warning


def test_a_webhook_variable_that_is_not_set_is_said(tmp_path, monkeypatch):
    monkeypatch.delenv("HOOK_URL", raising=False)
    deploy_run(tmp_path, "    notify: {url_env: HOOK_URL}\n", monkeypatch)
    notifications.notify_outcome(current(), FAILED)
    [warning] = current().summary.warnings
    assert warning.startswith("NO NOTICE SENT to notify: of a ($HOOK_URL): $HOOK_URL is not set.")


@pytest.mark.parametrize(
    ("notify", "line", "said"),
    [
        ("{url_env: A, url_file: b}", 7, "needs one of `url_env:`"),
        ("{format: teams, url_env: A}", 7, "format must be one of slack, zulip, not 'teams'"),
        ("{url: 'https://hooks.slack.com/services/x'}", 7, "unknown key 'url'"),
    ],
)
def test_a_notify_mistake_names_file_and_line(tmp_path, notify, line, said):
    root = write_registry(tmp_path, "environments:\n  a:" + LOCAL + f"    notify: {notify}\n")
    with pytest.raises(StepFailure) as raised:
        registry.load(root)
    assert f"config/environments.yaml:{line}:" in raised.value.why
    assert said in raised.value.why


def test_a_real_failed_deploy_notifies_once_and_a_500_changes_nothing_of_its_result(
    chart_dependencies, tmp_path
):
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("static:\n\treplicas: 2\n")
    env, _ = demo_registry(
        tmp_path, {"extra_values": [str(wrong)], "notify": {"url_env": "DEPLOY_TEST_WEBHOOK"}}
    )
    with WebhookReceiver() as hook:
        env = {**env, **GITHUB_RUN, "DEPLOY_TEST_WEBHOOK": f"{hook.url}/services/{TOKEN}"}
        # A dry run that fails touches nothing, the chat included.
        dry = invoke("deploy", "--env=local-staging", "--dry-run", env=env)
        assert dry.returncode == 1 and "tab character" in dry.stdout + dry.stderr
        assert hook.received == []
        wrong.write_text("static:\n  replicas: two\n")
        result = invoke("deploy", "--env=local-staging", env=env)
        out = result.stdout + result.stderr
        assert result.returncode == 1, out[-3000:]
        [(_, body)] = hook.received
        assert body["text"].startswith("Deploy of local-staging FAILED (invoke deploy)\n")
        assert "- validate failed on local-staging: The site chart's schema" in body["text"]
        assert body["text"].endswith(f"<{RUN_LINK}|The run>")
        assert TOKEN not in out

        hook.status = 500
        refused = invoke("deploy", "--env=local-staging", env=env)
        out = refused.stdout + refused.stderr
    assert refused.returncode == 1
    assert len(hook.received) == 2
    assert "FAILED: validate on local-staging" in out
    assert "WARNING: NOTICE NOT DELIVERED to notify: of local-staging" in out
    assert TOKEN not in out
