"""Grafana deploy annotations: a region opened when a deploy starts, closed with its result.

The region lets a dashboard show how long each deploy took and how it ended
next to the site's metrics. Every request's HTTP status is checked, because a
silently lost annotation is how the old annotation script failed for months
(mybinder.org-deploy #1496). An annotation problem is loud (a warning at the
moment and in the run's summary) but never fails a deploy, unless the
environment's `grafana.strict` or the task's `--strict` asks for that.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import requests

from tasks.adapters.origin import deployer, head_commit, pull_request_number
from tasks.config.context import StepContext
from tasks.config.registry import Environment, Grafana
from tasks.config.values import GIT_CRYPT_HEADER, is_locked
from tasks.core import web
from tasks.core.errors import Skipped, StepFailure, Stop
from tasks.core.output import say, warn
from tasks.core.run import current
from tasks.core.step import Step

SUCCESS = "success"
FAILURE = "failure"
INTERRUPTED = "interrupted"
OUTCOMES = (SUCCESS, FAILURE, INTERRUPTED)

# Answers that say Grafana did not act on the request, so a POST may be sent again.
_NOT_DONE = frozenset({500, 503})


@dataclass
class Region:
    """An annotation region opened at a deploy's start and not yet closed."""

    env_name: str
    grafana: Grafana
    token: str = field(repr=False)
    tags: tuple[str, ...]
    started_ms: int
    strict: bool
    annotation_id: int | None = None  # None in a dry run: nothing was created
    dry_run: bool = False


def start_region(ctx: StepContext, *, strict: bool = False) -> str | None:
    """Create the region's annotation and remember it until `close_region`."""
    env = ctx.environment
    grafana = env.grafana
    if grafana is None:
        raise Skipped(f"no Grafana configured for {env.name}")
    strict = strict or grafana.strict
    held = ctx.held
    if held.kept(Region) is not None:
        # A second start in one run would otherwise leave the first region open forever.
        close_region(env.name, INTERRUPTED)
    now = _now_ms()
    tags = _base_tags(env)
    body: dict[str, Any] = {
        "time": now,
        "timeEnd": now,
        "tags": list(tags),
        "text": _describe_deploy(ctx, env),
    }
    if grafana.dashboard_uid:
        body["dashboardUID"] = grafana.dashboard_uid
    url = f"{grafana.url}/api/annotations"
    if ctx.dry_run:
        token = _token_for_dry_run(env)
        web.dry_run("POST", url, headers(grafana, ""), body)
        held.keep(Region, Region(env.name, grafana, token, tags, now, strict, dry_run=True))
        return "annotation request shown, not sent"
    try:
        token = read_token(env)
        answer = _send("POST", url, grafana, token, body)
        annotation_id = answer.get("id")
        if not isinstance(annotation_id, int) or isinstance(annotation_id, bool):
            raise StepFailure(
                f"Grafana at {grafana.url} accepted the annotation but returned no id "
                f"(answer: {web.excerpt(answer)}), so the region cannot be closed.",
                "Check that grafana.url points at Grafana itself, not at a login page or proxy.",
            )
    except StepFailure as failure:
        _fail_softly(failure, strict, f"Grafana annotation for {env.name} not opened")
        return "no annotation (see warning)"
    held.keep(Region, Region(env.name, grafana, token, tags, now, strict, annotation_id))
    return f"annotation {annotation_id} opened"


def close_region(env_name: str, outcome: str, failed_step: str | None = None) -> None:
    """End `env_name`'s open region, if any, tagged with the deploy's outcome.

    Warns on failure; raises only for a strict region of a deploy that succeeded:
    a deploy that already failed keeps its own failure as the one reported.
    """
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
    held = current().environment(env_name)
    region = held.kept(Region)
    held.keep(Region, None)
    if region is None:
        return
    tags = [*region.tags, outcome]
    if outcome == FAILURE and failed_step:
        tags.append(f"failed-step:{failed_step}")
    # Grafana replaces the whole tag list on PATCH; the start's tags are sent again.
    body = {"timeEnd": max(_now_ms(), region.started_ms), "tags": tags}
    grafana = region.grafana
    annotation = region.annotation_id if region.annotation_id is not None else "<id>"
    url = f"{grafana.url}/api/annotations/{annotation}"
    if region.dry_run:
        web.dry_run("PATCH", url, headers(grafana, ""), body)
        return
    try:
        _send("PATCH", url, grafana, region.token, body)
    except StepFailure as failure:
        _fail_softly(
            failure,
            region.strict and outcome == SUCCESS,
            f"Grafana annotation for {env_name} not closed as {outcome}",
        )
        return
    say(f"Grafana annotation {annotation} for {env_name} closed: {outcome}")


