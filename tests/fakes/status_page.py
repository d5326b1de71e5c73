"""A toy step, written as the README's "Adding a step" says: this module, and one line in
the chain (tests/test_adding_a_step.py adds it).

`status-page` tells a status page that a deploy of an environment starts: a POST to
STATUS_PAGE_URL. It changes nothing that a rollback could undo, needs no cluster and
runs once per environment; its dry run shows the request instead of sending it.
"""

from __future__ import annotations

import os

from tasks.config.context import StepContext
from tasks.core import web
from tasks.core.errors import StepFailure
from tasks.core.step import Step


def post_status(ctx: StepContext) -> str:
    env = ctx.environment
    url = os.environ.get("STATUS_PAGE_URL", "")
    if not url:
        raise StepFailure("STATUS_PAGE_URL is not set.", "Set it to the status page's URL.")
    body = {"environment": env.name, "status": "deploying"}
    if ctx.dry_run:
        web.dry_run("POST", url, body=body)
        return "status request shown, not sent"
    answer = web.request("POST", url, retries=web.NOTICES, label="status page", json=body)
    if answer.status_code >= 300:
        raise StepFailure(f"The status page answered {answer.status_code}.")
    return f"status page told {env.name} is deploying"


STATUS_PAGE = Step("status-page", post_status, summary="Tell the status page a deploy starts.")
