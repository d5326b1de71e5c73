"""The helm release of an environment: upgrade, diff, rollback, recovery.

`upgrade` is `helm upgrade --install --cleanup-on-fail` with the layered
values and no helm-side wait: waiting is wait-rollout's job, because
cancelling helm during its own wait strands resources. Before it touches the
cluster it checks everything it can locally, and a release left pending by
an interrupted deploy is caught before helm trips over it.
"""

from __future__ import annotations

import base64
import difflib
import gzip
import hashlib
import hmac
import json
import os
import re
import secrets as secrets_module
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from tasks.adapters import configmaps, helm
from tasks.adapters.helm import shown
from tasks.adapters.secrets_keys import check_certificates
from tasks.config import values as values_module
from tasks.config.context import StepContext
from tasks.config.registry import Release
from tasks.core import diagnoses
from tasks.core.errors import CommandFailed, Interrupted, StepFailure, explain
from tasks.core.output import say
from tasks.core.run import current
from tasks.core.runner import PROJECT_ROOT
from tasks.core.step import Changes, Step
from tasks.steps import crds, lock, promotion, rollout_status, secret_files
from tasks.steps.charts import archive_is_valid, chart_of, pinned_dependencies, schema_failure

PENDING_STATES = ("pending-install", "pending-upgrade", "pending-rollback")


def explain_helm_failure(ctx: StepContext, failed: CommandFailed, fallback: str) -> StepFailure:
    """A failed helm release operation (upgrade, diff, rollback, ...), explained."""
    env = ctx.environment
    failure = explain(failed, diagnoses.for_env(diagnoses.HELM_FAILURES, env.name), fallback)
    if re.search(diagnoses.CREDENTIALS_REFUSED, failed.output):
        expired = expired_certificate(ctx)
        if expired is not None:
            expired.details = failure.details
            return expired
    return failure


def expired_certificate(ctx: StepContext) -> StepFailure | None:
    """The expiry of the kubeconfig's client certificate, when that is why the cluster refused.

    A step run alone has not been through decrypt-secrets' or preflight's
    certificate checks; the cluster only says it wants credentials.
    """
    kubeconfig = ctx.runner.env.get("KUBECONFIG")
    if not kubeconfig:
        return None
    try:
        check_certificates(ctx, PROJECT_ROOT, [Path(kubeconfig)])
    except StepFailure as failure:
        return failure if "expired" in failure.why else None
    return None


def check_ready_to_deploy(ctx: StepContext) -> list[Path]:
    """What upgrade assumes has run before it: secrets unlocked, deps built, values sane."""
    target = ctx.target
    env = ctx.environment
    files = target.values_files()
    locked = [p for p in files if values_module.is_locked(p)]
    if locked and ctx.dry_run:
        # decrypt-secrets, earlier in a real run, would have unlocked them.
        say(f"[dry-run] {', '.join(shown(p) for p in locked)} still encrypted; not checked")
    elif not ctx.dry_run:
        secret_files.require_unlocked(env)
    readable = [p for p in files if p not in locked]
    values_module.refuse(
        values_module.check_files(readable, PROJECT_ROOT),
        f"problem(s) in the values files of {env.name}; nothing was deployed.",
    )
    chart = chart_of(ctx.registry, target.release)
    if chart.suffix == ".tgz":
        if not (PROJECT_ROOT / chart).is_file() and not ctx.dry_run:
            raise StepFailure(
                f"The chart of release {target.release.name}, {target.release.reference}, "
                f"is not fetched: {chart} is missing.",
                "Run `invoke helm-deps` first (deploy runs it for you).",
            )
        return files
    chart_dir = PROJECT_ROOT / chart
    missing = [
        d.archive
        for d in pinned_dependencies(chart_dir)
        if not archive_is_valid(chart_dir / "charts" / d.archive, d)
    ]
    if missing and not ctx.dry_run:
        raise StepFailure(
            f"The chart's dependencies are not built: {', '.join(missing)} missing from "
            f"{chart}/charts/.",
            "Run `invoke helm-deps` first (deploy runs it for you).",
        )
    return files


