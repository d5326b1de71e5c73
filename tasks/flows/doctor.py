"""`invoke doctor --env=X`: why can't I deploy? Every precondition of a deploy, checked at once.

Each check (tools, secrets, credentials, cluster, namespace, lock, release,
grafana, charts) answers OK, WARN or FAIL, and says what to do when it is not
OK. `deploy` runs the cluster-side part (`preflight`) for every environment of
its chain before it changes anything.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import yaml
from invoke import Context

from tasks.adapters import access, oci, toolchain
from tasks.adapters.secrets_keys import EXPIRY_WARNING_DAYS, check_certificates
from tasks.config.context import StepContext
from tasks.config.registry import Environment, Registry, cluster_kind
from tasks.config.values import is_locked
from tasks.core import diagnoses, web
from tasks.core.errors import CommandFailed, StepFailure, explain
from tasks.core.output import say
from tasks.core.runner import PROJECT_ROOT, Runner
from tasks.core.step import Step
from tasks.flows.pipeline import perform
from tasks.steps import charts, grafana, lock, release, secret_files

OK, WARN, FAIL = "OK", "WARN", "FAIL"


@dataclass(frozen=True)
class Check:
    """One answer of the doctor: what was checked, how it stands, and what to do."""

    subject: str
    status: str  # OK, WARN or FAIL
    detail: str
    fix: str = ""

    def lines(self) -> list[str]:
        lines = [f"{self.status:<4}  {self.subject:<11} {self.detail}"]
        if self.fix and self.status != OK:
            lines.append(f"{'':<17} fix: {self.fix}")
        return lines


def tool_checks(env: Environment | None, registry: Registry) -> list[Check]:
    """A check per tool the environment (or, without one, any environment) needs."""
    found = []
    for name in toolchain.needed(env, registry):
        tool = toolchain.state(name)
        if tool.ok:
            found.append(Check("tools", OK, tool.describe()))
            continue
        system = toolchain.system_tools().get(name)
        # Without --env, a tool only some environments need may be missing here.
        status = WARN if env is None and system is not None and system.needed_by else FAIL
        found.append(Check("tools", status, tool.describe(with_fix=False), tool.fix))
    return found


def locked_files(env: Environment, registry: Registry, root: Path = PROJECT_ROOT) -> list[Path]:
    """Files of the environment's secrets folder still carrying the git-crypt header.

    Another environment's secrets folder nested inside (secrets/demo in secrets)
    is passed over: it is unlocked with another key.
    """
    base = root / env.secrets_dir
    others = [
        root / other.secrets_dir
        for other in registry.environments.values()
        if other.secrets_dir != env.secrets_dir and (root / other.secrets_dir).is_relative_to(base)
    ]
    found = []
    for path in sorted(base.rglob("*")) if base.is_dir() else []:
        if not path.is_file() or any(path.is_relative_to(o) for o in others):
            continue
        if is_locked(path):
            found.append(path.relative_to(root) if path.is_relative_to(root) else path)
    return found


def secrets_checks(env: Environment, registry: Registry, root: Path = PROJECT_ROOT) -> list[Check]:
    locked = locked_files(env, registry, root)
    if locked:
        shown = ", ".join(map(str, locked[:5])) + (" ..." if len(locked) > 5 else "")
        return [
            Check(
                "secrets",
                FAIL,
                f"{len(locked)} file(s) of {env.secrets_dir} are still encrypted: {shown}",
                f"invoke decrypt-secrets --env={env.name}",
            )
        ]
    needed = secret_files.required_files(env)
    bastion = env.bastion
    if bastion is not None:
        needed.append((env.secrets_dir / bastion.key_file, "bastion.key_file"))
    missing = [f"{path} ({entry})" for path, entry in needed if not (root / path).exists()]
    if missing:
        return [
            Check(
                "secrets",
                FAIL,
                "missing: " + "; ".join(missing),
                "Add them under the secrets folder, or fix config/environments.yaml.",
            )
        ]
    return [Check("secrets", OK, f"{env.secrets_dir} unlocked, every needed file present")]


def credential_checks(ctx: StepContext) -> list[Check]:
    """The environment's credential files: present, decrypted, well-formed, not expired."""
    env = ctx.environment
    found: list[Check] = []
    try:
        kubeconfig, shown = cluster_kind(env.cluster.kind).credentials(ctx)
        if kubeconfig is not None:
            found.append(_certificates(ctx, kubeconfig, shown))
        else:
            found.append(Check("credentials", OK, shown))
        bastion = env.bastion
        if bastion is not None:
            access.secret_file(env, bastion.key_file, "bastion.key_file")
            found.append(
                Check(
                    "credentials",
                    OK,
                    f"bastion key {env.secrets_dir / bastion.key_file} for "
                    f"{bastion.user}@{bastion.host}:{bastion.port}",
                )
            )
    except StepFailure as failure:
        found.append(Check("credentials", FAIL, failure.why, failure.fix))
    return found


