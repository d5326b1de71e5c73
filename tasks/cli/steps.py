"""The steps of a deploy as invoke tasks, each of which also runs alone, for debugging.

Each task is thin: it hands its step (tasks/core/step.py) and the task's
options to `perform`, which times, reports and explains it
(tasks/flows/pipeline.py). A step with options of its own has its task here;
any other gets one made from the step itself (`task_of`).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from invoke import Context, Task, task

from tasks.adapters import toolchain
from tasks.core.step import Step
from tasks.flows.pipeline import as_task, perform
from tasks.steps import charts, grafana, lock, promotion, rollout, secret_files, smoke
from tasks.steps import release as release_step

ENV_HELP = "Environment from config/environments.yaml (an unknown name lists the known ones)."
DRY_RUN_HELP = "Print every command that would run, secrets masked; touch nothing."
RELEASE_HELP = (
    "For an environment with several releases: this one only (default: every one, in order)."
)


@task(
    help={
        "env": "Check the tools this environment needs (default: those of every environment).",
        "source": "Where helm and kubectl come from: auto (download, else the Go build), "
        "download, or go.",
        "check": "Only report; install nothing. Fails when a tool is missing or wrong.",
        "dry_run": "Say what would be installed; install nothing.",
    }
)
def tools(
    c: Context,
    env: str | None = None,
    source: str = "auto",
    check: bool = False,
    dry_run: bool = False,
) -> None:
    """Install helm and kubectl at their pinned versions; check git-crypt and gcloud."""
    perform(c, toolchain.TOOLS, env, dry_run=dry_run, source=source, check=check)


@task(
    help={
        "env": "Environment from config/environments.yaml.",
        "dry_run": "Print the commands; change nothing.",
    }
)
def decrypt_secrets(c: Context, env: str | None = None, dry_run: bool = False) -> None:
    """Unlock secrets/ with the environment's git-crypt key, then check the result."""
    perform(c, secret_files.DECRYPT_SECRETS, env, dry_run=dry_run)


@task(help={"dry_run": "Print what would be fetched; fetch nothing."})
def helm_deps(c: Context, dry_run: bool = False) -> None:
    """Fetch the chart's dependencies at exactly the versions Chart.lock pins."""
    perform(c, charts.HELM_DEPS, None, dry_run=dry_run)


@task(
    help={
        "env": "The gated environment (a member) about to be deployed.",
        "dry_run": "Say what would be compared; read no cluster.",
        "promote_unverified": "Deploy even what the gate did not verify; the summary says so.",
    }
)
def check_promotion(
    c: Context, env: str | None = None, dry_run: bool = False, promote_unverified: bool = False
) -> None:
    """Check that a gated environment deploys exactly what its gate (staging) verified."""
    perform(
        c, promotion.CHECK_PROMOTION, env, dry_run=dry_run, promote_unverified=promote_unverified
    )


@task(
    name="lock",
    help={"env": "Environment to lock.", "dry_run": "Print the commands; lock nothing."},
)
def take_lock(c: Context, env: str | None = None, dry_run: bool = False) -> None:
    """Take the environment's deploy lock (a step of `deploy`; `invoke unlock` removes it)."""
    perform(c, lock.LOCK, env, dry_run=dry_run)


@task(
    help={
        "env": "The environment being deployed, as named in config/environments.yaml.",
        "dry_run": "Print the request that would be sent (token masked); send nothing.",
        "strict": "Fail the step when the annotation cannot be created "
        "(default: warn and go on; `grafana.strict` in the registry does the same).",
    }
)
def annotate_grafana(
    c: Context, env: str | None = None, dry_run: bool = False, strict: bool = False
) -> None:
    """Open a Grafana annotation region marking this deploy's start."""
    perform(c, grafana.ANNOTATE_GRAFANA, env, dry_run=dry_run, strict=strict)


@task(
    help={
        "env": ENV_HELP,
        "timeout": "Seconds helm may spend on the upgrade (default: the environment's "
        "timeouts.upgrade in config/environments.yaml).",
        "dry_run": DRY_RUN_HELP,
        "promote_unverified": "For a gated environment: upgrade even to what its gate "
        "(staging) did not verify; the summary says so.",
        "release": RELEASE_HELP,
    }
)
def upgrade(
    c: Context,
    env: str | None = None,
    timeout: int | None = None,
    dry_run: bool = False,
    promote_unverified: bool = False,
    release: str | None = None,
) -> None:
    """helm upgrade --install the environment's chart(s) with their layered values."""
    perform(
        c,
        release_step.UPGRADE,
        env,
        dry_run=dry_run,
        release=release,
        timeout=timeout,
        promote_unverified=promote_unverified,
    )


