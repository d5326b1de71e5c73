"""Every helm command the pipeline runs, built in one place.

Upgrade, diff, validate's template and lint, rollback and recovery all name
the release, its namespace, the chart and the values layers the same way, so
what validate renders is what upgrade installs, and a change to how helm is
called is made once.
"""

from __future__ import annotations

from pathlib import Path

from tasks.config.registry import Target
from tasks.core.runner import PROJECT_ROOT


def shown(path: Path) -> str:
    """A path as the operator knows it: relative to the project where it can be."""
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def values_args(files: list[Path]) -> list[str]:
    """`--values` for each layer, in the order helm must apply them (later ones win)."""
    return [arg for path in files for arg in ("--values", shown(path))]


def upgrade(
    target: Target, chart: Path, files: list[Path], seconds: int, skip_crds: bool = False
) -> list[str]:
    """Install or upgrade the release; helm waits for hooks only, up to `seconds`.

    Without values files helm would reuse the last revision's values: what the
    repository says is what deploys, even when it says nothing (`--reset-values`).
    `skip_crds` when the CRDs were applied just now, newer than helm's install-only copy.
    """
    return _upgrade(
        target, chart, files, "--cleanup-on-fail", "--create-namespace", "--namespace",
        target.namespace, "--timeout", f"{seconds}s", "--reset-values",
        *(["--skip-crds"] if skip_crds else []),
    )  # fmt: skip


def upgrade_preview(target: Target, chart: Path, files: list[Path]) -> list[str]:
    """What an upgrade would install, as the API server would accept it, changing nothing."""
    return _upgrade(
        target,
        chart,
        files,
        "--namespace",
        target.namespace,
        "--dry-run=server",
        "--output",
        "json",
    )


def _upgrade(target: Target, chart: Path, files: list[Path], *flags: str) -> list[str]:
    return [
        "helm",
        "upgrade",
        target.release.name,
        str(chart),
        "--install",
        *flags,
        *values_args(files),
    ]


def template(target: Target, chart: Path, files: list[Path]) -> list[str]:
    return [
        "helm",
        "template",
        target.release.name,
        str(chart),
        "--namespace",
        target.namespace,
        *values_args(files),
    ]


def lint(target: Target, chart: Path, files: list[Path]) -> list[str]:
    return ["helm", "lint", str(chart), "--namespace", target.namespace, *values_args(files)]


def read(target: Target, what: str) -> list[str]:
    """The release's `status` or `history`, as JSON."""
    return ["helm", what, target.release.name, "--namespace", target.namespace, "--output", "json"]


def manifest(target: Target) -> list[str]:
    return ["helm", "get", "manifest", target.release.name, "--namespace", target.namespace]


def rollback(target: Target, revision: int | None) -> list[str]:
    """Back to `revision` (helm's previous one without it)."""
    command = ["helm", "rollback", target.release.name]
    if revision is not None:
        command.append(str(revision))
    return [*command, "--namespace", target.namespace, "--cleanup-on-fail"]


def uninstall(target: Target) -> list[str]:
    return ["helm", "uninstall", target.release.name, "--namespace", target.namespace]


def pull(reference: str, version: str, destination: Path, *flags: str) -> list[str]:
    """Fetch a chart's archive (an `oci://` reference) at `version` into `destination`."""
    return ["helm", "pull", reference, "--version", version, "--destination", str(destination),
            *flags]  # fmt: skip


def push(archive: Path, prefix: str, *flags: str) -> list[str]:
    """Store a chart's archive under the OCI registry prefix `prefix`."""
    return ["helm", "push", str(archive), prefix, *flags]