def _read_release(ctx: StepContext, command: str) -> Any:
    """`helm <command>` of the release as JSON; None when it was never installed."""
    try:
        result = ctx.runner.run(helm.read(ctx.target, command), quiet=True)
    except CommandFailed as failed:
        if "not found" in failed.output:
            return None
        raise explain_helm_failure(
            ctx, failed, f"helm could not read the release's {command}"
        ) from None
    return None if result.dry_run else json.loads(result.stdout)


# helm keeps each revision of a release in a Secret of the release's namespace, labelled
# with the release's name, the revision's number and its status (its default storage;
# HELM_DRIVER names another). kubectl reads them without helm's own start-up, which
# costs a third of a second each time a step asks.
HELM_STORAGE = ("secret", "secrets")


def _revisions(ctx: StepContext, output: str) -> str:
    """kubectl's `--output` of the release's revision Secrets ("" in a dry run)."""
    target = ctx.target
    selector = f"owner=helm,name={target.release.name}"
    command = ["kubectl", "--namespace", target.namespace, "get", "secrets", "-l", selector]
    try:
        result = ctx.runner.run([*command, "--output", output], quiet=True)
    except CommandFailed as failed:
        why = "The release's revisions could not be read"
        raise explain_helm_failure(ctx, failed, why) from None
    return "" if result.dry_run else result.stdout


def stored_release(ctx: StepContext) -> Any:
    """The release's latest revision, as `helm status --output json` gives it; None when
    it was never installed."""
    if os.environ.get("HELM_DRIVER", "secret") not in HELM_STORAGE:
        return _read_release(ctx, "status")
    found = _revisions(ctx, "json")
    revisions = json.loads(found).get("items") or [] if found else []
    if not revisions:
        return None
    latest = max(revisions, key=lambda item: int(item["metadata"]["labels"].get("version", 0)))
    # The Secret's data is base64, of helm's own base64 of the gzipped release.
    stored = base64.b64decode(base64.b64decode(latest["data"]["release"]))
    return json.loads(gzip.decompress(stored) if stored[:2] == b"\x1f\x8b" else stored)


def latest_revision(ctx: StepContext) -> tuple[int, str] | None:
    """The release's latest revision and its helm status, or None when it was never
    installed: read from the labels alone."""
    if os.environ.get("HELM_DRIVER", "secret") not in HELM_STORAGE:
        status = _read_release(ctx, "status")
        return (int(status["version"]), status["info"]["status"]) if status else None
    # Each revision as VERSION=STATUS, blank-separated: one line on any screen.
    labels = "jsonpath={range .items[*]}{.metadata.labels.version}={.metadata.labels.status} {end}"
    found = [record.partition("=") for record in _revisions(ctx, labels).split()]
    revisions = [(int(version), status) for version, _, status in found if version.isdigit()]
    return max(revisions) if revisions else None


def release_status(ctx: StepContext) -> str | None:
    """The release's helm status, or None when it was never installed."""
    latest = latest_revision(ctx)
    return latest[1] if latest else None


def refuse_if_pending(ctx: StepContext) -> None:
    target = ctx.target
    status = release_status(ctx)
    if status in PENDING_STATES:
        env = ctx.environment
        raise StepFailure(
            f"The release {target.release.name} in namespace {target.namespace} is stuck in "
            f"{status}: an earlier helm operation was interrupted and still holds the "
            "release's lock.",
            f"Run `invoke recover-release --env={env.name}`: it rolls back to the last "
            "deployed revision (or removes a release that never deployed), after asking.",
        )


