"""The one HTTP door: retries, Retry-After, what is never sent twice, masking."""

import time

import pytest

from tasks.core import web
from tasks.core.masking import MASK
from tasks.core.run import current
from tests.fakes.downloads import FileServer


@pytest.fixture
def server():
    with FileServer() as files:
        yield files


def test_a_server_error_is_retried_and_a_refusal_is_not(server: FileServer) -> None:
    server.add("/chart.tgz", b"chart")
    server.fail("/chart.tgz", 503, times=2)

    assert web.fetch(server.url + "/chart.tgz") == b"chart"
    assert server.hits["/chart.tgz"] == 3

    with pytest.raises(web.HttpFailure, match="HTTP 404"):
        web.fetch(server.url + "/missing.tgz")
    assert server.hits["/missing.tgz"] == 1


def test_retries_give_up_naming_the_answer_and_the_attempts(server: FileServer) -> None:
    server.fail("/index.yaml", 502, times=10)

    with pytest.raises(web.HttpFailure) as failed:
        web.fetch(server.url + "/index.yaml")

    assert failed.value.reason == "HTTP 502 Bad Gateway (after 4 attempts)"
    assert server.hits["/index.yaml"] == 4


def test_retry_after_is_honoured(server: FileServer) -> None:
    server.add("/index.yaml", b"entries: {}")
    server.fail("/index.yaml", 429, times=1, retry_after=1)

    started = time.monotonic()
    assert web.fetch(server.url + "/index.yaml") == b"entries: {}"

    # The pipeline's own pause is 0.01s in tests: only the server's Retry-After explains 1s.
    assert time.monotonic() - started >= 0.9


def test_a_post_is_not_sent_again_after_an_answer_it_may_have_acted_on(
    server: FileServer,
) -> None:
    server.fail("/api/annotations", 502, times=3)

    response = web.request(
        "POST", server.url + "/api/annotations", retries=web.ANNOTATIONS, label="Grafana"
    )

    assert response.status_code == 502
    assert server.hits["/api/annotations"] == 1


def test_a_server_that_cannot_be_reached_was_certainly_not_sent_anything() -> None:
    with FileServer() as gone:
        url = gone.url + "/api/annotations"

    with pytest.raises(web.HttpFailure) as failed:
        web.request("POST", url, retries=web.ANNOTATIONS, label="Grafana")

    assert failed.value.reason == "connection failed"
    assert not failed.value.maybe_received


def test_the_dry_run_shows_the_request_with_credentials_and_secrets_hidden(
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret = "s3cr3t-value-of-the-site"
    current().masker.register(secret)

    web.dry_run(
        "POST",
        f"https://grafana.example.org/api/annotations?key={secret}",
        {"Authorization": "Bearer tok", "Accept": "application/json"},
        {"text": f"deploy with {secret}"},
    )

    out = capsys.readouterr().out
    assert secret not in out and "tok" not in out
    assert "[dry-run] POST https://grafana.example.org/api/annotations" in out
    assert f"[dry-run]   Authorization: Bearer {MASK}" in out


def test_a_retry_after_beyond_the_budget_is_not_waited_out(server: FileServer) -> None:
    server.add("/index.yaml", b"entries: {}")
    server.fail("/index.yaml", 503, times=1, retry_after=3600)
    within_a_second = web.Retries(attempts=2, first_pause=0.01, timeout=5.0, budget=1.0)

    started = time.monotonic()
    assert web.fetch(server.url + "/index.yaml", within_a_second) == b"entries: {}"

    assert time.monotonic() - started < 60