@task(
    help={
        "env": "Environment to wait for (from config/environments.yaml).",
        "timeout": "Seconds to wait for everything, overall (default: the environment's "
        "timeouts.rollout).",
        "unschedulable_grace": f"Seconds a pod may stay unschedulable before the step fails "
        f"(default {rollout.UNSCHEDULABLE_GRACE:g}).",
        "dry_run": "Print the commands and requests instead of running them.",
        "release": "For an environment with several releases: this one's namespace only "
        "(default: every one's, in order).",
    }
)
def wait_rollout(
    c: Context,
    env: str | None = None,
    timeout: int | None = None,
    unschedulable_grace: float | None = None,
    dry_run: bool = False,
    release: str | None = None,
) -> None:
    """Wait until every Deployment, DaemonSet and StatefulSet of the release has rolled out."""
    perform(
        c,
        rollout.WAIT_ROLLOUT,
        env,
        dry_run=dry_run,
        release=release,
        timeout=rollout.seconds(timeout, "--timeout"),
        unschedulable_grace=rollout.seconds(unschedulable_grace, "--unschedulable-grace"),
    )


@task(
    help={
        "env": "Environment from config/environments.yaml whose deployment to validate.",
        "keyword": "Only the tests matching this pytest -k expression (e.g. 'hub or binder').",
        "warmup": "Seconds during which answers such as 503 from a fresh proxy are retried "
        f"(default {smoke.DEFAULT_WARMUP_SECONDS}).",
        "attempts": "How often a request that got no answer or a 502/503/504 is tried in all "
        f"(default {smoke.DEFAULT_ATTEMPTS}); a wrong answer is never tried again.",
        "report": "Where to write the JUnit XML report (default reports/smoke-<env>.xml).",
        "dry_run": "Print the pytest command that would run; run nothing.",
    }
)
def smoke_test(
    c: Context,
    env: str | None = None,
    keyword: str | None = None,
    warmup: float | None = None,
    attempts: int | None = None,
    report: str | None = None,
    dry_run: bool = False,
) -> None:
    """Validate a deployment: HTTP checks of the site, a launch, a fresh build, cluster checks."""
    perform(
        c,
        smoke.SMOKE_TEST,
        env,
        dry_run=dry_run,
        keyword=keyword,
        warmup=warmup,
        attempts=attempts,
        report=Path(report).resolve() if report else None,
    )


# The steps whose tasks take options of their own, with those tasks.
TASKS: dict[Step, Task] = {
    step: as_task(made)
    for step, made in (
        (toolchain.TOOLS, tools),
        (secret_files.DECRYPT_SECRETS, decrypt_secrets),
        (charts.HELM_DEPS, helm_deps),
        (promotion.CHECK_PROMOTION, check_promotion),
        (lock.LOCK, take_lock),
        (grafana.ANNOTATE_GRAFANA, annotate_grafana),
        (release_step.UPGRADE, upgrade),
        (rollout.WAIT_ROLLOUT, wait_rollout),
        (smoke.SMOKE_TEST, smoke_test),
    )
}


@cache
def task_of(step: Step) -> Task:
    """The invoke task of `step`: its own, or one made from the step, which takes --env,
    --dry-run and, for a step that runs per release, --release. Made once, so that the
    chain's calls of it are one call to invoke, which runs a shared step once."""
    if step in TASKS:
        return TASKS[step]
    if step.takes:
        # The chain would call the made task with options it does not accept.
        raise TypeError(
            f"step {step.name!r} takes deploy options ({', '.join(step.takes)}): give it a "
            "task of its own in TASKS (tasks/cli/steps.py) that accepts them"
        )

    def body(c: Context, env: str | None = None, dry_run: bool = False) -> None:
        perform(c, step, env, dry_run=dry_run)

    def per_release(
        c: Context, env: str | None = None, dry_run: bool = False, release: str | None = None
    ) -> None:
        perform(c, step, env, dry_run=dry_run, release=release)

    chosen = per_release if step.per_release else body
    chosen.__doc__ = step.summary or f"The {step.name} step of a deploy."
    options = {"env": ENV_HELP, "dry_run": DRY_RUN_HELP}
    if step.per_release:
        options["release"] = RELEASE_HELP
    return Task(chosen, name=step.name, help=options)