def release_aftermath(ctx: StepContext, action: str) -> tuple[str, str]:
    """What helm left of the release after `action` was stopped half-way.

    Returns what to tell the operator, and what the next run must deal with
    ("" when nothing).
    """
    target = ctx.target
    env = ctx.environment
    name = f"release {target.release.name} in {target.namespace}"
    try:
        status = _read_release(ctx, "status")
    except (StepFailure, KeyboardInterrupt) as error:
        why = error.why if isinstance(error, StepFailure) else "interrupted again"
        return (
            f"The state of {name} after the {action} could not be read ({why}).",
            f"possibly {name} in a pending state: if `helm status {target.release.name} "
            f"--namespace {target.namespace}` says pending-*, run invoke recover-release "
            f"--env={env.name}",
        )
    if status is None:
        if action == "uninstall":
            return f"The uninstall had finished: {name} is gone.", ""
        return f"helm stopped before creating {name}: nothing was installed.", ""
    state, revision = status["info"]["status"], status.get("version")
    if state in PENDING_STATES:
        return (
            f"helm was stopped before it could finish the {action}: {name} is stuck in "
            f"{state} (revision {revision}), and helm refuses every operation on it until "
            f"`invoke recover-release --env={env.name}` has run.",
            f"{name}, stuck in {state}: invoke recover-release --env={env.name}",
        )
    way_back = (
        f"Deploy again, or return to the last verified revision: invoke rollback --env={env.name}"
    )
    if state == "failed":
        if revision == 1:
            way_back = "Deploy again: it is the release's first revision, with none to return to."
        return (
            f"helm cancelled the {action}: {name} is marked failed at revision {revision}, "
            f"and the cluster may run part of it. {way_back}",
            "",
        )
    return (
        f"The {action} had finished: {name} is {state} at revision {revision}, not verified. "
        + way_back,
        "",
    )


def _change_release(
    ctx: StepContext,
    command: list[str],
    action: str,
    *,
    timeout: float | None = None,
    files: list[Path] | None = None,
    hooks_wait: int | None = None,
) -> None:
    """Run a helm command that changes the release; an interrupt or a kill says what it left.

    `hooks_wait` is helm's own --timeout, which bounds its wait for hook Jobs.
    """
    try:
        ctx.runner.run(command, timeout=timeout)
    except KeyboardInterrupt:
        raise Interrupted(*release_aftermath(ctx, action)) from None
    except CommandFailed as failed:
        failure = _diagnose_change(ctx, failed, action, files or [], hooks_wait)
        if failed.exit_code < 0:
            aftermath, left_behind = release_aftermath(ctx, action)
            failure.fix = f"{aftermath} {failure.fix}".strip()
            if left_behind:
                current().summary.leave_behind(left_behind)
        raise failure from None


def _diagnose_change(
    ctx: StepContext,
    failed: CommandFailed,
    action: str,
    files: list[Path],
    hooks_wait: int | None,
) -> StepFailure:
    """A schema refusal, a hook Job that did not complete, or a known helm failure."""
    chart = PROJECT_ROOT / chart_of(ctx.registry, ctx.target.release)
    refused = (
        schema_failure(failed.output, files, chart, ctx.environment.name)
        if chart.is_dir()
        else None
    )
    if refused:
        return refused
    hook = HOOK_NOT_READY.search(failed.output)
    if hook and hooks_wait is not None:
        return hook_failure(
            ctx, hook.group("event"), hook.group("kind"), hook.group("name"), hooks_wait
        )
    return explain_helm_failure(ctx, failed, f"helm {action} failed")


def upgrade_release(
    ctx: StepContext, timeout: int | None = None, promote_unverified: bool = False
) -> str:
    target = ctx.target
    env = ctx.environment
    files = check_ready_to_deploy(ctx)
    if env.gated_by and not ctx.held.promotion_checked:
        # Run alone, the upgrade checks what a deploy's check-promotion step checks.
        say(promotion.check(ctx, promote_unverified))
    # Reading the release first: an unreachable cluster or refused credentials get
    # helm's diagnosis, not only the lock's complaint.
    refuse_if_pending(ctx)
    lock.ensure_held(ctx)
    seconds = timeout or env.timeouts.upgrade
    chart = chart_of(ctx.registry, target.release)
    applied = crds.keep_current(ctx, chart, files)
    command = helm.upgrade(target, chart, files, seconds, skip_crds=bool(applied))
    _change_release(ctx, command, "upgrade", timeout=seconds + 60, files=files, hooks_wait=seconds)
    note = f"release {target.release.name} in {target.namespace}"
    if not target.release.site:
        note += f" ({target.release.reference})"
    hooks = hooks_run(stored_release(ctx)) if not ctx.dry_run else []
    return "; ".join([note, *([applied] if applied else []), *hooks])


