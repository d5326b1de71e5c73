"""`invoke demo`: the demo federation deployed to local clusters, with the chart
repository and OCI registry it needs served on loopback (sandbox/)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from invoke import Context, task

from sandbox import chartrepo, clusters
from tasks.adapters import go_builds
from tasks.cli.chain import run_deploy
from tasks.core.errors import StepFailure
from tasks.core.output import say, warn
from tasks.flows.pipeline import dry_run_asked, invocation

# What `invoke demo` deploys: local-staging, then the local members at once.
DEMO_TARGET = "local-federation"


@task(help={"dry_run": "Print the plan; start and deploy nothing."})
def demo(c: Context, dry_run: bool = False) -> None:
    """A federation on the local clusters: local-staging, then its members at once."""
    with invocation("demo"):
        if dry_run_asked(c, dry_run, "demo"):
            say(
                "[dry-run] would start the local clusters, serve the chart repository's copy "
                "and start a local OCI registry holding traefik's"
            )
            run_deploy(c, DEMO_TARGET, dry_run=True, yes=True)
            return
        for name in clusters.DEMO_CLUSTERS:
            if not clusters.is_up(name):
                go_builds.ensure_built(echo=say)
                clusters.up(name, echo=say)
        mirror, folder = _local_copy(
            chartrepo.mirror_folder,
            chartrepo.mirror_upstream,
            f"helm-deps fetches from {chartrepo.UPSTREAM} itself.",
        )
        oci_mirror, oci_folder = _local_copy(
            chartrepo.oci_folder,
            chartrepo.mirror_oci_upstream,
            f"helm-deps pulls from {chartrepo.OCI_UPSTREAM} itself.",
        )
        with mirror as url, oci_mirror as oci_url:
            if url:
                say(f"chart repository {chartrepo.UPSTREAM}: served from {folder} at {url}")
            if oci_url:
                say(
                    f"OCI registry {chartrepo.OCI_UPSTREAM}: a local registry at {oci_url}, "
                    f"holding the charts of {oci_folder}"
                )
            run_deploy(c, DEMO_TARGET, dry_run=False, yes=True)


def _local_copy(
    find: Callable[[], Path], serve: Callable[[Path], AbstractContextManager[str]], otherwise: str
) -> tuple[AbstractContextManager[str | None], Path | None]:
    """A local copy of an upstream to serve, and its folder; without one, a warning."""
    try:
        folder = find()
    except StepFailure as failure:
        warn(f"{failure.why} {otherwise}")
        return nullcontext(None), None
    return serve(folder), folder
