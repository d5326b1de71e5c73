"""The pipeline in one screen: deploy, ci and the local demo.

A deploy of an environment is a stage: an invoke task whose pre-tasks are
its gate's stage (staging for prod), then its own steps in the reference
document's order:

    decrypt-secrets -> helm-deps -> [check-promotion] -> lock -> annotate-grafana
                    -> upgrade -> wait-rollout -> smoke-test -> verified

invoke's executor expands the pre-tasks depth first, so the gate's whole
chain, smoke tests included, runs before the first step of the gated
environment, and its de-duplication runs the steps both share
(decrypt-secrets, helm-deps) once. A failing step raises, and nothing after
it starts. The lock (tasks/lock.py) keeps two deploys off one environment;
check-promotion (tasks/promotion.py) keeps a gated environment from
deploying anything its gate did not verify.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from invoke import Call, Collection, Context, Executor, Task, call, task
from invoke.exceptions import Exit

from tasks import (
    charts,
    checkout,
    doctor,
    grafana,
    lock,
    promotion,
    release,
    rollout,
    secrets,
    smoke,
)
from tasks.errors import StepFailure
from tasks.output import folded, say, warn
from tasks.pipeline import StepContext, Stop, confirm, dry_run_asked, invocation, perform
from tasks.registry import Environment, Registry
from tasks.run import current

ENV_STEPS = (grafana.annotate_grafana, release.upgrade, rollout.wait_rollout, smoke.smoke_test)


@dataclass(frozen=True)
class Options:
    """What the operator asked of a deploy, for every stage of it."""

    dry_run: bool = False
    rollback_on_failure: bool = False
    promote_unverified: bool = False


def key_holder(chain: list[Environment], env: Environment) -> str:
    """The first environment of the chain unlocked with the same key and secrets as `env`.

    decrypt-secrets is called with that name, so environments that share a
    key share one call, and invoke's de-duplication runs it once.
    """
    for candidate in chain:
        if (candidate.key, candidate.secrets_dir) == (env.key, env.secrets_dir):
            return candidate.name
    return env.name


@task(help={"env": "Environment whose cluster to check.", "dry_run": "Check nothing."})
def preflight(c: Context, env: str | None = None, dry_run: bool = False) -> None:
    """The cluster-side doctor checks of one environment, before the deploy changes anything."""
    if dry_run:
        say(f"[dry-run] would check the cluster of {env} (invoke doctor --env={env})")
    else:
        doctor.preflight(c, env)


def checks(envs: list[Environment], options: Options) -> list[Call]:
    """Validate every one of `envs`, then check each one's cluster."""
    return [call(charts.validate, env=e.name, dry_run=options.dry_run) for e in envs] + [
        call(preflight, env=e.name, dry_run=options.dry_run) for e in envs
    ]


def own_steps(env: Environment, options: Options) -> list[Call]:
    """An environment's own steps, from check-promotion (if it is gated) to smoke-test."""
    steps = []
    if env.gated_by:
        steps.append(
            call(
                promotion.check_promotion,
                env=env.name,
                dry_run=options.dry_run,
                promote_unverified=options.promote_unverified,
            )
        )
    steps.append(call(lock.take_lock, env=env.name, dry_run=options.dry_run))
    return steps + [call(step, env=env.name, dry_run=options.dry_run) for step in ENV_STEPS]


def stage(
    registry: Registry, env: Environment, options: Options, target: str | None = None
) -> Task:
    """The invoke task that deploys `env`, with its gate's stage as its first pre-task.

    The first stage of a chain unlocks the secrets of every environment the
    deploy of `target` reaches, and validates and checks the clusters of
    every one that may stop it, before it changes anything.
    """
    target = target or env.name
    pre: list[Call | Task] = []
    if env.gated_by:
        pre.append(stage(registry, registry.get(env.gated_by), options, target))
    else:
        chain = registry.chain(target)
        pre += [
            call(secrets.decrypt_secrets, env=key_holder(chain, e), dry_run=options.dry_run)
            for e in chain
        ]
        pre.append(call(charts.helm_deps, dry_run=options.dry_run))
        # Every environment's values render before the first one is touched: a typo in
        # prod's values fails the run before staging is upgraded.
        pre += checks(registry.checked_first(target), options)
    return Task(passed(env, options), name=f"deploy-{env.name}", pre=pre + own_steps(env, options))