# -- hooks ----------------------------------------------------------------------

# helm 4 waits for a hook Job or Pod until it completes or --timeout passes, then says only this
# (followed by "context deadline exceeded", which is not about reaching the cluster).
HOOK_NOT_READY = re.compile(
    r"failed (?P<event>(?:pre|post)-(?:install|upgrade|rollback|delete)): "
    r"resource (?P<kind>Job|Pod)/[^/\s]+/(?P<name>\S+) not ready"
)

# Hooks of the charts the site carries, and how to switch each off.
KNOWN_HOOKS = {
    "hook-image-awaiter": "It is jupyterhub's image-puller hook: it waits until every node has "
    "pulled the user images; binderhub.jupyterhub.prePuller.hook.enabled: false in the "
    "environment's values turns it off.",
}


def hooks_run(status: dict | None) -> list[str]:
    """What the release's hook Jobs did in its last operation: 'hook Job x succeeded in 1.2s'."""
    done = []
    for hook in (status or {}).get("hooks") or []:
        run = hook.get("last_run") or {}
        if hook.get("kind") != "Job" or not run.get("phase"):
            continue
        took = _seconds_between(run.get("started_at"), run.get("completed_at"))
        done.append(
            f"hook Job {hook['name']} {run['phase'].lower()}"
            + (f" in {took:.1f}s" if took is not None else "")
        )
    return done


