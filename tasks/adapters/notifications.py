"""A notice in the team's chat when a deploy fails, is interrupted or is rolled back.

The registry may name a webhook (`notify:`) for an environment or a group: a
Slack incoming webhook, or Zulip's Slack-compatible one, both taking
`{"text": ...}`. Once the run is over, a deploy of that target posts what
failed, where, and a link to the run (a success only with `on_success: true`),
made from the run's summary and masked like it. A notice that cannot be
delivered is a loud warning, never a failed deploy. It is sent once: a POST
that got no answer may have been posted all the same.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from tasks.adapters.origin import deployer, run_url
from tasks.config.context import load_registry
from tasks.config.registry import Environment, Group, Notify, url_problem
from tasks.config.values import is_locked
from tasks.core import web
from tasks.core.errors import StepFailure
from tasks.core.output import say, warn
from tasks.core.report import FAILED, INTERRUPTED, OK, Summary
from tasks.core.run import Run
from tasks.core.runner import PROJECT_ROOT

# The tasks whose runs deploy, and so tell the chat how they ended.
DEPLOYING_TASKS = ("deploy", "ci", "demo")


def notify_outcome(run: Run, result: str) -> None:
    """Post the run's outcome to its target's webhook, if it has one and the outcome calls
    for it; a notice that fails is a warning."""
    if run.dry_run or run.task not in DEPLOYING_TASKS or not run.target:
        return
    target = load_registry().target(run.target)
    notify = target.notify
    # A rollback, or an experimental member that failed, is news even in a run that passed.
    news = any(
        r.result in (FAILED, INTERRUPTED) or (r.step == "rollback" and r.result == OK)
        for r in run.summary.records
    )
    if notify is None or (result == OK and not news and not notify.on_success):
        return
    where = f"notify: of {target.name} ({notify.source})"
    try:
        url = webhook_url(run, notify, target)
    except StepFailure as failure:
        warn(f"NO NOTICE SENT to {where}: {failure.why} The deploy's result stands: {result}.")
        return
    text = notice(run.summary, run.task, target.name, result, notify.format)
    problem = post(url, {"text": run.masker.mask(text)})
    if problem:
        warn(f"NOTICE NOT DELIVERED to {where}: {problem}. The deploy's result stands: {result}.")
    else:
        say(f"notice sent to {where}")


def webhook_url(run: Run, notify: Notify, target: Environment | Group) -> str:
    """The webhook's URL from its secret, its secret parts masked from now on."""
    if notify.url_env:
        url = os.environ.get(notify.url_env, "").strip()
        if not url:
            raise StepFailure(f"${notify.url_env} is not set.")
    else:
        owner = target if isinstance(target, Environment) else load_registry().get(target.gate)
        path = owner.secret_path(notify.url_file)
        if not path.is_file() or is_locked(path):
            state = "is still encrypted" if path.is_file() else "does not exist"
            raise StepFailure(f"{path.relative_to(PROJECT_ROOT)} {state}.")
        url = path.read_text(encoding="utf-8", errors="replace").strip()
    parts = urlsplit(url)
    # The path and query carry the token (Slack's /services/..., Zulip's ?api_key=...);
    # the host stays readable in what is printed.
    for secret in (parts.path, parts.query, parts.password or ""):
        run.masker.register(secret)
    problem = url_problem(url)
    if problem:
        raise StepFailure(f"the webhook's URL is not usable: {problem}.")
    return url


def notice(summary: Summary, task: str, target: str, result: str, fmt: str) -> str:
    """The chat message: how the deploy of `target` ended, what failed where, and the run."""
    said = {OK: "succeeded", FAILED: "FAILED", INTERRUPTED: "was INTERRUPTED"}.get(result, result)
    lines = [f"Deploy of {target} {said} (invoke {task})"]
    for record in summary.ordered():
        if record.result in (FAILED, INTERRUPTED):
            why = f": {record.note}" if record.note else ""
            lines.append(f"- {record.step} {record.result} on {record.env or target}{why}")
        elif record.step == "rollback" and record.result == OK:
            lines.append(f"- {record.env} was rolled back to its last good revision")
    lines += [f"- member {m.name}: {m.verdict()}" for m in summary.members]
    lines += [f"- warning: {w}" for w in summary.warnings]
    text = "\n".join(_escaped(line, fmt) for line in lines)
    link = run_url()
    if not link:
        return f"{text}\nStarted by {_escaped(deployer(), fmt)}"
    if fmt == "zulip":
        return f"{text}\n[The run]({link})"
    return f"{text}\n<{link}|The run>"


def _escaped(text: str, fmt: str) -> str:
    # Slack reads &, < and > as markup; Zulip's Markdown shows them as written.
    if fmt != "slack":
        return text
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def post(url: str, body: dict[str, str]) -> str:
    """POST `body` to the webhook once; "" when it took it, else why not."""
    try:
        response = web.request("POST", url, retries=web.NOTICES, label="  chat notice", json=body)
    except web.HttpFailure as failure:
        if failure.maybe_received:
            return (
                f"{failure.reason}; it may have been posted all the same, so it was not sent again"
            )
        return f"it could not be sent ({failure.reason})"
    if not 200 <= response.status_code < 300:
        return f"the webhook answered {response.status_code} {response.reason}: " + web.excerpt(
            response.text
        )
    return ""
