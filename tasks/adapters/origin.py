"""Where a deploy comes from: the commit it deploys, the pull request that commit merged, the
CI run and who started it. Grafana's annotations, the deploy lock and the chat notices
all say it the same way."""

from __future__ import annotations

import os
import re

from tasks.config.context import StepContext


def head_commit(ctx: StepContext) -> tuple[str, str]:
    """The checkout's commit (short hash) and its subject."""
    result = ctx.runner.run(
        ["git", "-C", str(ctx.runner.cwd), "log", "-1", "--format=%h%x1f%s"],
        check=False,
        quiet=True,
        touches_nothing=True,
    )
    if not result.ok or "\x1f" not in result.stdout:
        return "an unknown commit", ""
    sha, subject = result.stdout.strip().split("\x1f", 1)
    return sha, subject


def pull_request_number(subject: str) -> int | None:
    """The pull request a merge or squash commit's subject names, if any."""
    found = re.match(r"Merge pull request #(\d+) from ", subject) or re.search(
        r"\(#(\d+)\)\s*$", subject
    )
    return int(found.group(1)) if found else None


def deployer() -> str:
    """Who or what started this deploy, with the CI run's address when there is one."""
    environ = os.environ
    if environ.get("GITHUB_ACTOR"):
        who = f"{environ['GITHUB_ACTOR']} via GitHub Actions"
    elif environ.get("TRAVIS") == "true":
        who = "Travis CI"
    else:
        who = environ.get("USER") or environ.get("USERNAME") or "an unknown user"
    link = run_url()
    return f"{who} ({link})" if link else who


def run_url() -> str:
    """The CI run's page, where its log and summary are; "" outside CI."""
    environ = os.environ
    github = [environ.get(k) for k in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID")]
    if all(github):
        server, repository, run_id = github
        return f"{server}/{repository}/actions/runs/{run_id}"
    return environ.get("TRAVIS_BUILD_WEB_URL", "")
