"""The pipeline in one screen: deploy, ci and the local demo.

A deploy of an environment is a stage: an invoke task whose pre-tasks are
its gate's stage (staging for prod), then its own steps in order:

    decrypt-secrets -> helm-deps -> [check-promotion] -> lock -> annotate-grafana
                    -> upgrade -> wait-rollout -> smoke-test -> verified

invoke's executor expands the pre-tasks depth first, so the gate's whole
chain, smoke tests included, runs before the first step of the gated
environment, and its de-duplication runs the steps both share
(decrypt-secrets, helm-deps) once. A failing step raises, and nothing after
it starts. The lock (tasks/steps/lock.py) keeps two deploys off one environment;
check-promotion (tasks/steps/promotion.py) keeps a gated environment from
deploying anything its gate did not verify.

A group of the registry (a federation) is deployed by a task whose pre-task
is its gate's stage and whose body deploys every member at once, each in
its own thread with its own stage (tasks/flows/federation.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import groupby

from invoke import Call, Collection, Context, Executor, Task, task
from invoke.exceptions import Exit

from tasks.cli import operate, steps
from tasks.config.context import StepContext, load_registry
from tasks.config.registry import Environment, Group, Registry
from tasks.core import checkout
from tasks.core.errors import StepFailure, Stop
from tasks.core.output import confirm, folded, say
from tasks.core.run import current
from tasks.core.step import Changes, Step
from tasks.flows import cleanup, doctor, federation
from tasks.flows.pipeline import call, chained_task, dry_run_asked, invocation, perform
from tasks.steps import charts, grafana, lock, promotion, release, rollout, secret_files, smoke

# An environment's own steps, in the order its stage runs them. Consecutive steps that run
# per release run in turn for each release of an environment that lists several: each
# release is upgraded, then rolled out, before the next one starts.
STAGE: tuple[Step, ...] = (
    promotion.CHECK_PROMOTION,
    lock.LOCK,
    grafana.ANNOTATE_GRAFANA,
    release.UPGRADE,
    rollout.WAIT_ROLLOUT,
    smoke.SMOKE_TEST,
)
# What `invoke ci` deploys from the main branch: the group of the site's prod members.
CI_TARGET = "federation"


WAIT_HELP = (
    "Wait for a deploy lock another deploy holds, saying who holds it, then take it: "
    "at most SECONDS (alone: as long as the lock can last; 0: do not wait). "
    "Default: wait in CI (CI=true), fail at once elsewhere."
)


@dataclass(frozen=True)
class Options:
    """What the operator asked of a deploy, for every stage of it."""

    dry_run: bool = False
    rollback_on_failure: bool = False
    promote_unverified: bool = False


def key_holder(chain: list[Environment], env: Environment) -> str:
    """The first environment of the chain with the same key and secrets as `env`: the one
    call of decrypt-secrets that invoke's de-duplication runs once for all of them."""
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
    return [call(operate.validate, env=e.name, dry_run=options.dry_run) for e in envs] + [
        call(preflight, env=e.name, dry_run=options.dry_run) for e in envs
    ]


def own_steps(env: Environment, options: Options) -> list[Call]:
    """An environment's own steps (STAGE), as calls of their tasks."""
    stage_steps = [step for step in STAGE if env.gated_by or not step.gated_only]
    calls = []
    for per_release, steps_in_turn in groupby(stage_steps, key=lambda step: step.per_release):
        block = list(steps_in_turn)
        # Each release in turn where the environment lists several; one of a single release
        # is asked without --release, as an operator would.
        named = [{"release": n} for n in env.release_names()] if per_release and env.listed else []
        calls += [
            step_call(step, env.name, options, **release)
            for release in named or [{}]
            for step in block
        ]
    return calls


def step_call(step: Step, env: str, options: Options, **release: str) -> Call:
    """A call of `step`'s task on `env` (`release=NAME`: on one of its releases), with the
    deploy's options that the step takes."""
    taken = {option: getattr(options, option) for option in step.takes}
    return call(steps.task_of(step), env=env, dry_run=options.dry_run, **release, **taken)