def _certificates(ctx: StepContext, kubeconfig: Path, shown: str) -> Check:
    try:
        expiring = check_certificates(ctx, PROJECT_ROOT, [kubeconfig])
    except StepFailure as failure:
        return Check("credentials", FAIL, failure.why, failure.fix)
    if expiring:
        return Check(
            "credentials",
            WARN,
            f"{shown}: a client certificate expires within {EXPIRY_WARNING_DAYS} days",
            "Renew it before then.",
        )
    return Check("credentials", OK, f"{shown}: kubeconfig readable, certificates not expired")


def cluster_checks(ctx: StepContext) -> list[Check]:
    """Credentials, the API server, the namespace, the deploy lock and the release.

    What would stop a deploy half-way: prod must not be found locked or stuck
    only after staging was upgraded. Stops at the first failure of the cluster
    or the namespace: what follows could only fail the same way.
    """
    env = ctx.environment
    found = credential_checks(ctx)
    if any(check.status == FAIL for check in found):
        return found
    try:
        with access.open_cluster(ctx) as variables:
            opened = replace(ctx, runner=ctx.runner.with_env(**variables))
            found.append(_reachable(opened.runner, env))
            if found[-1].status != FAIL:
                found.append(_writable(opened.runner, env))
            if found[-1].status != FAIL:
                found.append(_lock_check(opened))
                # Every release: a stuck first one would stop the deploy half-way too.
                found += [
                    _release_check(replace(opened, release=name)) for name in env.release_names()
                ]
    except StepFailure as failure:
        found.append(Check("cluster", FAIL, failure.why, failure.fix))
    return found


def _lock_check(ctx: StepContext) -> Check:
    """No live deploy holds the lock; one asked to wait for it waits here, before any change."""
    env = ctx.environment
    try:
        held = lock.wait_until_free(ctx)
    except StepFailure as failure:
        return Check("lock", FAIL, failure.why.rstrip("."), failure.fix)
    if held is None:
        return Check("lock", OK, f"no deploy of {env.name} holds its deploy lock")
    verdict = lock.judge(held, time.time(), env.name)
    if verdict.takeable:
        return Check("lock", OK, f"{verdict.why}: a deploy takes it over")
    return Check("lock", FAIL, verdict.why, lock.refusal(verdict, env.name).fix)


def _release_check(ctx: StepContext) -> Check:
    env, target = ctx.environment, ctx.target
    status = release.release_status(ctx)
    name = f"release {target.release.name} in {target.namespace}"
    if status in release.PENDING_STATES:
        return Check(
            "release",
            FAIL,
            f"{name} is stuck in {status}: an earlier helm operation was interrupted",
            f"invoke recover-release --env={env.name}"
            + (f" --release {target.release.name}" if env.listed else "")
            + " (after asking, it rolls back to the "
            "last deployed revision, or removes a release that never deployed)",
        )
    return Check("release", OK, f"{name} is {status or 'not installed yet'}")


