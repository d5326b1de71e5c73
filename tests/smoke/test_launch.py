"""A launch as a visitor makes one: through BinderHub's build event stream to a running server."""

from __future__ import annotations

import pytest

from tests.smoke.launches import check_server_api, launch, shut_down, stop_quietly
from tests.smoke.probes import Probe
from tests.smoke.target import Target


@pytest.mark.timeout(600)
def test_launch(probe: Probe, target: Target, binder_url: str, time_budget: float) -> None:
    """A known repository launches through the build event stream and its server's API answers."""
    server = launch(probe, binder_url, target.launch_spec, time_budget)
    try:
        check_server_api(probe, server)
    except BaseException:
        stop_quietly(probe, server)
        raise
    shut_down(probe, server)
