"""Credentials for an environment's cluster, scoped to one step.

Each kind of cluster access is a context manager that yields the environment
variables (KUBECONFIG, CLOUDSDK_CONFIG) the step's commands need and removes
whatever it created on exit. The operator's own ~/.kube/config and gcloud
login are never read or changed.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.errors import CommandFailed, Diagnosis, StepFailure, explain
from tasks.pipeline import StepContext, register_cluster_access

GCLOUD_FAILURES = (
    Diagnosis(
        r"gcloud: (command )?not found",
        "gcloud is not installed, and this environment's cluster is on GKE.",
        "Install the Google Cloud CLI (apt-get install google-cloud-cli), or run `invoke tools`.",
    ),
    Diagnosis(
        r"(Could not read json file|Invalid key file|not a valid json|private_key)",
        "gcloud could not use the service-account key file: it is not a valid key.",
        "Check that the secrets are unlocked (invoke decrypt-secrets) and that the key file "
        "in the registry's cluster.key_file is the JSON key of the deployer service account.",
    ),
    Diagnosis(
        r"(Unable to find|getaddrinfo|Failed to establish a new connection|timed out)",
        "gcloud could not reach Google's API: the network is down or blocked.",
        "Check the network from this machine; re-run the step when it is back.",
    ),
    Diagnosis(
        r"gke-gcloud-auth-plugin",
        "kubectl needs gke-gcloud-auth-plugin to talk to GKE, and it is not installed.",
        "Install it: gcloud components install gke-gcloud-auth-plugin "
        "(or apt-get install google-cloud-cli-gke-gcloud-auth-plugin).",
    ),
)


@contextmanager
def open_cluster(ctx: StepContext) -> Iterator[dict[str, str]]:
    """Credentials for the step's environment, gone when the step ends."""
    env = ctx.environment
    kind = env.cluster.kind
    if kind == "local":
        yield {"KUBECONFIG": str(_local_kubeconfig(ctx))}
    elif kind == "kubeconfig":
        yield {"KUBECONFIG": str(_secret_kubeconfig(ctx))}
    else:
        with _gke(ctx) as variables:
            yield variables


def _local_kubeconfig(ctx: StepContext) -> Path:
    from tasks.cluster import clusters

    name = ctx.environment.cluster.local_name
    path = clusters.kubeconfig(name)
    if not ctx.dry_run and not path.exists():
        raise StepFailure(
            f"The local cluster {name!r} is not running (no kubeconfig at {path}).",
            f"Start it: invoke cluster.up --name={name}",
        )
    return path


def _secret_kubeconfig(ctx: StepContext) -> Path:
    env = ctx.environment
    path = env.secret_path(env.cluster.kubeconfig)
    if ctx.dry_run:
        return path
    if not path.exists():
        raise StepFailure(
            f"The kubeconfig {path} named by environment {env.name!r} (cluster.kubeconfig) "
            "does not exist.",
            "Unlock the secrets (invoke decrypt-secrets) or fix the path in "
            "config/environments.yaml.",
        )
    if path.read_bytes()[:9] == b"\x00GITCRYPT":
        raise StepFailure(
            f"The kubeconfig {path} is still encrypted.",
            f"Unlock the secrets first: invoke decrypt-secrets --env={env.name}",
        )
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        path.chmod(0o600)
    return path


@contextmanager
def _gke(ctx: StepContext) -> Iterator[dict[str, str]]:
    env = ctx.environment
    cluster = env.cluster
    key_file = env.secret_path(cluster.key_file)
    with tempfile.TemporaryDirectory(prefix="deploy-gcloud-") as private:
        os.chmod(private, 0o700)
        variables = {
            "CLOUDSDK_CONFIG": str(Path(private) / "gcloud"),
            "KUBECONFIG": str(Path(private) / "kubeconfig"),
            "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
            "USE_GKE_GCLOUD_AUTH_PLUGIN": "True",
        }
        runner = ctx.runner.with_env(**variables)
        if not ctx.dry_run and not key_file.exists():
            raise StepFailure(
                f"The service-account key {key_file} named by environment {env.name!r} "
                "(cluster.key_file) does not exist.",
                "Unlock the secrets (invoke decrypt-secrets) or fix the path in "
                "config/environments.yaml.",
            )
        location = "--region" if cluster.zone.count("-") == 1 else "--zone"
        try:
            runner.run(["gcloud", "auth", "activate-service-account", f"--key-file={key_file}"])
            runner.run(
                [
                    "gcloud",
                    "container",
                    "clusters",
                    "get-credentials",
                    cluster.cluster,
                    f"--project={cluster.project}",
                    f"{location}={cluster.zone}",
                ]
            )
        except CommandFailed as failed:
            raise explain(
                failed, GCLOUD_FAILURES, "gcloud could not get the cluster's credentials"
            ) from None
        yield variables


register_cluster_access(open_cluster)