def _seconds_between(start: str | None, end: str | None) -> float | None:
    """Seconds between two of helm's timestamps (RFC 3339, nanoseconds), None if unreadable."""
    times = []
    for text in (start or "", end or ""):
        # Python reads at most microseconds: cut helm's nanoseconds down to six digits.
        found = re.fullmatch(r"(.+T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
        if not found:
            return None
        head, fraction, zone = found.groups()
        iso = f"{head}.{(fraction or '0')[:6]}{'+00:00' if zone == 'Z' else zone}"
        times.append(datetime.fromisoformat(iso))
    return (times[1] - times[0]).total_seconds()


def hook_failure(ctx: StepContext, event: str, kind: str, name: str, seconds: int) -> StepFailure:
    """Why a hook Job (or bare Pod) did not complete: it, its pods and their reasons."""
    target = ctx.target
    if kind == "Job":
        found = _kubectl_json(ctx, ["get", "job", name])
        pods = _kubectl_json(
            ctx, ["get", "pods", "--selector", f"batch.kubernetes.io/job-name={name}"]
        )
        why, lines, pod = describe_hook_job(event, name, found, (pods or {}).get("items") or [])
    else:
        why, lines, pod = describe_hook_pod(event, name, _kubectl_json(ctx, ["get", "pod", name]))
    kubectl = "kubectl"
    kubeconfig = ctx.runner.env.get("KUBECONFIG", "")
    if kubeconfig and not kubeconfig.startswith(tempfile.gettempdir()):
        kubectl += f" --kubeconfig {kubeconfig}"
    look = (
        f"{kubectl} describe pod {pod} --namespace {target.namespace} (its events) and "
        f"{kubectl} logs {pod} --namespace {target.namespace}"
        if pod
        else f"{kubectl} describe {kind.lower()} {name} --namespace {target.namespace}"
    )
    applied = (
        "none of the new version was applied"
        if event.startswith("pre-")
        else "the new version was applied before it"
    )
    fix = (
        f"Helm waited up to {seconds}s (the environment's timeouts.upgrade) and marked the "
        f"release failed; {applied}. See why: {look}. Fix what it names and deploy again: the "
        "next upgrade runs the hook afresh."
    )
    if name in KNOWN_HOOKS:
        fix += " " + KNOWN_HOOKS[name]
    return StepFailure(why, fix, details="\n".join(lines))


def _kubectl_json(ctx: StepContext, args: list[str]) -> dict | None:
    result = ctx.runner.run(
        ["kubectl", "--namespace", ctx.target.namespace, *args, "-o", "json"],
        quiet=True,
        check=False,
    )
    return json.loads(result.stdout) if result.ok and result.stdout.strip() else None


def describe_hook_job(
    event: str, job: str, found: dict | None, pods: list[dict]
) -> tuple[str, list[str], str]:
    """(why, one line per pod, the pod to look at) for a hook Job that did not complete.

    The pod to look at is the newest that failed, else the newest.
    """
    if found is None:
        return (
            f"The {event} hook Job {job} did not complete, and is gone from the cluster.",
            [],
            "",
        )
    status = found.get("status") or {}
    pods = sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")
    lines = [f"pod {p['metadata']['name']} {hook_pod_state(p)}" for p in pods]
    failed = [i for i, p in enumerate(pods) if (p.get("status") or {}).get("phase") == "Failed"]
    shown = failed[-1] if failed else len(pods) - 1
    gave_up = next(
        (
            c
            for c in status.get("conditions") or []
            if c.get("type") == "Failed" and c.get("status") == "True"
        ),
        None,
    )
    if gave_up:
        verdict = f"the Job failed ({gave_up.get('reason')}: {gave_up.get('message', '')})"
    elif not pods:
        verdict = "the Job started no pod"
    else:
        verdict = lines[shown]
    why = f"The {event} hook Job {job} did not complete: {verdict}"
    if status.get("failed"):
        limit = (found.get("spec") or {}).get("backoffLimit", 6)
        why += f"; {status['failed']} of its pods failed (the Job gives up after {limit} failures)"
    return why + ".", lines, pods[shown]["metadata"]["name"] if pods else ""


def describe_hook_pod(event: str, name: str, found: dict | None) -> tuple[str, list[str], str]:
    """(why, one line, the pod to look at) for a hook that is a bare Pod and did not complete."""
    if found is None:
        return (
            f"The {event} hook Pod {name} did not complete, and is gone from the cluster.",
            [],
            "",
        )
    line = f"pod {name} {hook_pod_state(found)}"
    return f"The {event} hook Pod {name} did not complete: {line}.", [line], name


def hook_pod_state(pod: dict) -> str:
    """Why a hook Job's pod has not completed, to follow its name."""
    status = pod.get("status") or {}
    if status.get("phase") == "Failed":
        for container in status.get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated")
            if terminated:
                said = f" ({terminated['message']})" if terminated.get("message") else ""
                return (
                    f"failed: container {container.get('name')} exited with code "
                    f"{terminated.get('exitCode', '?')} ({terminated.get('reason', 'no reason')})"
                    + said
                )
        return f"failed ({status.get('reason') or 'no reason given'})"
    problem = rollout_status.container_problem(pod) or rollout_status.unschedulable(pod)
    if problem:
        what = f"waits: container {problem.container} is " if problem.container else "is "
        return f"{what}{problem.reason}" + (f" ({problem.message})" if problem.message else "")
    return f"is {rollout_status.pod_state(pod)}"


# -- diff ---------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceKey:
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}" + (
            f" (namespace {self.namespace})" if self.namespace else ""
        )


def split_manifest(manifest: str, default_namespace: str) -> dict[ResourceKey, dict]:
    resources: dict[ResourceKey, dict] = {}
    for document in yaml.safe_load_all(manifest):
        if not isinstance(document, dict) or "kind" not in document:
            continue
        meta = document.get("metadata") or {}
        key = ResourceKey(
            document["kind"], meta.get("namespace") or default_namespace, meta.get("name", "")
        )
        resources[key] = document
    return resources


# A fresh key per run: digests show which values changed within one diff, but a
# digest in a CI log cannot be matched against guessed passwords.
_DIGEST_KEY = secrets_module.token_bytes(32)


def _keyed(value: object, what: str = "secret") -> str:
    return (
        f"<{what} hmac:"
        + hmac.new(_DIGEST_KEY, str(value).encode(), hashlib.sha256).hexdigest()[:12]
        + ">"
    )


def _masked_secret(document: dict) -> dict:
    """A Secret with each value replaced by a keyed digest: changes show, values do not."""
    masked = dict(document)
    for field in ("data", "stringData"):
        if isinstance(document.get(field), dict):
            masked[field] = {key: _keyed(value) for key, value in document[field].items()}
    return masked