def stage(
    registry: Registry, env: Environment, options: Options, target: str | None = None
) -> Task:
    """The invoke task that deploys `env`, with its gate's stage as its first pre-task.

    The first stage of a chain unlocks the secrets of every environment the deploy
    of `target` reaches, and checks every one that may stop it, before any change.
    """
    target = target or env.name
    pre: list[Call | Task] = []
    if env.gated_by:
        pre.append(stage(registry, registry.get(env.gated_by), options, target))
    else:
        chain = registry.chain(target)
        decrypt = steps.task_of(secret_files.DECRYPT_SECRETS)
        pre += [call(decrypt, env=key_holder(chain, e), dry_run=options.dry_run) for e in chain]
        pre.append(call(steps.task_of(charts.HELM_DEPS), dry_run=options.dry_run))
        # Every environment's values render before the first one is touched: a typo in
        # prod's values fails the run before staging is upgraded.
        pre += checks(registry.checked_first(target), options)
    return chained_task(passed(env, options), f"deploy-{env.name}", pre + own_steps(env, options))


def member_stage(env: Environment, options: Options, experimental: bool) -> Task:
    """A member's stage inside a federation, its gate having passed; an experimental member
    validates and checks its cluster first, where failing stops only itself."""
    first = checks([env], options) if experimental else []
    return chained_task(passed(env, options), f"deploy-{env.name}", first + own_steps(env, options))


def passed(env: Environment, options: Options) -> Callable[[Context], None]:
    """The stage's own body, once its steps passed: record the revision as verified, give the
    lock back, close the Grafana region."""

    def verified(c: Context) -> None:
        perform(c, VERIFIED, env.name, dry_run=options.dry_run)
        cleanup.release_lock(c, env.name, options.dry_run)
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
    """The revision passed wait-rollout and smoke-test: remember it, and, beside the last
    release of the environment, what the environment deployed."""
    if ctx.target.release != ctx.environment.releases[-1]:
        return release.record_verified(ctx)
    return f"{release.record_verified(ctx)}; {promotion.record(ctx)}"


VERIFIED = Step(
    "verified", record_verified, Changes.BOOKKEEPING, needs_cluster=True, per_release=True
)


def federation_task(registry: Registry, group: Group, options: Options) -> Task:
    """The task that deploys a group: its gate's stage first, then every member at once."""

    def deploy_members(c: Context) -> None:
        federation.deploy_members(
            c,
            group,
            lambda member: member_stage(
                registry.get(member), options, group.is_experimental(member)
            ),
            dry_run=options.dry_run,
            rollback_on_failure=options.rollback_on_failure,
        )

    gate = registry.get(group.gate)
    return chained_task(
        deploy_members, f"deploy-{group.name}", [stage(registry, gate, options, group.name)]
    )


def final_task(registry: Registry, target: str, options: Options) -> Task:
    what = registry.target(target)
    if isinstance(what, Group):
        return federation_task(registry, what, options)
    return stage(registry, what, options)


def plan(registry: Registry, target: str, dry_run: bool = False) -> list[Call]:
    """Every step call a deploy of `target` makes (a group's: up to its members), in order,
    shared steps once."""
    final = final_task(registry, target, Options(dry_run=dry_run))
    executor = Executor(Collection(final))
    return executor.dedupe(executor.expand_calls([Call(final)]))


def describe_plan(registry: Registry, target: str) -> str:
    group = registry.group(target)
    if group is None:
        return " -> ".join(e.name for e in registry.chain(target))
    members = [m + (" (experimental)" if group.is_experimental(m) else "") for m in group.members]
    gates = " -> ".join(e.name for e in registry.chain(group.gate))
    return f"{gates} -> then at once: {', '.join(members)}"


