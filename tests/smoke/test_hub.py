"""The JupyterHub behind the site: its health, and how it answers URLs that lead nowhere."""

from __future__ import annotations

import secrets
from urllib.parse import urlparse

import requests

from tests.smoke.probes import Probe, mentions

# What real sites answer for a user URL with no server behind it:
#   mybinder.org         its proxy-patches: 503 (or 424) with a "Binder not found" page
#   JupyterHub itself    424 with its "not running" page, for a visitor it knows
#   any other visitor    the hub's own login page: 200, or 403 where visitors cannot
#                        log in (the binderhub chart's null authenticator)
BINDER_NOT_FOUND = "Binder not found"
NOT_RUNNING = "not running"
HUB_HEADER = "X-JupyterHub-Version"


def unused_name() -> str:
    return f"smoke-{secrets.token_hex(6)}"


def answered_by_hub(response: requests.Response) -> str | None:
    """None when the hub (or the site's not-found page), not the proxy, wrote this answer."""
    if HUB_HEADER in response.headers:
        return None
    if any(phrase in response.text for phrase in (BINDER_NOT_FOUND, NOT_RUNNING)):
        return None
    return f"the answer did not come from the hub (no {HUB_HEADER} header, no not-found page)"


def test_hub_health(probe: Probe, hub_url: str) -> None:
    """The hub's health endpoint /hub/api/health answers 200."""
    probe.expect(f"{hub_url}/hub/api/health", 200)


def test_missing_user_server(probe: Probe, hub_url: str) -> None:
    """A user URL with no server behind it is answered by the site: a not-found page or the login.

    Either the site's not-found page (424 or 503, "Binder not found" or "not
    running"), or the hub's own login page (200, or 403 where visitors cannot
    log in). A proxy still routing to a stopped server answers 503 with its own
    error page, and one that lost its route to the hub 404: both fail here.
    """
    login = urlparse(f"{hub_url}/hub/login").path

    def check(response: requests.Response) -> str | None:
        if response.status_code == 503:
            return mentions(BINDER_NOT_FOUND)(response)
        if response.status_code == 424:
            return mentions(BINDER_NOT_FOUND, NOT_RUNNING)(response)
        if urlparse(response.url).path != login:
            return "it ended neither on a not-found page (424, 503) nor on the hub's login page"
        if HUB_HEADER not in response.headers:
            return f"the login page did not come from the hub (no {HUB_HEADER} header)"
        return None

    probe.expect(f"{hub_url}/user/{unused_name()}/", (424, 503, 200, 403), check=check)


def test_unknown_prefix(probe: Probe, hub_url: str) -> None:
    """A URL outside /hub/ and /user/ answers 404 from the hub, not a proxy error."""
    probe.expect(f"{hub_url}/{unused_name()}/doesntexist", 404, check=answered_by_hub)
