"""A registry file written by a test, read through DEPLOY_REGISTRY like an operator's rehearsal.

Lets a test describe environments (a kubeconfig in a temporary secrets folder,
a bastion on loopback, a Grafana on 127.0.0.1) in the registry's own format,
so they pass through the same loading and checking as config/environments.yaml.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks.run import current


def use_registry(
    monkeypatch: pytest.MonkeyPatch, folder: Path, environments: dict[str, dict[str, Any]]
) -> Path:
    """Write a registry of `environments` under `folder` and make the pipeline load it."""
    environments = copy.deepcopy(environments)
    for body in environments.values():
        body.setdefault("release", "binder")
        body.setdefault("namespace", "default")
        body.setdefault("secrets", {"dir": str(folder / "secrets")})
        # The public demo key: decrypt-secrets, run by a deploy, can use it in any checkout.
        body["secrets"].setdefault(
            "key", {"source": "file", "name": "demo", "path": "config/demo/git-crypt-demo.key"}
        )
    path = folder / "environments.yaml"
    path.write_text(
        yaml.safe_dump({"chart": "mybinder", "environments": environments}, sort_keys=False)
    )
    monkeypatch.setenv("DEPLOY_REGISTRY", str(path))
    current().use_registry(None)
    return path