def _reachable(runner: Runner, env: Environment) -> Check:
    try:
        result = runner.run(
            ["kubectl", "version", "-o", "json", "--request-timeout=10s"],
            quiet=True,
            timeout=30,
        )
    except CommandFailed as failed:
        failure = explain(
            failed, diagnoses.KUBECTL_FAILURES, "kubectl could not reach the API server"
        )
        fix = failure.fix
        when_down = cluster_kind(env.cluster.kind).when_down(env.cluster.fields)
        if when_down and "Start the cluster" in fix:
            fix = when_down
        return Check("cluster", FAIL, failure.why, fix)
    try:
        report = json.loads(result.stdout)
        server = report["serverVersion"]["gitVersion"]
        client = report["clientVersion"]["gitVersion"]
    except (ValueError, KeyError, TypeError):
        return Check("cluster", WARN, "the API server answered, but not with its version")
    skew = abs(_minor(server) - _minor(client))
    if skew > 1:
        return Check(
            "cluster",
            WARN,
            f"API server {server}, kubectl {client}: more than one minor version apart",
            "Pin a kubectl within one minor version of the server in config/tools.yaml.",
        )
    return Check("cluster", OK, f"API server {server} answers (kubectl {client})")


def _minor(version: str) -> int:
    try:
        return int(version.lstrip("v").split(".")[1])
    except (IndexError, ValueError):
        return 0


def _writable(runner: Runner, env: Environment) -> Check:
    namespace = env.target().namespace  # the site's release's
    refused = []
    for verb in ("create", "patch"):
        result = runner.run(
            ["kubectl", "auth", "can-i", verb, "deployments", "-n", namespace],
            quiet=True,
            check=False,
            timeout=30,
        )
        if result.stdout.strip() != "yes":
            refused.append(verb)
    if refused:
        return Check(
            "namespace",
            FAIL,
            f"the credentials may not {' or '.join(refused)} Deployments in {namespace}",
            f"Grant the deployer a Role with create and patch on Deployments in {namespace} "
            "(and whatever else the chart deploys).",
        )
    return Check("namespace", OK, f"may create and patch Deployments in {namespace}")


def grafana_check(env: Environment) -> Check:
    """The annotation token, tried on a read of the annotations API."""
    settings = env.grafana
    if settings is None:
        return Check("grafana", OK, "not configured for this environment; nothing to annotate")
    try:
        token = grafana.read_token(env)
    except StepFailure as failure:
        return Check("grafana", FAIL, failure.why, failure.fix)
    url = f"{settings.url}/api/annotations"
    # Without `strict` an annotation problem only warns during a deploy.
    unreachable = FAIL if settings.strict else WARN
    try:
        response = web.request(
            "GET",
            url,
            retries=web.PROBES,
            label="Grafana",
            params={"limit": 1},
            headers=grafana.headers(settings, token),
        )
    except web.HttpFailure as error:
        return Check(
            "grafana",
            unreachable,
            f"{settings.url} cannot be reached ({error.reason})",
            "Check the URL in config/environments.yaml and the network.",
        )
    if response.status_code in (401, 403):
        return Check(
            "grafana",
            FAIL,
            f"{settings.url} refused the token (HTTP {response.status_code})",
            "Create a new service-account token with the Editor role and put it in "
            + (f"the secrets folder ({settings.token_file})" if settings.token_file else "")
            + (f" or ${settings.token_env}" if settings.token_env else "")
            + ".",
        )
    if response.status_code >= 400:
        return Check(
            "grafana",
            unreachable,
            f"{settings.url} answered HTTP {response.status_code}",
            "Check the URL in config/environments.yaml; Grafana may be having difficulties.",
        )
    return Check("grafana", OK, f"{settings.url} accepts the token")


def _offered(
    dependency: charts.Dependency, mirrors: dict[str, str], indexes: dict[str, dict | str]
) -> tuple[str, set[str] | str]:
    """Where a dependency's versions are listed, and those versions (or why they could not be
    read): a chart repository's index, or an OCI registry's tag list."""
    if dependency.is_oci:
        source = oci.mirrored(dependency.reference, mirrors)
        try:
            return source, set(oci.tags(source))
        except web.HttpFailure as error:
            return source, error.reason
        except (ValueError, StepFailure) as error:
            return source, str(error)
    source = charts.mirrored(dependency.repository, mirrors)
    url = source.rstrip("/") + "/index.yaml"
    if url not in indexes:
        try:
            indexes[url] = yaml.safe_load(web.fetch(url, web.PROBES)) or {}
        except (web.HttpFailure, yaml.YAMLError) as error:
            indexes[url] = str(error)
    index = indexes[url]
    if isinstance(index, str):
        return url, index
    entries = (index.get("entries") or {}).get(dependency.name) or []
    return url, {str(entry.get("version")) for entry in entries}