def passed(env: Environment, options: Options) -> Callable[[Context], None]:
    """The stage's own body, once its steps passed: record the revision as verified, give the
    lock back, close the Grafana region."""

    def verified(c: Context) -> None:
        perform(
            c,
            "verified",
            env.name,
            record_verified,
            dry_run=options.dry_run,
            needs_cluster=True,
        )
        lock.release_lock(c, env.name, options.dry_run)
        try:
            grafana.close_region(env.name, "success")
        except StepFailure as failure:
            raise Stop("annotate-grafana", env.name, failure) from None
        say(
            f"{env.name}: would be deployed and validated"
            if options.dry_run
            else f"{env.name}: deployed and validated"
        )

    return verified


def record_verified(ctx: StepContext) -> str:
    """The revision passed wait-rollout and smoke-test: remember it, and what it deployed."""
    return f"{release.record_verified(ctx)}; {promotion.record(ctx)}"


def plan(registry: Registry, target: str, dry_run: bool = False) -> list[Call]:
    """Every step call a deploy of `target` makes, in order, shared steps once."""
    final = stage(registry, registry.get(target), Options(dry_run=dry_run))
    executor = Executor(Collection(final))
    return executor.dedupe(executor.expand_calls([Call(final)]))


def run_deploy(
    c: Context,
    target: str | None,
    dry_run: bool,
    yes: bool,
    rollback_on_failure: bool = False,
    promote_unverified: bool = False,
) -> None:
    dry_run = dry_run_asked(c, dry_run, "deploy")
    run = current()
    registry = run.registry
    env = registry.get(target)
    run.target = env.name
    options = Options(dry_run, rollback_on_failure, promote_unverified)
    chain = registry.chain(env.name)
    say("deploy plan: " + " -> ".join(e.name for e in chain))
    asks = env.gated_by and not (yes or dry_run or os.environ.get("CI"))
    question = f"Deploy to {env.name} (after {' -> '.join(e.name for e in chain[:-1])})?"
    if asks and not confirm(question):
        raise Exit("Not confirmed; nothing was deployed. Pass --yes to skip the question.")
    final = stage(registry, env, options)
    # Held from before decrypt-secrets to the end: a second run from this checkout
    # is refused at once instead of racing this one on git-crypt.
    with checkout.held() if not dry_run else nullcontext():
        try:
            with grafana.regions_closed_on_exit():
                Executor(Collection(final), config=c.config).execute(final.name)
        except Stop as stop:
            if rollback_on_failure and not dry_run:
                roll_back_after(c, stop, env.name)
            raise
        finally:
            lock.release_all(c, dry_run)


@task(
    help={
        "env": "The environment to deploy; its gates (e.g. staging for prod) deploy first.",
        "dry_run": "Print every command of every step, in order, secrets masked; touch nothing.",
        "yes": "Do not ask for confirmation before deploying a gated environment.",
        "rollback_on_failure": "Roll the target back if its wait-rollout or smoke-test fails.",
        "promote_unverified": "Deploy gated environments even with what their gate did not "
        "verify (another commit, chart or shared values); the summary says so.",
    }
)
def deploy(
    c: Context,
    env: str | None = None,
    dry_run: bool = False,
    yes: bool = False,
    rollback_on_failure: bool = False,
    promote_unverified: bool = False,
) -> None:
    """Deploy an environment: its gate's full chain first, then its own."""
    with invocation("deploy"):
        run_deploy(c, env, dry_run, yes, rollback_on_failure, promote_unverified)


def roll_back_after(c: Context, stop: Stop, target: str) -> None:
    """Roll the target back after its own rollout or smoke tests failed; report both."""
    if stop.env != target or stop.step not in ("wait-rollout", "smoke-test"):
        return
    warn(f"{stop.step} failed on {target}: rolling {target} back to its last good revision.")
    try:
        with invocation("rollback"):
            perform(c, "rollback", target, release.roll_back_to_last_good, needs_cluster=True)
            rollout.wait_rollout(c, env=target)
    except Stop as failed:
        warn(f"the automatic rollback of {target} did not complete: {failed.failure.why}")
    else:
        warn(f"{target} was rolled back to its last good revision after {stop.step} failed.")
        # The failure's own advice to roll back is done already; what is left is the cause.
        kept = [
            line
            for line in stop.failure.fix.splitlines()
            if f"invoke rollback --env={target}" not in line
        ]
        note = (
            f"{target} was rolled back automatically and runs its last good revision again; "
            f"fix the cause of the {stop.step} failure, then deploy again."
        )
        stop.failure.fix = "\n       ".join(
            part for part in ("\n".join(kept).rstrip(), note) if part
        )


