"""The steps of a deploy as invoke tasks, each of which also runs alone, for debugging.

Each task is thin: it hands its step's domain function (tasks/steps/) to
`perform`, which times, reports and explains it (tasks/flows/pipeline.py).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from invoke import Context, task

from tasks.adapters import toolchain
from tasks.config.context import releases_of
from tasks.flows.pipeline import perform
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
    perform(
        c,
        "tools",
        env,
        partial(toolchain.ensure_tools, source=source, check=check),
        dry_run=dry_run,
        needs_env=False,
    )


@task(
    help={
        "env": "Environment from config/environments.yaml.",
        "dry_run": "Print the commands; change nothing.",
    }
)
def decrypt_secrets(c: Context, env: str | None = None, dry_run: bool = False) -> None:
    """Unlock secrets/ with the environment's git-crypt key, then check the result."""
    perform(c, "decrypt-secrets", env, secret_files.unlock, dry_run=dry_run, changes_checkout=True)


@task(help={"dry_run": "Print what would be fetched; fetch nothing."})
def helm_deps(c: Context, dry_run: bool = False) -> None:
    """Fetch the chart's dependencies at exactly the versions Chart.lock pins."""
    perform(
        c,
        "helm-deps",
        None,
        charts.build_dependencies,
        dry_run=dry_run,
        needs_env=False,
        changes_checkout=True,
    )


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
        c,
        "check-promotion",
        env,
        lambda ctx: promotion.check(ctx, promote_unverified),
        dry_run=dry_run,
    )


@task(help={"env": "Environment to lock.", "dry_run": "Print the commands; lock nothing."})
def take_lock(c: Context, env: str | None = None, dry_run: bool = False) -> None:
    """Take the environment's deploy lock (a step of `deploy`)."""
    perform(c, "lock", env, lock.take, dry_run=dry_run, needs_cluster=True)


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
    perform(
        c, "annotate-grafana", env, partial(grafana.start_region, strict=strict), dry_run=dry_run
    )


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
    for name in releases_of(env, release):
        perform(
            c,
            "upgrade",
            env,
            lambda ctx: release_step.upgrade_release(ctx, timeout, promote_unverified),
            dry_run=dry_run,
            needs_cluster=True,
            release=name,
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
    for name in releases_of(env, release):
        perform(
            c,
            "wait-rollout",
            env,
            lambda ctx: rollout.wait(
                ctx,
                rollout.seconds(timeout, "--timeout"),
                rollout.seconds(unschedulable_grace, "--unschedulable-grace"),
            ),
            dry_run=dry_run,
            needs_cluster=True,
            release=name,
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
        "smoke-test",
        env,
        lambda ctx: smoke.check_deployment(
            ctx,
            keyword=keyword,
            warmup=warmup,
            attempts=attempts,
            report=Path(report).resolve() if report else None,
        ),
        dry_run=dry_run,
        needs_cluster=True,
    )
