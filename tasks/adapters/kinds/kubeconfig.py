"""`kind: kubeconfig`: a kubeconfig under the environment's secrets folder, decrypted."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.adapters.access import secret_file
from tasks.config.cluster_kind import ClusterKind
from tasks.config.context import StepContext


def _kubeconfig(ctx: StepContext) -> Path:
    env = ctx.environment
    if ctx.dry_run:
        return env.secret_path(env.cluster["kubeconfig"])
    return secret_file(env, env.cluster["kubeconfig"], "cluster.kubeconfig")


@contextmanager
def _open(ctx: StepContext) -> Iterator[dict[str, str]]:
    yield {"KUBECONFIG": str(_kubeconfig(ctx))}


def _credentials(ctx: StepContext) -> tuple[Path | None, str]:
    env = ctx.environment
    path = secret_file(env, env.cluster["kubeconfig"], "cluster.kubeconfig")
    return path, str(env.secrets_dir / env.cluster["kubeconfig"])


KIND = ClusterKind[StepContext](
    required=("kubeconfig",),
    open=_open,
    credentials=_credentials,
    secret_files=("kubeconfig",),
)
