"""The tasks for seeing and undoing: validate, diff, rollback, recover-release, doctor, the
deploy lock's and the secrets' upkeep."""

from __future__ import annotations

from invoke import Context, task
from invoke.exceptions import Exit

from tasks.cli.steps import DRY_RUN_HELP, ENV_HELP, RELEASE_HELP, wait_rollout
from tasks.config.context import StepContext, load_registry, releases_of
from tasks.core.errors import StepFailure, Stop
from tasks.core.output import confirm, say
from tasks.core.step import Step
from tasks.flows import doctor as doctor_checks
from tasks.flows.pipeline import invocation, perform
from tasks.steps import charts, lock, secret_files
from tasks.steps import release as release_step


@task(
    help={
        "env": "Validate this environment only (default: every environment in the registry).",
        "dry_run": "Check the values files; print the helm commands instead of running them.",
    }
)
def validate(c: Context, env: str | None = None, dry_run: bool = False) -> None:
    """Check values files and render + lint the chart per environment, offline."""
    with invocation("validate"):
        names = [env] if env else list(load_registry().environments)
        failed: list[Stop] = []
        for name in names:
            for release in releases_of(name, None):
                try:
                    perform(c, charts.VALIDATE, name, dry_run=dry_run, release=release)
                except Stop as stop:
                    failed.append(stop)
        if len(failed) == 1:
            raise failed[0]
        if failed:
            raise Stop(
                "validate",
                ", ".join(stop.env for stop in failed),
                StepFailure(
                    f"{len(failed)} environments do not validate.",
                    "Fix each one listed above; `invoke validate --env=X` checks one.",
                    details="\n".join(
                        f"{stop.env}{' release ' + stop.release if stop.release else ''}: "
                        f"{stop.failure.why}"
                        for stop in failed
                    ),
                ),
            )


@task(help={"env": ENV_HELP, "release": RELEASE_HELP})
def diff(c: Context, env: str | None = None, release: str | None = None) -> None:
    """Show what an upgrade would change, resource by resource, Secrets masked (exit 2 if any)."""
    changes: list[str] = []

    def show(ctx: StepContext) -> str:
        found = release_step.diff_release(ctx)
        for chunk in found:
            say(chunk)
        changes.extend(found)
        return f"{len(found)} resource(s) would change" if found else "no change"

    with invocation("diff"):
        perform(c, Step("diff", show, needs_cluster=True, per_release=True), env, release=release)
    if changes:
        raise Exit(code=2)


@task(
    help={
        "env": ENV_HELP,
        "revision": "Revision to roll back to (default: the last one a deploy verified); "
        "with several releases, only with --release.",
        "dry_run": DRY_RUN_HELP,
        "release": "For an environment with several releases: this one only (default: every "
        "one, the last deployed first).",
    }
)
def rollback(
    c: Context,
    env: str | None = None,
    revision: int | None = None,
    dry_run: bool = False,
    release: str | None = None,
) -> None:
    """Roll the release(s) back, each followed by its rollout."""
    with invocation("rollback"):
        target = release_step.revision_number(revision)
        names = releases_of(env, release)
        if target is not None and len(names) > 1:
            raise StepFailure(
                f"{env} has several releases ({', '.join(map(str, names))}); a revision "
                "number belongs to one of them.",
                f"Name it: invoke rollback --env={env} --release NAME --revision {target}",
            )
        for name in reversed(names):
            perform(c, release_step.ROLLBACK, env, dry_run=dry_run, release=name, revision=target)
            wait_rollout(c, env=env, dry_run=dry_run, release=name)


@task(
    help={
        "env": ENV_HELP,
        "yes": "Do not ask for confirmation.",
        "dry_run": DRY_RUN_HELP,
        "release": RELEASE_HELP,
    }
)
def recover_release(
    c: Context,
    env: str | None = None,
    yes: bool = False,
    dry_run: bool = False,
    release: str | None = None,
) -> None:
    """Unlock a release stuck in pending-*: roll back to the last deployed revision."""
    with invocation("recover-release"):
        perform(
            c,
            release_step.RECOVER_RELEASE,
            env,
            dry_run=dry_run,
            release=release,
            approve=lambda question: yes or confirm(question),
        )


@task
def check_secrets(c: Context) -> None:
    """Fail if anything under secrets/ is, or would be, committed in plaintext."""
    perform(c, secret_files.CHECK_SECRETS, None)


@task(
    help={
        "env": "Lock only this environment's git-crypt key (default: every key).",
        "dry_run": "Print the commands; change nothing.",
    }
)
def lock_secrets(c: Context, env: str | None = None, dry_run: bool = False) -> None:
    """Encrypt secrets/ in the working tree again, refusing to lose uncommitted work."""
    perform(c, secret_files.LOCK_SECRETS, env, dry_run=dry_run)


@task(help={"env": "The environment to check (without it: the tools and chart repositories)."})
def doctor(c: Context, env: str | None = None) -> None:
    """Why can't I deploy? Check tools, secrets, credentials, cluster, Grafana and charts."""
    perform(c, doctor_checks.DOCTOR, env)


# Operators know it as `invoke unlock`; in the code "unlock" is git-crypt's word alone.
@task(
    name="unlock",
    help={
        "env": "Environment whose deploy lock to remove.",
        "dry_run": "Say what would be removed; remove nothing.",
    },
)
def remove_lock(c: Context, env: str | None = None, dry_run: bool = False) -> None:
    """Remove an environment's deploy lock left by a deploy that died."""
    perform(c, lock.REMOVE_LOCK, env, dry_run=dry_run)