def chart_checks(registry: Registry, root: Path = PROJECT_ROOT) -> list[Check]:
    """Each chart repository's index (an OCI registry's tag list), through its mirror, listing
    the pinned version: the site chart's dependencies, then the charts releases fetch."""
    chart_dir = root / registry.chart
    try:
        dependencies = [
            (d, chart_dir / "charts" / d.archive) for d in charts.pinned_dependencies(chart_dir)
        ]
    except StepFailure as failure:
        return [Check("charts", FAIL, failure.why, failure.fix)]
    dependencies += [
        (charts.release_dependency(r), root / charts.chart_of(registry, r))
        for r in registry.fetched_releases()
    ]
    found = []
    indexes: dict[str, dict | str] = {}
    checked = set()
    for dependency, archive in dependencies:
        if dependency in checked:
            continue  # a release deploying the chart a dependency brings too
        checked.add(dependency)
        url, offered = _offered(dependency, registry.repository_mirrors, indexes)
        what = f"{dependency.name} {dependency.version} from {url}"
        if isinstance(offered, str):
            fetched = charts.archive_is_valid(archive, dependency)
            found.append(
                Check(
                    "charts",
                    WARN if fetched else FAIL,
                    f"{url} cannot be read ({offered})"
                    + ("; the pinned archive is already here" if fetched else ""),
                    "Check the network, or add a mirror under repository_mirrors in "
                    "config/environments.yaml (or DEPLOY_CHART_MIRRORS).",
                )
            )
            continue
        if dependency.version in offered:
            found.append(Check("charts", OK, f"{what}: listed"))
        else:
            found.append(
                Check(
                    "charts",
                    FAIL,
                    f"{what}: the "
                    + ("registry has no tag for" if dependency.is_oci else "index does not list")
                    + " this version",
                    "Wait until it is published, or pin a version the index lists "
                    "(Chart.yaml and Chart.lock).",
                )
            )
    return found


def diagnose(ctx: StepContext) -> str:
    """Run every check, print a line for each, fail when any says FAIL."""
    env = ctx.env
    found = tool_checks(env, ctx.registry)
    if env is not None:
        found += secrets_checks(env, ctx.registry)
        found += cluster_checks(ctx)
        found.append(grafana_check(env))
    found += chart_checks(ctx.registry)
    for check in found:
        for line in check.lines():
            say(line)
    if env is None:
        say("Pass --env=NAME to check an environment's secrets, cluster and Grafana too.")
    failed = [check for check in found if check.status == FAIL]
    warned = [check for check in found if check.status == WARN]
    if failed:
        raise StepFailure(
            f"{len(failed)} check(s) failed: " + "; ".join(c.detail for c in failed),
            failed[0].fix,
        )
    return f"{len(found)} checks, {len(warned)} warning(s)"


def preflight_checks(ctx: StepContext) -> str:
    """The cluster checks of one environment of a deploy, before it changes anything."""
    env = ctx.environment
    if locked_files(env, ctx.registry):
        # A fresh CI checkout: the deploy's own decrypt-secrets unlocks them, and its
        # steps then meet any cluster problem before changing anything but Grafana.
        say(
            f"{WARN:<4}  {'secrets':<11} still locked: the cluster is checked after decrypt-secrets"
        )
        return "secrets locked; cluster not checked yet"
    found = cluster_checks(ctx)
    for check in found:
        for line in check.lines():
            say(line)
    failed = [check for check in found if check.status == FAIL]
    if failed:
        raise StepFailure(failed[0].detail, failed[0].fix)
    return "cluster reachable, namespace writable, not locked, release not pending"


PREFLIGHT = Step("preflight", preflight_checks)
DOCTOR = Step("doctor", diagnose, needs_env=False)


def preflight(c: Context, env: str | None) -> None:
    """For `deploy`: stop before touching anything when an environment's cluster is not ready."""
    perform(c, PREFLIGHT, env)
