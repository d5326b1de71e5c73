"""Promote what staging verified: a member deploys exactly what its gate's deploy verified.

When a deploy verifies an environment (wait-rollout and smoke-test passed),
its `verified` step records what was deployed in that environment's own
cluster, beside the verified revisions (a ConfigMap in its namespace, so a
later run, or a member deployed on its own, can read it):

    commit   the checkout's commit
    chart    the site chart's name and version, and a digest of each of its
             files: templates, values, Chart.lock and the packaged dependency
             archives under charts/
    releases for an environment of several releases, each release's chart:
             a folder's files as above, a fetched chart's reference and digest
    layers   a digest of each values layer of every release, secret layers included

Before a gated environment (a prod member) touches its cluster,
`check-promotion` compares what it is about to deploy with its gate's record:
the commit, the chart, and every values layer the two share. Layers of the
member's own (config/prod.yaml, its secrets) differ by design and are not
compared. A difference refuses the deploy, naming each one;
`--promote-unverified` deploys anyway and the summary says so.

Digests are SHA-256 of whole files: a secret value never appears in the record.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tasks.adapters import configmaps
from tasks.adapters.access import cluster_of
from tasks.adapters.helm import shown
from tasks.config.context import StepContext
from tasks.config.registry import Environment, Registry
from tasks.core.errors import Skipped, StepFailure
from tasks.core.output import say, warn
from tasks.core.report import abridged
from tasks.core.runner import PROJECT_ROOT
from tasks.core.step import Step
from tasks.steps.charts import chart_of, pinned_dependencies

RECORD = "binder-deploy-promotion"


@dataclass(frozen=True)
class Promotion:
    """What one deploy of an environment deployed, as digests."""

    environment: str
    commit: str
    chart: str  # "mybinder 0.1.0"
    chart_files: dict[str, str] = field(default_factory=dict)  # path in the chart -> digest
    layers: dict[str, str] = field(default_factory=dict)  # values file as shown -> digest
    # release -> its chart and what identifies it: reference, version, digest
    releases: dict[str, str] = field(default_factory=dict)

    def data(self) -> dict[str, str]:
        """The record as a ConfigMap's data."""
        return {
            "environment": self.environment,
            "commit": self.commit,
            "chart": self.chart,
            "chart-files": json.dumps(self.chart_files, sort_keys=True),
            "layers": json.dumps(self.layers),
            "releases": json.dumps(self.releases),
        }

    @classmethod
    def from_data(cls, data: dict[str, str]) -> Promotion:
        return cls(
            environment=data.get("environment", "?"),
            commit=data.get("commit", ""),
            chart=data.get("chart", ""),
            chart_files=json.loads(data.get("chart-files") or "{}"),
            layers=json.loads(data.get("layers") or "{}"),
            releases=json.loads(data.get("releases") or "{}"),
        )


def _digest(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def chart_files(chart_dir: Path) -> dict[str, str]:
    """A digest of every file the chart deploys: its own, and the pinned dependency archives.

    What else lies under charts/ (an archive left from an earlier version) is
    not deployed, so it is not compared either.
    """
    archives = {Path("charts") / d.archive for d in pinned_dependencies(chart_dir)}
    found = {}
    for path in sorted(chart_dir.rglob("*")):
        relative = path.relative_to(chart_dir)
        if not path.is_file() or (relative.parts[0] == "charts" and relative not in archives):
            continue
        found[str(relative)] = _digest(path)
    for archive in archives:
        if not (chart_dir / archive).is_file():
            found[str(archive)] = "missing"
    return found


def release_charts(registry: Registry, env: Environment) -> tuple[dict[str, str], dict[str, str]]:
    """Each release's chart as the record names it, and the files of folders beside the site's.

    A fetched chart is its reference and the digest helm-deps pulled it at; a
    folder other than the site chart has its files digested under its name.
    """
    charts: dict[str, str] = {}
    files: dict[str, str] = {}
    for release in env.releases if env.listed else ():
        path = chart_of(registry, release)
        if release.site:
            charts[release.name] = f"{registry.chart} (the site chart)"
        elif release.is_folder:
            charts[release.name] = str(path)
            files.update({f"{path}/{k}": v for k, v in chart_files(PROJECT_ROOT / path).items()})
        else:
            recorded = PROJECT_ROOT / path.with_name(path.name + ".digest")
            digest = recorded.read_text().strip() if recorded.is_file() else "not fetched"
            charts[release.name] = f"{release.reference} {digest}"
    return charts, files


def describe(ctx: StepContext, env: Environment) -> Promotion:
    """What a deploy of `env` from this checkout deploys, every release of it."""
    chart_dir = PROJECT_ROOT / ctx.registry.chart
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text()) or {}
    releases, other_files = release_charts(ctx.registry, env)
    layers = {
        shown(path): _digest(path)
        for release in env.releases
        for path in env.target(release.name).values_files()
    }
    head = ctx.runner.run(
        ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"],
        quiet=True,
        check=False,
        touches_nothing=True,
    )
    return Promotion(
        environment=env.name,
        commit=head.stdout.strip() if head.ok else "unknown (not a git checkout)",
        chart=f"{chart.get('name', '?')} {chart.get('version', '?')}",
        chart_files={**chart_files(chart_dir), **other_files},
        layers=layers,
        releases=releases,
    )


