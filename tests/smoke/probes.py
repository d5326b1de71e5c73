"""HTTP checks made the way a visitor makes them, patient with flakes, never with wrong answers.

A request that gets no answer from the site (connection refused, reset or
timed out) or a gateway error (502, 503, 504) instead of what the check looks
for failed for infrastructure reasons: it is tried again, up to the suite's
number of attempts (SMOKE_ATTEMPTS), and the attempts are reported, also when
a later one passes. An answer that is simply wrong is an assertion failure and
decides at once. While a fresh deploy warms up (SMOKE_WARMUP_SECONDS), a proxy
whose routes are not registered yet also answers 403 or 404: those, and every
infrastructure failure, are retried until the warm-up window closes.

A failure names the URL, the status and an excerpt of the body, with secrets
masked; one for infrastructure reasons raises InfrastructureFailure, which the
suite's report records as such (tests/smoke/conftest.py).
"""

from __future__ import annotations

import html
import re
import time
from collections import Counter
from collections.abc import Callable

import pytest
import requests
from pytest_timeout import PYTEST_FAILURE_MESSAGE

from tasks.core.run import current
from tasks.steps.smoke import ASSERTION, ERROR, INFRASTRUCTURE
from tests.smoke.target import Target

# What a proxy answers while its routes are not registered yet.
WARMING_UP = frozenset({403, 404, 502, 503, 504})
# What a proxy or load balancer answers for a backend that does not answer.
GATEWAY_ERRORS = frozenset({502, 503, 504})
# Requests that got no answer at all.
UNANSWERED = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)
# How pytest-timeout's failure of a test that ran out of time begins.
_TEST_TIMEOUT = PYTEST_FAILURE_MESSAGE.split("%", 1)[0]
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


class InfrastructureFailure(pytest.fail.Exception):
    """Every attempt of a request went unanswered or met a gateway error: no answer at all."""


def failure_kind(error: BaseException) -> str:
    """Why a test failed: infrastructure (no answer), assertion (a wrong one) or error (a bug)."""
    if isinstance(error, InfrastructureFailure):
        return INFRASTRUCTURE
    if isinstance(error, pytest.fail.Exception) and str(error).startswith(_TEST_TIMEOUT):
        # The site kept the test waiting past its timeout: an answer that never came.
        return INFRASTRUCTURE
    if isinstance(error, (pytest.fail.Exception, AssertionError)):
        return ASSERTION
    return ERROR


class Attempts:
    """The failed attempts of one request, for its report."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.failures: list[str] = []

    def failed(self, outcome: str) -> None:
        self.failures.append(outcome)

    @property
    def count(self) -> int:
        return len(self.failures)

    def outcomes(self) -> str:
        counted = Counter(self.failures).items()
        return "; ".join(f"{outcome} (x{n})" if n > 1 else outcome for outcome, n in counted)

    def seconds(self) -> str:
        return f"{time.monotonic() - self.started:.1f}s"

    def gave_up(self) -> str:
        """What the failure message adds: nothing for a request tried once."""
        if self.count < 2:
            return ""
        return f"\n  ({self.count} attempts in {self.seconds()}: {self.outcomes()})"

    def passed(self, response: requests.Response) -> str:
        return (
            f"{describe(response)} on attempt {self.count + 1}, after "
            f"{self.outcomes()} ({self.seconds()})"
        )


class Probe:
    """Requests to the site under test, retried when the site does not answer."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.session = requests.Session()
        self.session.headers["User-Agent"] = f"binder-deploy smoke test ({target.env.name})"
        # The current test's requests that passed only after retries (conftest.py reports them).
        self.retried: list[str] = []

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
        attempts = Attempts()
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
            except UNANSWERED as error:
                reason = mask(_reason(error))
                attempts.failed(reason)
                if warming or attempts.count < settings.attempts:
                    time.sleep(settings.retry_seconds)
                    continue
                raise InfrastructureFailure(
                    f"{method} {mask(url)} did not answer: {reason}" + attempts.gave_up(),
                    pytrace=False,
                ) from None
            except requests.RequestException as error:
                pytest.fail(
                    f"{method} {mask(url)} could not be requested: {mask(_reason(error))}",
                    pytrace=False,
                )
            problem = None
            if response.status_code not in wanted:
                problem = f"expected {' or '.join(str(code) for code in wanted)}"
            elif check is not None:
                problem = check(response)
            if problem is None:
                if attempts.count:
                    self.retried.append(attempts.passed(response))
                return response
            gateway = response.status_code in GATEWAY_ERRORS
            attempts.failed(f"{response.status_code} {response.reason}")
            retry = (warming and response.status_code in WARMING_UP) or (
                gateway and attempts.count < settings.attempts
            )
            if retry:
                response.close()
                time.sleep(settings.retry_seconds)
                continue
            message = failure(response, problem) + attempts.gave_up()
            if gateway:
                raise InfrastructureFailure(message, pytrace=False)
            pytest.fail(message, pytrace=False)

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
    for pattern in (
        r"\[Errno -?\d+\] ([^'\")]+)",
        r"RemoteDisconnected\('([^']+)'",
        r"(Read timed out)",
        r"(Connection to \S+ timed out)",
    ):
        found = re.search(pattern, text)
        if found:
            return found.group(1).strip().rstrip(".")
    return text