def open_regions(only: str | None = None) -> list[str]:
    """The environments whose region this run opened and has not closed (or just `only`)."""
    return [
        e.name
        for e in current().environments
        if e.kept(Region) is not None and only in (None, e.name)
    ]


def close_regions(outcome: str, failed_step: str | None = None, only: str | None = None) -> None:
    """End every open region (or `only` that environment's) with the same outcome, each one
    before a strict failure is raised: one unreachable Grafana leaves no other region open."""
    failures: list[StepFailure] = []
    for env_name in open_regions(only):
        try:
            close_region(env_name, outcome, failed_step)
        except StepFailure as failure:
            failures.append(failure)
    if failures:
        raise failures[0]


@contextmanager
def regions_closed_on_exit(only: str | None = None) -> Iterator[None]:
    """Close every region opened inside the block (or `only` that environment's) with the
    block's outcome; a strict close failure becomes a `Stop`, reported like any step's."""
    error: BaseException | None = None
    try:
        yield
    except BaseException as raised:
        error = raised
        raise
    finally:
        envs = ", ".join(open_regions(only))
        try:
            close_regions(*outcome_of(error), only=only)
        except StepFailure as failure:
            raise Stop("annotate-grafana", envs, failure) from None


def outcome_of(error: BaseException | None) -> tuple[str, str | None]:
    """The outcome and failed step to close regions with, from how a deploy ended."""
    if error is None:
        return SUCCESS, None
    if isinstance(error, KeyboardInterrupt):
        return INTERRUPTED, None
    if isinstance(error, Stop):
        return FAILURE, error.step
    return FAILURE, None


def read_token(env: Environment) -> str:
    """The environment's Grafana token, registered with the masker before anything else."""
    grafana = env.grafana
    if grafana is None:
        raise StepFailure(f"No Grafana configured for {env.name}.")
    if grafana.token_env and os.environ.get(grafana.token_env):
        token = os.environ[grafana.token_env].strip()
        current().masker.register(token)
        say(f"Grafana token: from the environment variable {grafana.token_env}")
        return token
    if not grafana.token_file:
        where = f"${grafana.token_env} is not set" if grafana.token_env else "none is configured"
        raise StepFailure(
            f"No Grafana token for {env.name}: {where}.",
            "Set grafana.token_file (under the secrets folder) or grafana.token_env "
            "in config/environments.yaml.",
        )
    path = env.secret_path(grafana.token_file)
    if not path.exists():
        raise StepFailure(
            f"The Grafana token file {path} named by environment {env.name!r} does not exist"
            + (f", and ${grafana.token_env} is not set." if grafana.token_env else "."),
            "Unlock the secrets (invoke decrypt-secrets) or fix grafana.token_file in "
            "config/environments.yaml.",
        )
    raw = path.read_bytes()
    if raw.startswith(GIT_CRYPT_HEADER):
        raise StepFailure(
            f"The Grafana token file {path} is still encrypted: the secrets are locked.",
            f"Unlock them first: invoke decrypt-secrets --env={env.name}",
        )
    token = raw.decode("utf-8", errors="replace").strip()
    current().masker.register(token)
    if not token:
        raise StepFailure(f"The Grafana token file {path} is empty.")
    say(f"Grafana token: from {path}")
    return token


def _token_for_dry_run(env: Environment) -> str:
    # A dry run often happens with the secrets locked; saying so is enough.
    token_file = env.grafana.token_file if env.grafana else None
    if token_file and is_locked(env.secret_path(token_file)):
        # In a real run decrypt-secrets has unlocked it by now.
        say(f"[dry-run] Grafana token: from {env.secret_path(token_file)} (encrypted now)")
        return ""
    try:
        return read_token(env)
    except StepFailure as failure:
        say(f"[dry-run] a real run would fail here: {failure.why} {failure.fix}".rstrip())
        return ""


