"""Cluster kinds: how an environment reaches its cluster, one module per kind.

`cluster.kind` in config/environments.yaml names a kind; the registry's table
(`CLUSTER_KINDS` in tasks/registry.py) maps it to its module here, which
defines `KIND`: the fields the kind reads under `cluster:`, which of them name
secret files, how its credentials are opened for a run and what `invoke
doctor` checks of them. Adding a kind is a module and a line in that table;
no step knows one kind from another.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.pipeline import StepContext


def _no_problem(fields: Mapping[str, str]) -> tuple[str, str] | None:
    return None


@dataclass(frozen=True)
class ClusterKind:
    """One way of reaching a cluster."""

    # The fields it needs under `cluster:` (besides `kind`), and those it may have.
    required: tuple[str, ...]
    # The environment variables (KUBECONFIG, ...) the steps' commands need, for the block.
    open: Callable[[StepContext], AbstractContextManager[dict[str, str]]]
    # For doctor: a kubeconfig whose certificates to check and where it comes from, or
    # None and what was checked instead.
    credentials: Callable[[StepContext], tuple[Path | None, str]]
    optional: tuple[str, ...] = ()
    # The fields naming a file under the environment's secrets folder: decrypt-secrets
    # requires them, keeps them 0600, and masks what they hold.
    secret_files: tuple[str, ...] = ()
    # What is wrong with the fields beyond their presence, as (field, problem), or None.
    problem: Callable[[Mapping[str, str]], tuple[str, str] | None] = _no_problem
    # What to do when nothing answers at the cluster's address ("" for the general advice).
    when_down: Callable[[Mapping[str, str]], str] = lambda fields: ""
