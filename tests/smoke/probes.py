"""HTTP checks made the way a visitor makes them, patient while a fresh deploy warms up.

A proxy that has just restarted answers 403, 404 or 503 until its routes are
registered again; those answers (and refused connections) are retried until
the warm-up window closes. After that, one answer decides. A failure names
the URL, the status and an excerpt of the body, with secrets masked.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable

import pytest
import requests

from tasks.run import current
from tests.smoke.target import Target

WARMING_UP = frozenset({403, 404, 502, 503, 504})
_EXCERPT_CHARS = 300
_TOKEN_PATTERNS = (
    re.compile(r"(token=)[^&\s\"']+", re.IGNORECASE),
    re.compile(r"(\"token\"\s*:\s*\")[^\"]+"),
    re.compile(r"(authorization:\s*token\s+)\S+", re.IGNORECASE),
)
_INVISIBLE = re.compile(r"<(script|style)\b.*?</\1>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]+>")

# Given an answer whose status is right, says what else is wrong with it (None: nothing).
Check = Callable[[requests.Response], str | None]


def mask(text: str) -> str:
    """Hide the environment's secrets and any token from text about to be shown."""
    for pattern in _TOKEN_PATTERNS:
        text = pattern.sub(lambda found: found.group(1) + "********", text)
    return current().masker.mask(text)


def excerpt(response: requests.Response) -> str:
    """The start of a body as a human reads it: markup removed, whitespace folded."""
    text = response.text
    if "html" in response.headers.get("Content-Type", ""):
        text = html.unescape(_TAG.sub(" ", _INVISIBLE.sub(" ", text)))
    text = " ".join(text.split())
    if len(text) > _EXCERPT_CHARS:
        text = text[:_EXCERPT_CHARS] + " ..."
    return mask(text) or "(empty)"


def describe(response: requests.Response) -> str:
    """`GET <url> answered <status>`, naming where redirects led."""
    request = response.history[0].request if response.history else response.request
    where = mask(str(request.url))
    if response.history:
        where += f" (redirected to {mask(response.url)})"
    return f"{request.method} {where} answered {response.status_code} {response.reason}"


def failure(response: requests.Response, problem: str) -> str:
    return f"{describe(response)}: {problem}\n  body: {excerpt(response)}"


class Probe:
    """Requests to the site under test, retried while the deploy warms up."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.session = requests.Session()
        self.session.headers["User-Agent"] = f"binder-deploy smoke test ({target.env.name})"

    def expect(
        self,
        url: str,
        status: int | tuple[int, ...],
        *,
        method: str = "GET",
        check: Check | None = None,
        headers: dict[str, str] | None = None,
        follow_redirects: bool = True,
        stream: bool = False,
        read_seconds: float | None = None,
    ) -> requests.Response:
        """The answer to `method url` once it has `status` and passes `check`; else fail.

        With `stream`, the body is left unread and each read may wait up to
        `read_seconds` (by default the suite's stall limit): the caller follows
        it as it arrives.
        """
        settings = self.target.settings
        wanted = (status,) if isinstance(status, int) else status
        started = time.monotonic()
        while True:
            warming = time.monotonic() < self.target.warm_until
            try:
                response = self.session.request(
                    method,
                    url,
                    headers=headers,
                    allow_redirects=follow_redirects,
                    stream=stream,
                    timeout=(settings.request_seconds, read_seconds or settings.stall_seconds)
                    if stream
                    else settings.request_seconds,
                )
            except requests.RequestException as error:
                if warming:
                    time.sleep(settings.retry_seconds)
                    continue
                pytest.fail(
                    f"{method} {mask(url)} did not answer: {mask(_reason(error))}"
                    + _waited(started),
                    pytrace=False,
                )
            problem = None
            if response.status_code not in wanted:
                problem = f"expected {' or '.join(str(code) for code in wanted)}"
            elif check is not None:
                problem = check(response)
            if problem is None:
                return response
            if warming and response.status_code in WARMING_UP:
                time.sleep(settings.retry_seconds)
                continue
            pytest.fail(failure(response, problem) + _waited(started), pytrace=False)

    def close(self) -> None:
        self.session.close()


def mentions(*phrases: str) -> Check:
    """A check that the body mentions at least one of `phrases`."""

    def check(response: requests.Response) -> str | None:
        if any(phrase in response.text for phrase in phrases):
            return None
        wanted = " or ".join(repr(p) for p in phrases)
        return f"the body does not mention {wanted}"

    return check


def _reason(error: requests.RequestException) -> str:
    # urllib3 nests the useful part ("Connection refused") deep inside its message.
    text = str(error)
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    return found.group(1).strip() if found else text


def _waited(started: float) -> str:
    waited = time.monotonic() - started
    return f"\n  (retried for {waited:.0f}s while the deploy warmed up)" if waited >= 1 else ""
