"""`kind: gke`: a GKE cluster, reached with a service-account key under the secrets folder.

`gcloud auth activate-service-account` and `get-credentials` run inside a
private, temporary gcloud configuration, so the operator's own gcloud login
is never read or changed.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.adapters import toolchain
from tasks.adapters.access import secret_file
from tasks.config.cluster_kind import ClusterKind
from tasks.config.context import StepContext
from tasks.core.errors import CommandFailed, Diagnosis, StepFailure, explain

GCLOUD_FAILURES = (
    Diagnosis(
        r"gcloud: (command )?not found|No such file or directory.*gcloud",
        "gcloud is not installed, and this environment's cluster is on GKE.",
        "Install the Google Cloud CLI: apt-get install google-cloud-cli "
        "(https://cloud.google.com/sdk/docs/install).",
    ),
    Diagnosis(
        r"key file is not in a valid format|Could not read json file|Invalid key file"
        r"|not a valid json|Could not deserialize key data|private.key",
        "gcloud could not use the service-account key file: it is not a valid key.",
        "Check that the secrets are unlocked (invoke decrypt-secrets) and that the file "
        "named by the registry's cluster.key_file is the JSON key of the deployer "
        "service account.",
    ),
    Diagnosis(
        r"invalid_grant|Invalid JWT Signature|account not found",
        "Google refused the service-account key: it was deleted, disabled or revoked.",
        "Create a new key for the deployer service account (gcloud iam service-accounts "
        "keys create), put it in the secrets folder and commit it.",
    ),
    Diagnosis(
        r"Failed to resolve|Name or service not known|NameResolutionError"
        r"|Temporary failure in name resolution|getaddrinfo|Network is unreachable"
        r"|Failed to establish a new connection|Connection refused|timed out"
        r"|Max retries exceeded",
        "gcloud could not reach Google's API: the network is down or blocked.",
        "Check the network (DNS, proxy, firewall) from this machine; re-run when it is back.",
    ),
    Diagnosis(
        r"PERMISSION_DENIED|does not have permission|Required .container\.clusters\.get",
        "The service account may not read this GKE cluster.",
        "Give the deployer service account the cluster's get permission "
        "(container.clusters.get, e.g. roles/container.clusterViewer) in the project.",
    ),
    Diagnosis(
        r"NOT_FOUND|ResponseError: code=404|Not found: projects/",
        "Google knows no such cluster in this project and location.",
        "Check cluster.project, cluster.zone and cluster.cluster in config/environments.yaml.",
    ),
)


def check_service_account_key(path: Path) -> dict:
    """The parsed service-account key, or a failure saying what is wrong with the file."""
    try:
        key = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        key = None
    fields = ("client_email", "private_key")
    if (
        not isinstance(key, dict)
        or key.get("type") != "service_account"
        or not all(key.get(field) for field in fields)
    ):
        raise StepFailure(
            f"{path} is not a service-account key (JSON with type service_account, "
            "client_email and private_key).",
            "Put the JSON key of the deployer service account there (gcloud iam "
            "service-accounts keys create), or fix cluster.key_file in config/environments.yaml.",
        )
    return key


def _require_tool(ctx: StepContext, name: str, why: str) -> None:
    if toolchain.locate(name, ctx.runner.tool_dirs) is None:
        install = toolchain.system_tools()[name].install
        raise StepFailure(f"{name} is not installed; {why}.", f"Install it: {install}.")


@contextmanager
def _gke(ctx: StepContext) -> Iterator[dict[str, str]]:
    env = ctx.environment
    cluster = env.cluster
    key_file = env.secret_path(cluster["key_file"])
    if not ctx.dry_run:
        _require_tool(ctx, "gcloud", f"environment {env.name}'s cluster is on GKE")
        _require_tool(
            ctx, "gke-gcloud-auth-plugin", "kubectl and helm need it to authenticate to GKE"
        )
        key_file = secret_file(env, cluster["key_file"], "cluster.key_file")
        check_service_account_key(key_file)
    with tempfile.TemporaryDirectory(prefix="deploy-gcloud-") as private:
        os.chmod(private, 0o700)
        variables = {
            "CLOUDSDK_CONFIG": str(Path(private) / "gcloud"),
            "KUBECONFIG": str(Path(private) / "kubeconfig"),
            "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
            "USE_GKE_GCLOUD_AUTH_PLUGIN": "True",
        }
        runner = ctx.runner.with_env(**variables)
        location = "--region" if cluster["zone"].count("-") == 1 else "--zone"
        try:
            runner.run(["gcloud", "auth", "activate-service-account", f"--key-file={key_file}"])
            runner.run(
                [
                    "gcloud",
                    "container",
                    "clusters",
                    "get-credentials",
                    cluster["cluster"],
                    f"--project={cluster['project']}",
                    f"{location}={cluster['zone']}",
                ]
            )
        except CommandFailed as failed:
            raise explain(
                failed, GCLOUD_FAILURES, "gcloud could not get the cluster's credentials"
            ) from None
        yield variables


def _credentials(ctx: StepContext) -> tuple[Path | None, str]:
    env = ctx.environment
    key = check_service_account_key(secret_file(env, env.cluster["key_file"], "cluster.key_file"))
    email = key.get("client_email", "?")
    return None, f"service-account key of {email} (Google checks it when gcloud logs in)"


KIND = ClusterKind[StepContext](
    required=("project", "zone", "cluster", "key_file"),
    open=_gke,
    credentials=_credentials,
    secret_files=("key_file",),
)