def differences(verified: Promotion, mine: Promotion) -> list[str]:
    """How `mine` differs from what was verified, each difference named; [] when it does not."""
    gate = verified.environment
    found = []
    if mine.commit != verified.commit:
        found.append(
            f"commit: {gate} verified {verified.commit[:12]}, "
            f"this checkout is at {mine.commit[:12]}"
        )
    if mine.chart != verified.chart:
        found.append(f"chart: {gate} verified {verified.chart}, this checkout has {mine.chart}")
    # Releases the two share by name must deploy the same chart; one of the member's
    # own, which its gate does not have, cannot be compared.
    found += [
        f"release {name}: {gate} verified {verified.releases[name]}, this checkout has {chart}"
        for name, chart in mine.releases.items()
        if name in verified.releases and verified.releases[name] != chart
    ]
    files = sorted(set(verified.chart_files) | set(mine.chart_files))
    changed = [f for f in files if verified.chart_files.get(f) != mine.chart_files.get(f)]
    if changed:
        found.append(f"chart files differ from what {gate} verified: {abridged(changed, 5)}")
    shared = [layer for layer in mine.layers if layer in verified.layers]
    found += [
        f"values layer {layer} differs from the one {gate} verified"
        for layer in shared
        if mine.layers[layer] != verified.layers[layer]
    ]
    return found


def record(ctx: StepContext) -> str:
    """Record what the environment's verified deploy deployed, in its own cluster."""
    env = ctx.environment
    promotion = describe(ctx, env)
    ctx.held.keep(Promotion, promotion)
    if ctx.dry_run:
        return "would record what was verified"
    if not configmaps.write(ctx, configmaps.new(ctx, RECORD, promotion.data())):
        raise StepFailure(
            f"Could not record what {env.name} verified in namespace {ctx.target.namespace}.",
            f"Check access to the namespace: invoke doctor --env={env.name}",
        )
    return f"commit {promotion.commit[:12]} and {promotion.chart} recorded as verified"


def verified_by(ctx: StepContext, gate: Environment) -> Promotion | None:
    """What `gate` last verified: this run's record, else the one in its cluster."""
    known = ctx.run.environment(gate.name).kept(Promotion)
    if known is not None:
        return known
    with cluster_of(ctx, gate) as gate_ctx:
        found = configmaps.read(gate_ctx, RECORD)
    return Promotion.from_data(found.get("data") or {}) if found else None


def check(ctx: StepContext, promote_unverified: bool = False) -> str:
    """Refuse to deploy the environment anything its gate did not verify."""
    env = ctx.environment
    if env.gated_by is None:
        raise Skipped(f"{env.name} has no gate: nothing to compare with")
    gate = ctx.registry.get(env.gated_by)
    if ctx.dry_run and ctx.run.environment(gate.name).kept(Promotion) is None:
        say(
            f"[dry-run] would compare the commit, chart and shared values layers with {gate.name}'s"
        )
        return f"would check it deploys what {gate.name} verified"
    verified = verified_by(ctx, gate)
    mine = describe(ctx, env)
    if verified is None:
        found = [f"{gate.name} has no record of a verified deploy"]
    else:
        found = differences(verified, mine)
    ctx.held.promotion_checked = True
    if not found:
        verified_when = "would verify in this run" if ctx.dry_run else "verified"
        return f"commit {mine.commit[:12]}, {mine.chart}: what {gate.name} {verified_when}"
    if promote_unverified:
        warn(
            f"{env.name} was deployed with what {gate.name} did NOT verify "
            f"(--promote-unverified): {'; '.join(found)}."
        )
        return f"NOT what {gate.name} verified (--promote-unverified): {'; '.join(found)}"
    raise StepFailure(
        f"{env.name} would deploy what {gate.name} did not verify: {'; '.join(found)}.",
        f"Deploy {gate.name} first (invoke deploy --env={env.name} deploys it, then "
        f"{env.name}), or, knowing what differs, pass --promote-unverified.",
        details="\n".join(found),
    )


CHECK_PROMOTION = Step("check-promotion", check, gated_only=True, takes=("promote_unverified",))
