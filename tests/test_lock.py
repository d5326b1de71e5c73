"""The deploy lock is taken over only when its holder is surely gone, and nobody took it first."""

import os
import subprocess
import sys
import time

import pytest

from tasks import lock


@pytest.mark.cluster
def test_taking_over_an_expired_lock_loses_to_a_deploy_that_took_it_first(site_env):
    ctx = site_env()
    lock.acquire(ctx, "first deploy")
    stale = lock.read_lock(ctx)
    stale["data"]["expires"] = "0"

    # Another deploy takes the lock over between our read and our write.
    assert lock.take_over(ctx, lock.read_lock(ctx), {"holder": "second deploy", "expires": "9"})
    assert not lock.take_over(ctx, stale, {"holder": "third deploy", "expires": "9"})
    assert lock.current_lock(ctx)["holder"] == "second deploy"


@pytest.mark.cluster
def test_a_lock_is_released_only_by_its_holder(site_env):
    ctx = site_env()
    lock.acquire(ctx, "someone else")
    lock.release(ctx, "me")
    assert lock.current_lock(ctx)["holder"] == "someone else"
    lock.release(ctx, "someone else")
    assert lock.current_lock(ctx) is None


@pytest.mark.cluster
def test_the_lock_outlives_a_deploy_and_its_rollback(site_env):
    ctx = site_env()
    lock.acquire(ctx, "me")
    timeouts = ctx.environment.timeouts
    expires = int(lock.current_lock(ctx)["expires"])
    assert expires - time.time() > timeouts.upgrade + 2 * timeouts.rollout + timeouts.smoke


NOW = 1_800_000_000.0


def lock_data(expires: object, **more: str) -> dict[str, str]:
    return {
        "holder": "octocat on CI run 7",
        "started": "2027-01-15T10:00:00+00:00",
        "expires": str(expires),
        **more,
    }


def test_a_live_lock_is_refused_with_its_holder_and_time_left():
    verdict = lock.judge(lock_data(int(NOW) + 600), NOW, "prod")
    assert not verdict.takeable
    assert "octocat on CI run 7" in verdict.why and "about 10 min" in verdict.why


def test_an_expired_lock_may_be_taken_over():
    assert lock.judge(lock_data(int(NOW) - 1), NOW, "prod").takeable


def test_an_unreadable_expiry_is_explained_and_never_taken_over():
    verdict = lock.judge(lock_data("next tuesday"), NOW, "prod")
    assert not verdict.takeable
    assert "its expiry ('next tuesday') is not a time this pipeline wrote" in verdict.why
    assert "invoke unlock --env=prod" in lock.refusal(verdict, "prod").fix


def exited_process_identity() -> str:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    identity = lock.process_identity(child.pid)
    child.kill()
    child.wait()
    assert identity is not None
    return identity


def test_a_lock_whose_process_ended_on_this_machine_may_be_taken_over():
    verdict = lock.judge(lock_data(int(NOW) + 600, process=exited_process_identity()), NOW, "prod")
    assert verdict.takeable
    assert "is no longer running on this machine" in verdict.why


def test_a_lock_whose_pid_now_belongs_to_another_program_may_be_taken_over():
    # The pid of a live process, recorded with another start time: the holder ended,
    # and its pid was given to the process that runs now.
    boot, namespace, pid, started = lock.process_identity(os.getpid()).split("/")
    reused = f"{boot}/{namespace}/{pid}/{int(started) - 1}"
    verdict = lock.judge(lock_data(int(NOW) + 600, process=reused), NOW, "prod")
    assert verdict.takeable
    assert "that pid now belongs to another program" in verdict.why


def test_a_live_process_or_another_machines_is_never_judged_dead():
    mine = lock.process_identity(os.getpid())
    assert not lock.judge(lock_data(int(NOW) + 600, process=mine), NOW, "prod").takeable
    elsewhere = "another-boot/4026531836/1/1"
    assert not lock.judge(lock_data(int(NOW) + 600, process=elsewhere), NOW, "prod").takeable
