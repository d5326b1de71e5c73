"""BinderHub's own pages: the home page, its health, its not-found answer, the badges."""

from __future__ import annotations

import secrets

import pytest
import requests

from tests.smoke.probes import Probe, mentions
from tests.smoke.target import Target


def test_binder_page(probe: Probe, binder_url: str) -> None:
    """The binder home page answers 200 and offers to launch a GitHub repository."""
    probe.expect(f"{binder_url}/", 200, check=mentions("GitHub"))


def test_binder_health(probe: Probe, binder_url: str) -> None:
    """BinderHub's /health answers 200 and reports every check it counts as ok."""

    def all_ok(response: requests.Response) -> str | None:
        try:
            report = response.json()
        except ValueError:
            return "the answer is not JSON"
        # BinderHub reports some checks (the pod quota) for information only and
        # marks them _ignore_failure; its overall "ok" leaves them out, and so does this.
        failing = [
            str(check.get("service", check))
            for check in report.get("checks", [])
            if isinstance(check, dict)
            and not check.get("ok", False)
            and not check.get("_ignore_failure", False)
        ]
        if report.get("ok") is not True or failing:
            return f"BinderHub reports unhealthy: {', '.join(failing) or 'ok is not true'}"
        return None

    # An unhealthy BinderHub answers 503 with its report: read it to name what fails.
    probe.expect(f"{binder_url}/health", (200, 503), check=all_ok)


def test_unknown_provider(probe: Probe, binder_url: str) -> None:
    """A build request naming an unknown repository provider is refused on its event stream.

    BinderHub's pages answer 200 for any path (its launch page routes in the
    browser), so the refusal shows on the build endpoint: a `failed` event
    saying no provider matches, and no build.
    """
    provider = f"nope-{secrets.token_hex(4)}"
    refusal = f"No provider found for prefix {provider}"
    probe.expect(
        f"{binder_url}/build/{provider}/some/repo/HEAD",
        200,
        headers={"Accept": "text/event-stream"},
        check=mentions(refusal),
    )


@pytest.mark.parametrize("badge", ["badge_logo.svg", "badge.svg"])
def test_badge(probe: Probe, target: Target, badge: str) -> None:
    """The launch badge that READMEs embed answers 200 as an SVG image."""
    url = target.url("binder")
    target.require("static-files")

    def is_svg(response: requests.Response) -> str | None:
        if "<svg" not in response.text:
            return "the body is not an SVG image"
        return None

    probe.expect(f"{url}/{badge}", 200, check=is_svg)
