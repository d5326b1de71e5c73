"""The JupyterHub behind the site: its health, and how it answers URLs that lead nowhere."""

from __future__ import annotations

import secrets
from urllib.parse import urlparse

import requests

from tests.smoke.probes import Probe, mentions

# mybinder-style hubs answer these through their own not-found pages;
# JupyterHub's own "not running" page says the latter.
NOT_FOUND_PAGES = ("Binder not found", "not running")


def unused_name() -> str:
    return f"smoke-{secrets.token_hex(6)}"


def answered_by_hub(response: requests.Response) -> str | None:
    """None when the hub (or the site's not-found page), not the proxy, wrote this answer."""
    if "X-JupyterHub-Version" in response.headers:
        return None
    if any(phrase in response.text for phrase in NOT_FOUND_PAGES):
        return None
    return (
        "the answer did not come from the hub (no X-JupyterHub-Version header, no not-found page)"
    )


def test_hub_health(probe: Probe, hub_url: str) -> None:
    """The hub's health endpoint /hub/api/health answers 200."""
    probe.expect(f"{hub_url}/hub/api/health", 200)


def test_missing_user_server(probe: Probe, hub_url: str) -> None:
    """A user URL with no server behind it is answered by the hub: 424 "not running" or its login.

    A proxy still routing to a stopped server answers 503 instead, and a proxy
    that lost its default route 404: both fail here.
    """

    def check(response: requests.Response) -> str | None:
        if response.status_code == 424:
            return mentions(*NOT_FOUND_PAGES)(response)
        if urlparse(response.url).path.startswith(urlparse(f"{hub_url}/hub/").path):
            return answered_by_hub(response)
        return "it ended neither on the not-running page (424) nor on the hub's own pages"

    probe.expect(f"{hub_url}/user/{unused_name()}/", (424, 200), check=check)


def test_unknown_prefix(probe: Probe, hub_url: str) -> None:
    """A URL outside /hub/ and /user/ answers 404 from the hub, not a proxy error."""
    probe.expect(f"{hub_url}/{unused_name()}/doesntexist", 404, check=answered_by_hub)