def run_deploy(
    c: Context,
    target: str | None,
    dry_run: bool,
    yes: bool,
    rollback_on_failure: bool = False,
    promote_unverified: bool = False,
    wait_for_lock: bool | str | None = None,
) -> None:
    dry_run = dry_run_asked(c, dry_run, "deploy")
    run = current()
    run.wait_for_lock = lock.wait_asked(wait_for_lock)
    registry = load_registry()
    what = registry.target(target)
    run.target = what.name
    options = Options(dry_run, rollback_on_failure, promote_unverified)
    say("deploy plan: " + describe_plan(registry, what.name))
    if isinstance(what, Group):
        # Named from the start: a gate that fails leaves each member "not started".
        run.summary.members_of(what)
    gate = what.gate if isinstance(what, Group) else what.gated_by
    asks = gate and not (yes or dry_run or os.environ.get("CI"))
    after = " -> ".join(e.name for e in registry.chain(gate)) if gate else ""
    if asks and not confirm(f"Deploy to {what.name} (after {after})?"):
        raise Exit("Not confirmed; nothing was deployed. Pass --yes to skip the question.")
    final = final_task(registry, what.name, options)
    # Held from before decrypt-secrets to the end: a second run from this checkout
    # is refused at once instead of racing this one on git-crypt.
    with (
        checkout.held() if not dry_run else nullcontext(),
        cleanup.closed_on_exit(
            c, what.name, dry_run=dry_run, rollback_on_failure=rollback_on_failure
        ),
    ):
        Executor(Collection(final), config=c.config).execute(final.name)


@task(
    help={
        "env": "The environment or group to deploy; its gates (e.g. staging for prod) "
        "deploy first, then a group's members all at once.",
        "dry_run": "Print every command of every step, in order, secrets masked; touch nothing.",
        "yes": "Do not ask for confirmation before deploying a gated environment.",
        "rollback_on_failure": "Roll the target (each member of a group) back if its "
        "wait-rollout or smoke-test fails.",
        "promote_unverified": "Deploy gated environments even with what their gate did not "
        "verify (another commit, chart or shared values); the summary says so.",
        "wait_for_lock": WAIT_HELP,
    },
    optional=["wait_for_lock"],
)
def deploy(
    c: Context,
    env: str | None = None,
    dry_run: bool = False,
    yes: bool = False,
    rollback_on_failure: bool = False,
    promote_unverified: bool = False,
    wait_for_lock: str | None = None,
) -> None:
    """Deploy an environment (its gate's full chain first, then its own) or a group."""
    with invocation("deploy"):
        run_deploy(c, env, dry_run, yes, rollback_on_failure, promote_unverified, wait_for_lock)


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
    names = ("GITHUB_REF_NAME", "TRAVIS_BRANCH", "CI_BRANCH")
    return next((os.environ[name] for name in names if os.environ.get(name)), "")


@task(
    help={
        "env": "Environment or group a main-branch build deploys (default: the group "
        f"{CI_TARGET}, which holds prod).",
        "branch": "The branch whose pushes deploy (default: main).",
        "pull_request": "Force pull-request mode (validate only), whatever the CI variables say.",
        "tests": "Run the project's tests in pull-request mode (--no-tests skips them).",
        "rollback_on_failure": "On the main branch, roll the target (each member of a group) "
        "back if its rollout or smoke tests fail.",
        "wait_for_lock": WAIT_HELP,
    },
    optional=["wait_for_lock"],
)
def ci(
    c: Context,
    env: str = CI_TARGET,
    branch: str = "main",
    pull_request: bool = False,
    tests: bool = True,
    rollback_on_failure: bool = False,
    wait_for_lock: str | None = None,
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
        run_deploy(
            c,
            env,
            dry_run=False,
            yes=True,
            rollback_on_failure=rollback_on_failure,
            wait_for_lock=wait_for_lock,
        )


def validate_offline(c: Context, tests: bool = True) -> None:
    """The pull-request checks: YAML lint, encrypted paths, helm template, the tests."""
    perform(c, charts.YAML_LINT, None)
    operate.check_secrets(c)
    steps.helm_deps(c)
    operate.validate(c)
    if tests:
        perform(c, Step("tests", run_project_tests, needs_env=False), None)


def run_project_tests(ctx: StepContext) -> str:
    with folded("pytest"):
        ctx.runner.run(["python", "-m", "pytest", "-q", "-m", "not cluster", "tests"])
    return "project tests passed"
