"""The federation redirector, where the environment serves one."""

from __future__ import annotations

import requests

from tests.smoke.probes import Probe


def test_active_hosts(probe: Probe, federation_url: str) -> None:
    """The federation redirector lists its active hosts at /active_hosts as JSON."""

    def lists_hosts(response: requests.Response) -> str | None:
        try:
            answer = response.json()
        except ValueError:
            return "the answer is not JSON"
        if not isinstance(answer, dict) or "active_hosts" not in answer:
            return "the JSON has no 'active_hosts'"
        return None

    probe.expect(f"{federation_url}/active_hosts", 200, check=lists_hosts)
