"""A chart's CustomResourceDefinitions, kept current on every upgrade.

helm installs the files of a chart's `crds/` folder on the release's first
install only and never upgrades them: a chart whose new version needs a new
CRD field then fails, or silently misbehaves, on every cluster installed
before it (cert-manager's upgrades broke mybinder.org's deploys this way).
So the upgrade step applies them itself, before `helm upgrade`, the way helm
4 does on install: server-side apply, field manager `helm`, conflicts forced.
Keeping helm's field manager means a field the new CRD drops is removed, not
left behind as someone else's.

Each applied CRD carries two labels naming its release, so the next upgrade
knows which CRDs the release shipped before. One the new chart no longer
ships is named, never deleted: deleting a CRD deletes every custom resource
of its kind, cluster-wide.
"""

from __future__ import annotations

import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from tasks.config import values as values_module
from tasks.config.context import StepContext
from tasks.core.errors import CommandFailed, StepFailure
from tasks.core.output import say, warn
from tasks.core.runner import PROJECT_ROOT

RELEASE_LABEL = "binder-deploy/release"
NAMESPACE_LABEL = "binder-deploy/release-namespace"
CRD_SUFFIXES = (".yaml", ".yml", ".json")


def _documents(text: str | bytes, where: str) -> list[dict]:
    try:
        found = [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
    except yaml.YAMLError as error:
        raise StepFailure(f"{where} is not valid YAML: {error}") from None
    return [d for d in found if d.get("kind") == "CustomResourceDefinition"]


def _from_archive(archive: Path) -> list[dict]:
    """CRDs in a packaged chart: its own crds/, and those of the charts it carries."""
    found = []
    with tarfile.open(archive, "r:gz") as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            parts = member.name.split("/")
            # chart/crds/x.yaml, or chart/charts/sub/crds/x.yaml for a chart it carries
            own = len(parts) == 3 and parts[1] == "crds"
            carried = len(parts) == 5 and parts[1] == "charts" and parts[3] == "crds"
            if not (member.isfile() and member.name.endswith(CRD_SUFFIXES) and (own or carried)):
                continue
            content = tar.extractfile(member)
            if content is not None:
                found += _documents(content.read(), f"{archive.name}:{member.name}")
    return found


def dependency_switches(chart_dir: Path, files: list[Path]) -> dict[str, bool]:
    """Each dependency's archive under charts/ -> whether the layered values switch it on.

    helm reads a dependency's `condition:` as a path into the values; a path no
    layer sets leaves the dependency on.
    """
    meta = values_module.load(chart_dir / "Chart.yaml")
    defaults = chart_dir / "values.yaml"
    merged = values_module.load(defaults) if defaults.is_file() else {}
    for path in files:
        if not values_module.is_locked(path):
            merged = values_module.merge(merged, values_module.load(path))
    switches = {}
    for entry in meta.get("dependencies") or []:
        on = True
        for condition in str(entry.get("condition") or "").split(","):
            node: object = merged
            for key in condition.strip().split(".") if condition.strip() else []:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, bool):
                on = node
                break
        switches[f"{entry['name']}-{entry['version']}.tgz"] = on
    return switches


def shipped(chart: Path, files: list[Path]) -> list[dict]:
    """The CRDs of a chart (a folder or an archive) and of the dependencies `files` switch on."""
    chart = chart if chart.is_absolute() else PROJECT_ROOT / chart
    if chart.is_file():
        return _from_archive(chart)
    found = []
    for path in sorted((chart / "crds").glob("*")):
        if path.suffix in CRD_SUFFIXES:
            found += _documents(path.read_text(), str(path))
    for archive, on in dependency_switches(chart, files).items():
        if on and (chart / "charts" / archive).is_file():
            found += _from_archive(chart / "charts" / archive)
    return found


def names(crds: list[dict]) -> list[str]:
    return [str((crd.get("metadata") or {}).get("name", "")) for crd in crds]


def labelled(crds: list[dict], release: str, namespace: str) -> list[dict]:
    """The CRDs with the labels that name the release shipping them."""
    result = []
    for crd in crds:
        meta = dict(crd.get("metadata") or {})
        meta["labels"] = {
            **(meta.get("labels") or {}),
            RELEASE_LABEL: release,
            NAMESPACE_LABEL: namespace,
        }
        result.append({**crd, "metadata": meta})
    return result


@contextmanager
def _manifest(crds: list[dict]) -> Iterator[Path]:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="crds-") as file:
        yaml.safe_dump_all(crds, file, sort_keys=False)
        file.flush()
        yield Path(file.name)


