"""Cluster kinds: how an environment reaches its cluster, one module per kind.

`cluster.kind` names a kind; `CLUSTER_KINDS` in tasks/config/registry.py maps it to
its module in tasks/adapters/kinds/, whose `KIND` says everything about it. Adding a kind is a
module and a line in that table; no step knows one kind from another.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

# The context a kind's functions get: a step's (tasks/config/context.py), which this
# module, read by the registry that the context is made of, does not import.
Step = TypeVar("Step")


@dataclass(frozen=True)
class ClusterKind(Generic[Step]):
    """One way of reaching a cluster."""

    # The fields it needs under `cluster:` (besides `kind`), and those it may have.
    required: tuple[str, ...]
    # The environment variables (KUBECONFIG, ...) the steps' commands need, for the block.
    open: Callable[[Step], AbstractContextManager[dict[str, str]]]
    # For doctor: a kubeconfig whose certificates to check and where it comes from, or
    # None and what was checked instead.
    credentials: Callable[[Step], tuple[Path | None, str]]
    optional: tuple[str, ...] = ()
    # The fields naming a file under the environment's secrets folder: decrypt-secrets
    # requires them, keeps them 0600, and masks what they hold.
    secret_files: tuple[str, ...] = ()
    # What is wrong with the fields beyond their presence, as (field, problem), or None.
    problem: Callable[[Mapping[str, str]], tuple[str, str] | None] = lambda fields: None
    # What to do when nothing answers at the cluster's address ("" for the general advice).
    when_down: Callable[[Mapping[str, str]], str] = lambda fields: ""
