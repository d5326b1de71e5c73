"""A cluster kind written as an operator would add one: `kind: command`, a cluster whose
kubeconfig a command prints (as `kind get kubeconfig --name NAME` does).

It is this module and a line in the registry's table (tasks/config/registry.py
CLUSTER_KINDS); tests/test_cluster_kinds.py adds that line for its tests.
"""

from __future__ import annotations

import os
import shlex
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.config.cluster_kind import ClusterKind
from tasks.config.context import StepContext


@contextmanager
def _open(ctx: StepContext) -> Iterator[dict[str, str]]:
    printed = ctx.runner.run(shlex.split(ctx.environment.cluster["command"]), quiet=True)
    with tempfile.TemporaryDirectory(prefix="deploy-command-kind-") as private:
        os.chmod(private, 0o700)
        kubeconfig = Path(private) / "kubeconfig"
        kubeconfig.write_text(printed.stdout)
        kubeconfig.chmod(0o600)
        yield {"KUBECONFIG": str(kubeconfig)}


KIND = ClusterKind[StepContext](
    required=("command",),
    open=_open,
    credentials=lambda ctx: (None, f"kubeconfig printed by `{ctx.environment.cluster['command']}`"),
)