def _apply_args(path: Path) -> list[str]:
    return ["--server-side", "--force-conflicts", "--field-manager=helm", "-f", str(path)]


def previously_shipped(ctx: StepContext) -> list[str]:
    """The CRDs in the cluster that the release's earlier upgrades applied."""
    target = ctx.target
    selector = f"{RELEASE_LABEL}={target.release.name},{NAMESPACE_LABEL}={target.namespace}"
    result = ctx.runner.run(
        ["kubectl", "get", "crd", "-l", selector, "-o", "name"], quiet=True, check=False
    )
    if result.dry_run or not result.ok:
        return []
    return sorted(line.split("/", 1)[-1] for line in result.stdout.split())


def keep_current(ctx: StepContext, chart: Path, files: list[Path]) -> str:
    """Apply the chart's CRDs before the upgrade; name, never delete, those it dropped.

    Returns the summary's note ("" for a chart without CRDs).
    """
    target = ctx.target
    if ctx.dry_run and chart.suffix == ".tgz" and not (PROJECT_ROOT / chart).is_file():
        say(f"[dry-run] would apply the CRDs {chart} ships (once fetched) before the upgrade")
        return "would apply the chart's CRDs"
    crds = labelled(shipped(chart, files), target.release.name, target.namespace)
    before = previously_shipped(ctx)
    now = names(crds)
    dropped = [name for name in before if name not in now]
    if dropped:
        warn(
            f"the chart of release {target.release.name} no longer ships the CRD(s) "
            f"{', '.join(dropped)}; they were left in the cluster, with every custom resource "
            "of their kinds. Once nothing uses them, delete them by hand: "
            + "; ".join(f"kubectl delete crd {name}" for name in dropped)
        )
    if not crds:
        return f"{len(dropped)} dropped CRD(s) left in place" if dropped else ""
    say(
        f"applying the {len(crds)} CRD(s) {chart} ships before the upgrade (server-side "
        f"apply): {', '.join(now)}"
    )
    with _manifest(crds) as path:
        try:
            ctx.runner.run(["kubectl", "apply", *_apply_args(path)], quiet=True)
        except CommandFailed as failed:
            raise StepFailure(
                f"The CRDs of release {target.release.name} could not be applied: {failed.tail(3)}",
                "The release was not upgraded. The deployer needs rights on "
                "customresourcedefinitions (cluster-wide): `kubectl auth can-i patch "
                "customresourcedefinitions`. A CRD the API server refuses names its field.",
                details=failed.output,
            ) from None
    note = f"{len(crds)} CRD(s) " + ("would be applied" if ctx.dry_run else "applied")
    if dropped:
        note += f"; dropped from the chart, left in place: {', '.join(dropped)}"
    return note


def diff(ctx: StepContext, chart: Path, files: list[Path]) -> list[str]:
    """What applying the chart's CRDs would change, and the CRDs it would no longer ship."""
    target = ctx.target
    crds = labelled(shipped(chart, files), target.release.name, target.namespace)
    chunks = [
        f"--- CustomResourceDefinition/{name}: no longer shipped, would be left in place "
        f"(kubectl delete crd {name} removes it by hand)"
        for name in previously_shipped(ctx)
        if name not in names(crds)
    ]
    if not crds:
        return chunks
    with _manifest(crds) as path:
        result = ctx.runner.run(["kubectl", "diff", *_apply_args(path)], quiet=True, check=False)
    # kubectl diff: 0 no differences, 1 differences, more: it failed.
    if result.exit_code > 1:
        raise StepFailure(
            f"`kubectl diff` of the CRDs of release {target.release.name} failed: "
            f"{(result.stderr or result.stdout).strip()[-300:]}"
        )
    if result.exit_code == 1:
        for section in _per_object(result.stdout):
            chunks.append(ctx.run.masker.mask(section))
    return chunks


def _per_object(output: str) -> list[str]:
    """kubectl diff's output, one section per CRD, each headed like the release's diff."""
    sections: list[list[str]] = []
    for line in output.splitlines():
        if line.startswith("diff -u -N "):
            # kubectl names the files GROUP.VERSION.KIND.NAMESPACE.NAME, a CRD's namespace empty
            crd = line.rsplit("CustomResourceDefinition.", 1)[-1].lstrip(".")
            sections.append([f"--- CustomResourceDefinition/{crd}: changed"])
        elif sections and not line.startswith(("--- ", "+++ ")):
            sections[-1].append(line)
    return ["\n".join(section) for section in sections]