def _masked_checksums(node: object) -> object:
    """`node` with every checksum annotation replaced by a keyed digest.

    Charts put `checksum/secret: {{ include "secret.yaml" . | sha256sum }}` on pod
    templates so a changed Secret restarts its pods. That plain sha256 would let
    anyone test guesses of the Secret offline; which checksums come from Secrets
    cannot be told from the manifest (binderhub calls its Secret's `checksum/config`),
    so every one is keyed: a change still shows.
    """
    if isinstance(node, list):
        return [_masked_checksums(item) for item in node]
    if not isinstance(node, dict):
        return node
    masked = {}
    for key, value in node.items():
        if key == "annotations" and isinstance(value, dict):
            masked[key] = {
                name: _keyed(text, "checksum") if "checksum" in str(name).lower() else text
                for name, text in value.items()
            }
        else:
            masked[key] = _masked_checksums(value)
    return masked


def diff_manifests(deployed: str, proposed: str, namespace: str) -> list[str]:
    """Unified diffs, resource by resource, with the data of Secrets and checksums masked."""
    before = split_manifest(deployed, namespace)
    after = split_manifest(proposed, namespace)
    chunks: list[str] = []
    for key in sorted(set(before) | set(after), key=str):
        old, new = before.get(key), after.get(key)
        if key.kind == "Secret":
            old = _masked_secret(old) if old else old
            new = _masked_secret(new) if new else new
        old_text = yaml.safe_dump(_masked_checksums(old), sort_keys=True) if old else ""
        new_text = yaml.safe_dump(_masked_checksums(new), sort_keys=True) if new else ""
        if old_text == new_text:
            continue
        label = "added" if not old else "removed" if not new else "changed"
        lines = difflib.unified_diff(
            old_text.splitlines(), new_text.splitlines(), "current", "proposed", lineterm=""
        )
        masked = current().masker.mask("\n".join(list(lines)[2:]))
        chunks.append(f"--- {key}: {label}\n" + masked)
    return chunks


def diff_release(ctx: StepContext) -> list[str]:
    target = ctx.target
    files = check_ready_to_deploy(ctx)
    deployed = ""
    if release_status(ctx) is not None:
        deployed = ctx.runner.run(helm.manifest(target), quiet=True).stdout
    chart = chart_of(ctx.registry, target.release)
    changes = crds.diff(ctx, chart, files)
    try:
        rendered = ctx.runner.run(helm.upgrade_preview(target, chart, files), quiet=True)
    except CommandFailed as failed:
        raise explain_helm_failure(ctx, failed, "helm could not render the upgrade") from None
    if rendered.dry_run:
        return changes
    proposed = json.loads(rendered.stdout).get("manifest", "")
    return changes + diff_manifests(deployed, proposed, target.namespace)


# -- rollback and recovery ----------------------------------------------------


def history(ctx: StepContext) -> list[dict]:
    return _read_release(ctx, "history") or []


def last_good_revision(revisions: list[dict]) -> int | None:
    """The newest revision that was deployed successfully at some point."""
    good = [r["revision"] for r in revisions if r.get("status") in ("deployed", "superseded")]
    return max(good) if good else None


def rollback_release(ctx: StepContext, revision: int | None = None) -> str:
    """Roll back to `revision`, by default the last good one before the current."""
    target = ctx.target
    env = ctx.environment
    lock.ensure_held(ctx)
    if revision is None and not ctx.dry_run:
        revisions = history(ctx)
        revision = previous_good_revision(revisions, verified_revisions(ctx))
        if revision is None:
            known = ", ".join(f"{r['revision']} ({r['status']})" for r in revisions) or "none"
            raise StepFailure(
                f"{target.release.name} in {target.namespace} has no earlier good revision to "
                f"roll back to. Its revisions: {known}.",
                f"Fix forward, or pick one: invoke rollback --env={env.name} --revision N",
            )
        say(f"rolling back to revision {revision}, the last good one before the current")
    _change_release(ctx, helm.rollback(target, revision), "rollback")
    return f"rolled back to revision {revision}" if revision else "rolled back"


def revision_number(revision: object) -> int | None:
    if revision is None:
        return None
    try:
        return int(str(revision))
    except ValueError:
        raise StepFailure(
            f"--revision must be a revision number, not {revision!r}.",
            "See the revisions with: helm history RELEASE --namespace NAMESPACE",
        ) from None


