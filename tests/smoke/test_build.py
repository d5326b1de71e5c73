"""A forced fresh build: a commit BinderHub has never seen is built, pushed and launched."""

from __future__ import annotations

import time

import pytest

from tests.smoke.launches import (
    check_server_api,
    launch,
    scratch_branch,
    shut_down,
    stop_quietly,
)
from tests.smoke.probes import Probe
from tests.smoke.target import Target


@pytest.mark.timeout(900)
def test_fresh_build(probe: Probe, target: Target, binder_url: str, time_budget: float) -> None:
    """A new commit on a scratch repository builds, launches, and its server's API answers."""
    key = target.require_push_key()
    branch = f"smoke-{target.env.name}-{int(time.time())}"
    with scratch_branch(target.scratch_remote, branch, key):
        server = launch(probe, binder_url, f"{target.scratch_spec}/{branch}", time_budget)
        try:
            # An image BinderHub already has starts the stream at `built`; a build, at `waiting`.
            if server.phases[:1] == ["built"]:
                pytest.fail(
                    f"BinderHub launched {branch} without building it (phases: "
                    f"{', '.join(server.phases)}): the scratch commit was not new to it",
                    pytrace=False,
                )
            check_server_api(probe, server)
        except BaseException:
            stop_quietly(probe, server)
            raise
        shut_down(probe, server)