def pull_request_ci() -> bool | None:
    """True on a pull request, False on a branch push, None when not in a known CI."""
    if os.environ.get("GITHUB_EVENT_NAME"):
        return os.environ["GITHUB_EVENT_NAME"] in ("pull_request", "pull_request_target")
    if os.environ.get("TRAVIS_PULL_REQUEST"):
        return os.environ["TRAVIS_PULL_REQUEST"] != "false"
    if os.environ.get("CI_PULL_REQUEST") is not None:
        return os.environ["CI_PULL_REQUEST"] not in ("", "false", "0")
    return None


def ci_branch() -> str:
    for variable in ("GITHUB_REF_NAME", "TRAVIS_BRANCH", "CI_BRANCH"):
        if os.environ.get(variable):
            return os.environ[variable]
    return ""


@task(
    help={
        "env": "Environment a main-branch build deploys (default: prod).",
        "branch": "The branch whose pushes deploy (default: main).",
        "pull_request": "Force pull-request mode (validate only), whatever the CI variables say.",
        "tests": "Run the project's tests in pull-request mode (--no-tests skips them).",
        "rollback_on_failure": "On the main branch, roll the target back if its rollout or "
        "smoke tests fail.",
    }
)
def ci(
    c: Context,
    env: str = "prod",
    branch: str = "main",
    pull_request: bool = False,
    tests: bool = True,
    rollback_on_failure: bool = False,
) -> None:
    """What CI runs: validate offline on pull requests, deploy on the main branch."""
    is_pr = True if pull_request else pull_request_ci()
    with invocation("ci"):
        dry_run_asked(c, None, "ci")
        if is_pr is None:
            say("No CI pull-request variables found: validating only (as for a pull request).")
            is_pr = True
        if is_pr or ci_branch() not in ("", branch):
            validate_offline(c, tests)
            return
        run_deploy(c, env, dry_run=False, yes=True, rollback_on_failure=rollback_on_failure)


def validate_offline(c: Context, tests: bool = True) -> None:
    """The pull-request checks: YAML lint, encrypted paths, helm template, the tests."""
    perform(c, "yaml-lint", None, charts.lint_repository_yaml, needs_env=False)
    secrets.check_secrets(c)
    charts.helm_deps(c)
    charts.validate(c)
    if tests:
        perform(c, "tests", None, run_project_tests, needs_env=False)


def run_project_tests(ctx: StepContext) -> str:
    with folded("pytest"):
        ctx.runner.run(["python", "-m", "pytest", "-q", "-m", "not cluster", "tests"])
    return "project tests passed"


@task(help={"dry_run": "Print the plan; start and deploy nothing."})
def demo(c: Context, dry_run: bool = False) -> None:
    """The whole chain on the local clusters: local-staging, then local-prod."""
    from tasks import chartrepo
    from tasks.cluster import clusters, tools

    with invocation("demo"):
        if dry_run_asked(c, dry_run, "demo"):
            say("[dry-run] would start the local clusters and serve the chart repository's copy")
            run_deploy(c, "local-prod", dry_run=True, yes=True)
            return
        for name in clusters.DEMO_CLUSTERS:
            if not clusters.is_up(name):
                tools.ensure_built(echo=say)
                clusters.up(name, echo=say)
        try:
            folder = chartrepo.mirror_folder()
        except StepFailure as failure:
            warn(f"{failure.why} helm-deps fetches from {chartrepo.UPSTREAM} itself.")
            mirror: AbstractContextManager[str | None] = nullcontext(None)
        else:
            mirror = chartrepo.mirror_upstream(folder)
        with mirror as url:
            if url:
                say(f"chart repository {chartrepo.UPSTREAM}: served from {folder} at {url}")
            run_deploy(c, "local-prod", dry_run=False, yes=True)
