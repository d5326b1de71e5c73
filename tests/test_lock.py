"""The deploy lock is taken over only when its holder is surely gone, and nobody took it first."""

import os
import subprocess
import sys
import time

import pytest
from invoke import Context

from tasks.config.context import StepContext, load_registry
from tasks.core.errors import StepFailure
from tasks.core.runner import Runner
from tasks.steps import lock


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


def test_wait_for_lock_defaults_to_waiting_in_ci_only(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    assert lock.wait_asked(None) is False
    monkeypatch.setenv("CI", "true")
    assert lock.wait_asked(None) is True
    assert lock.wait_asked(True) is True
    assert lock.wait_asked("90") == 90
    assert lock.wait_asked("0") is False
    with pytest.raises(StepFailure, match="--wait-for-lock=soon is not a number of seconds"):
        lock.wait_asked("soon")


def test_a_live_lock_names_the_commit_its_holder_deploys():
    verdict = lock.judge(lock_data(int(NOW) + 600, commit="1a2b3c4"), NOW, "prod")
    assert verdict.running and "deploying 1a2b3c4" in verdict.why


def waiting_context() -> StepContext:
    registry = load_registry()
    return StepContext(
        Context(), registry, registry.get("local-staging"), Runner(Context()), False, "lock"
    )


def test_a_bounded_wait_says_who_holds_the_lock_then_fails_naming_them(capsys):
    held = lock_data(int(time.time()) + 600, commit="1a2b3c4")
    waiting = lock.LockWait(waiting_context(), 0.2)
    waiting.pause(held)
    said = capsys.readouterr().out
    assert "waiting for the deploy lock of local-staging: held by octocat on CI run 7" in said
    assert "deploying 1a2b3c4" in said
    while waiting.waited < 0.2:
        time.sleep(0.05)
    with pytest.raises(StepFailure) as failed:
        waiting.pause(held)
    assert "for the deploy lock of local-staging, and it is still held by octocat" in str(
        failed.value
    )
    assert "1a2b3c4" in failed.value.why and "--wait-for-lock" in failed.value.fix
    # The wait so far counts against the next one of the same environment in this run.
    with pytest.raises(StepFailure):
        lock.LockWait(waiting_context(), 0.2).pause(held)