def _send(method: str, url: str, grafana: Grafana, token: str, body: dict[str, Any]) -> dict:
    """Send one request; the JSON answer, or a StepFailure.

    A POST creates a region each time Grafana receives it, so it is sent again
    only when the last attempt certainly created none; a PATCH may be repeated.
    """
    unresponsive = current().unresponsive_grafana
    if grafana.url in unresponsive:
        raise StepFailure(
            f"Grafana at {grafana.url} did not answer earlier in this run; {method} {url} "
            "was not sent, so the deploy does not wait on it again.",
            "Check Grafana's health; the deploy itself is not affected.",
        )
    retries = web.ANNOTATIONS
    try:
        response = web.request(
            method,
            url,
            retries=retries,
            label="Grafana",
            unacted=_NOT_DONE,
            idempotent=method == "PATCH",
            json=body,
            headers=headers(grafana, token),
        )
    except web.HttpFailure as failure:
        if failure.timed_out:
            unresponsive.add(grafana.url)
        if failure.maybe_received:
            raise _maybe_done(method, url, grafana, failure.reason) from None
        raise StepFailure(
            f"Grafana {method} {url} gave up after {retries.attempts} attempt(s): "
            f"could not connect to {grafana.url} ({failure.reason}).",
            "Grafana may be down or unreachable from here; check its status and the network.",
        ) from None
    if response.status_code >= 500:
        problem = f"{grafana.url} answered {response.status_code} {response.reason}"
        if method == "POST" and response.status_code not in _NOT_DONE:
            # A gateway's error: Grafana behind it may have acted on the request.
            raise _maybe_done(method, url, grafana, problem)
        raise StepFailure(
            f"Grafana {method} {url} gave up: {problem}.",
            "Grafana may be down or unreachable from here; check its status and the network.",
        )
    return _accepted(method, url, grafana, response)


def _maybe_done(method: str, url: str, grafana: Grafana, what: str) -> StepFailure:
    if method != "POST":
        return StepFailure(
            f"Grafana {method} {url} failed: {what}.",
            "Check Grafana's health; the deploy itself is not affected.",
        )
    return StepFailure(
        f"Grafana at {grafana.url} received the annotation but gave no answer ({what}). It may "
        "have created the region all the same; the request was not sent again, so that one "
        "deploy never makes two regions, and such a region stays open (no id came back to "
        "close it).",
        "Check Grafana's health; if an open region for this deploy appears on the dashboard, "
        "end or delete it there.",
    )


def _accepted(method: str, url: str, grafana: Grafana, response: requests.Response) -> dict:
    status = response.status_code
    if status in (401, 403):
        raise StepFailure(
            f"Grafana at {grafana.url} refused the request ({status} {_message(response)}): "
            "the token is invalid or lacks permission to create annotations.",
            "Check the token; the Grafana service account it belongs to needs the Editor role "
            "(or the annotations:write permission) in the organisation of the dashboard.",
        )
    if status == 404 and method == "PATCH":
        raise StepFailure(
            f"Grafana has no annotation at {url} (404): it was deleted, or the token "
            "belongs to another organisation.",
            "Check grafana.org_id in config/environments.yaml.",
        )
    if status != 200:
        raise StepFailure(
            f"Grafana rejected {method} {url} with {status}: {_message(response)}.",
            "Check grafana.url and grafana.dashboard_uid in config/environments.yaml.",
        )
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise StepFailure(
            f"Grafana {method} {url} answered 200 with something other than a JSON object: "
            f"{web.excerpt(response.text)}",
            "Check that grafana.url points at Grafana itself, not at a login page or proxy.",
        )
    return answer


def headers(grafana: Grafana, token: str) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    if grafana.org_id is not None:
        headers["X-Grafana-Org-Id"] = str(grafana.org_id)
    return headers


def _fail_softly(failure: StepFailure, strict: bool, what: str) -> None:
    if strict:
        raise failure
    warn(f"{what}: {failure.why} {failure.fix}".rstrip())


def _base_tags(env: Environment) -> tuple[str, ...]:
    extras = env.grafana.tags if env.grafana else ()
    return tuple(dict.fromkeys(["deployment", env.name, *extras]))


def _describe_deploy(ctx: StepContext, env: Environment) -> str:
    sha, subject = head_commit(ctx)
    lines = [f"Deploy of {sha} to {env.name}" + (f": {subject}" if subject else "")]
    pull_request = pull_request_number(subject)
    if pull_request:
        lines.append(f"Pull request: #{pull_request}")
    lines.append(f"Deployed by: {deployer()}")
    return "\n".join(lines)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _message(response: requests.Response) -> str:
    try:
        answer = response.json()
    except ValueError:
        return web.excerpt(response.text) or response.reason
    if isinstance(answer, dict) and answer.get("message"):
        return str(answer["message"])
    return web.excerpt(response.text)


ANNOTATE_GRAFANA = Step("annotate-grafana", start_region)
