"""The one door through which the pipeline speaks HTTP.

Retries, timeouts, secret masking and dry-run hook in here once (the smoke
suite, a pytest process of its own, has its own probe). Retries are urllib3's
`Retry`: it honours `Retry-After`, and never sends again a request the server
may have acted on unless the method is idempotent: a POST that timed out could
otherwise open a second Grafana region that nothing would ever close.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from tasks.core.masking import MASK
from tasks.core.output import say
from tasks.core.run import current

# Answers by which a server says it is (for now) unable to act, so trying again later may work.
RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Retries:
    """How hard to try one request: attempts, first pause (doubled after each further
    failure), seconds per attempt, and an optional budget for all of them together."""

    attempts: int
    first_pause: float
    timeout: float
    budget: float | None = None

    @property
    def pauses(self) -> tuple[float, ...]:
        """The pauses between attempts, for a retry loop outside HTTP (helm's OCI pulls)."""
        return tuple(self.first_pause * 2**n for n in range(self.attempts - 1))


# The settings of every kind of request, in one place. The budget also bounds how long a
# server's Retry-After is waited for.
DOWNLOADS = Retries(attempts=4, first_pause=1.0, timeout=20.0, budget=120.0)  # charts, tools
PROBES = Retries(attempts=2, first_pause=1.0, timeout=10.0, budget=30.0)  # the doctor's checks
ANNOTATIONS = Retries(attempts=3, first_pause=1.0, timeout=10.0, budget=15.0)  # Grafana
NOTICES = Retries(attempts=2, first_pause=1.0, timeout=10.0, budget=20.0)  # the chat


class HttpFailure(Exception):
    """A request that got no usable answer; `reason` is short and masked. `maybe_received` is
    False only when no connection was made, so the server certainly did not act on it."""

    def __init__(self, reason: str, maybe_received: bool, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.maybe_received = maybe_received
        self.timed_out = timed_out


class _Retry(Retry):
    """urllib3's Retry, which also says each retry and keeps to a deadline."""

    label = ""
    deadline: float | None = None
    # Statuses by which the server says it did not act: retried whatever the method.
    unacted: frozenset[int] = frozenset()

    def new(self, **kwargs: Any) -> _Retry:
        retry = super().new(**kwargs)
        retry.label, retry.deadline, retry.unacted = self.label, self.deadline, self.unacted
        return retry

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if status_code in self.unacted and self.total:
            return True
        return super().is_retry(method, status_code, has_retry_after)

    def get_retry_after(self, response: Any) -> float | None:
        wait = super().get_retry_after(response)
        if wait is None or self.deadline is None:
            return wait
        return min(wait, max(self.deadline - time.monotonic(), 0.0))

    def is_exhausted(self) -> bool:
        late = self.deadline is not None and time.monotonic() + self.get_backoff_time() >= (
            self.deadline
        )
        return late or super().is_exhausted()

    def increment(
        self, method: str | None = None, url: str | None = None, *args: Any, **kwargs: Any
    ) -> Retry:
        retry = super().increment(method, url, *args, **kwargs)
        last = retry.history[-1] if retry.history else None
        if last is not None:
            problem = f"HTTP {last.status}" if last.status else _reason(last.error)
            done = len(retry.history) + 1
            say(f"{self.label}: {problem}; retrying ({done}/{done + (retry.total or 0)})")
        return retry


def loopback_session() -> requests.Session:
    """A session for a server on this machine (`kubectl proxy`): no proxy, no retries."""
    # An HTTP(S)_PROXY meant for the outside world must not capture loopback traffic.
    client = requests.Session()
    client.trust_env = False
    return client


def request(
    method: str,
    url: str,
    *,
    retries: Retries,
    label: str,
    unacted: frozenset[int] = frozenset(),
    idempotent: bool = False,
    **kwargs: Any,
) -> requests.Response:
    """Send one request with retries; the last answer, whatever its status.

    Raises HttpFailure when no answer came. After a status in `unacted` even a
    POST is sent again; `idempotent` marks this method (a PATCH, say) safe to repeat.
    """
    retry = _Retry(
        total=retries.attempts - 1,
        other=0,
        status_forcelist=RETRIED_STATUSES,
        allowed_methods=Retry.DEFAULT_ALLOWED_METHODS | ({method.upper()} if idempotent else set()),
        backoff_factor=retries.first_pause / 2,
        raise_on_status=False,
        raise_on_redirect=False,
    )
    retry.label, retry.unacted = label, unacted
    timeout = retries.timeout
    if retries.budget is not None:
        retry.deadline = time.monotonic() + retries.budget
        timeout = min(timeout, retries.budget)
    try:
        with requests.Session() as client:
            client.mount("http://", HTTPAdapter(max_retries=retry))
            client.mount("https://", HTTPAdapter(max_retries=retry))
            return client.request(method, url, timeout=timeout, **kwargs)
    except requests.RequestException as error:
        cause = _cause(error)
        raise HttpFailure(
            _reason(cause, timeout), _maybe_received(cause), _timed_out(cause)
        ) from None


def fetch(url: str, retries: Retries | None = None) -> bytes:
    """GET `url`'s content, retried as `retries` (DOWNLOADS) says; HttpFailure names the last
    problem and the attempts made."""
    retries = retries or DOWNLOADS
    try:
        response = request("GET", url, retries=retries, label=f"  {mask(url)}")
    except HttpFailure as failure:
        raise HttpFailure(
            f"{failure.reason} (after {retries.attempts} attempts)", failure.maybe_received
        ) from None
    if response.status_code < 400:
        return response.content
    status = f"HTTP {response.status_code} {response.reason}"
    if response.status_code in RETRIED_STATUSES:
        status += f" (after {retries.attempts} attempts)"
    raise HttpFailure(status, maybe_received=True)


def dry_run(method: str, url: str, headers: dict[str, str] | None = None, body: Any = None) -> None:
    """Say the request a real run would send: its headers, credentials hidden, and its body."""
    say(f"[dry-run] {method} {mask(url)}")
    for name, value in (headers or {}).items():
        if name.lower() == "authorization":
            # Replaced outright: the masker ignores values too short to mask safely.
            value = f"{value.split(' ')[0]} {MASK}"
        say(f"[dry-run]   {name}: {mask(value)}")
    if body is not None:
        for line in json.dumps(body, indent=2).splitlines():
            say(f"[dry-run]   {mask(line)}")


def excerpt(value: object, limit: int = 200) -> str:
    """An answer's text on one line, cut to `limit` characters, secrets masked."""
    text = " ".join(mask(str(value)).split())
    return text if len(text) <= limit else text[:limit] + "..."


def mask(text: str) -> str:
    return current().masker.mask(text)


def _cause(error: requests.RequestException) -> BaseException:
    """What went wrong under requests' wrapping of urllib3's MaxRetryError, when it wraps one."""
    reason = getattr(error.args[0], "reason", None) if error.args else None
    return reason if isinstance(reason, BaseException) else error


def _maybe_received(cause: BaseException) -> bool:
    # urllib3's NewConnectionError is a ConnectTimeoutError: no connection, nothing sent.
    return not isinstance(cause, requests.ConnectTimeout | urllib3.exceptions.ConnectTimeoutError)


def _timed_out(cause: BaseException | None) -> bool:
    return isinstance(cause, requests.ReadTimeout | urllib3.exceptions.ReadTimeoutError)


def _reason(cause: BaseException | None, timeout: float | None = None) -> str:
    """What went wrong, in a few words, secrets masked."""
    text = str(cause)
    if _timed_out(cause):
        return f"no answer within {timeout:g}s" if timeout else "timed out"
    if "Name or service not known" in text or "getaddrinfo" in text or "NameResolution" in text:
        return "DNS lookup failed"
    if isinstance(cause, urllib3.exceptions.NewConnectionError):
        return "connection failed"
    if isinstance(cause, requests.Timeout | urllib3.exceptions.TimeoutError):
        return "timed out"
    if isinstance(cause, requests.ConnectionError | urllib3.exceptions.HTTPError):
        return "the connection broke"
    return mask(type(cause).__name__)