VERIFIED = "binder-deploy-verified"


def record_verified(ctx: StepContext) -> str:
    """Remember that the release's current revision passed wait-rollout and smoke-test.

    helm only knows whether its own upgrade succeeded; a revision that crash-looped
    afterwards is "superseded" like any good one. Rollbacks return to verified ones.
    """
    target = ctx.target
    env = ctx.environment
    latest = latest_revision(ctx)
    if latest is None:
        return "would record the revision as verified" if ctx.dry_run else "no release to record"
    revision = latest[0]
    known = sorted(verified_revisions(ctx) | {revision})[-50:]
    data = {"release": target.release.name, "revisions": ",".join(str(r) for r in known)}
    if not configmaps.write(ctx, configmaps.new(ctx, verified_record(target.release), data)):
        raise StepFailure(
            f"Could not record revision {revision} as verified in namespace {target.namespace}.",
            f"Check access to the namespace: invoke doctor --env={env.name}",
        )
    return f"revision {revision} recorded as verified"


def verified_record(release: Release) -> str:
    """The ConfigMap of the release's verified revisions; a release beside the site's has its
    own, as two releases may share a namespace."""
    return VERIFIED if release.site else f"{VERIFIED}-{release.name}"


def verified_revisions(ctx: StepContext) -> set[int]:
    found = configmaps.read(ctx, verified_record(ctx.target.release)) or {}
    listed = (found.get("data") or {}).get("revisions", "")
    return {int(r) for r in listed.split(",") if r.strip().isdigit()}


def previous_good_revision(revisions: list[dict], verified: set[int] | None = None) -> int | None:
    """The newest good revision before the latest one: what a failed upgrade returns to.

    Good means verified by a deploy (wait-rollout and smoke-test passed) where such
    records exist, else what helm calls deployed or superseded.
    """
    if not revisions:
        return None
    latest = max(r["revision"] for r in revisions)
    earlier = [r for r in revisions if r["revision"] < latest]
    if verified:
        earlier = [r for r in earlier if r["revision"] in verified]
    return last_good_revision(earlier)


def recovery_plan(revisions: list[dict]) -> tuple[str, int | None]:
    """What recover-release would do: ('rollback', N), ('uninstall', None) or ('nothing', None)."""
    if not revisions:
        return ("nothing", None)
    latest = max(revisions, key=lambda r: r["revision"])
    if latest.get("status") not in PENDING_STATES:
        return ("nothing", None)
    good = last_good_revision(revisions)
    return ("rollback", good) if good is not None else ("uninstall", None)


def recover(ctx: StepContext, approve: Callable[[str], bool]) -> str:
    target = ctx.target
    lock.ensure_held(ctx)
    revisions = history(ctx)
    action, revision = recovery_plan(revisions)
    if ctx.dry_run and not revisions:
        say("[dry-run] would roll back a pending release to its last deployed revision")
        return "dry run"
    if action == "nothing":
        latest = max(revisions, key=lambda r: r["revision"])["status"] if revisions else "absent"
        return f"nothing to recover: the release is {latest}"
    what = (
        f"roll back {target.release.name} in {target.namespace} to revision {revision}"
        if action == "rollback"
        else f"uninstall {target.release.name} from {target.namespace} "
        "(it never deployed successfully)"
    )
    if not approve(f"Recover by {what}?"):
        raise StepFailure(
            f"Recovery would {what}, and was not confirmed.",
            "Run again and answer yes, or pass --yes.",
        )
    if action == "rollback":
        return rollback_release(ctx, revision)
    _change_release(ctx, helm.uninstall(target), "uninstall")
    return f"uninstalled {target.release.name}"


# -- tasks --------------------------------------------------------------------


UPGRADE = Step("upgrade", upgrade_release, Changes.RELEASE, needs_cluster=True, per_release=True)
ROLLBACK = Step("rollback", rollback_release, Changes.RELEASE, needs_cluster=True)
RECOVER_RELEASE = Step(
    "recover-release", recover, Changes.RELEASE, needs_cluster=True, per_release=True
)
