"""The deploy lock is taken over only when nobody else took it first."""

import time

import pytest

from tasks import lock

pytestmark = pytest.mark.cluster


def test_taking_over_an_expired_lock_loses_to_a_deploy_that_took_it_first(site_env):
    ctx = site_env()
    lock.acquire(ctx, "first deploy")
    stale = lock.read_lock(ctx)
    stale["data"]["expires"] = "0"

    # Another deploy takes the lock over between our read and our write.
    assert lock.take_over(ctx, lock.read_lock(ctx), {"holder": "second deploy", "expires": "9"})
    assert not lock.take_over(ctx, stale, {"holder": "third deploy", "expires": "9"})
    assert lock.current_lock(ctx)["holder"] == "second deploy"


def test_a_lock_is_released_only_by_its_holder(site_env):
    ctx = site_env()
    lock.acquire(ctx, "someone else")
    lock.release(ctx, "me")
    assert lock.current_lock(ctx)["holder"] == "someone else"
    lock.release(ctx, "someone else")
    assert lock.current_lock(ctx) is None


def test_the_lock_outlives_a_deploy_and_its_rollback(site_env):
    ctx = site_env()
    lock.acquire(ctx, "me")
    timeouts = ctx.environment.timeouts
    expires = int(lock.current_lock(ctx)["expires"])
    assert expires - time.time() > timeouts.upgrade + 2 * timeouts.rollout + timeouts.smoke
