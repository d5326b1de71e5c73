"""A small Kubernetes API client for the stand-ins and the benchmarks: requests over the
kubeconfig's own client certificate, no kubectl process per call.

The pipeline itself reaches the API only through kubectl (`kubectl proxy` for
wait-rollout), so every way an operator authenticates works; the local
clusters' kubeconfigs hold plain certificate files, which is all this needs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
import yaml


class KubeApi:
    def __init__(self, kubeconfig: Path) -> None:
        config = yaml.safe_load(Path(kubeconfig).read_text())
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]
        self.base = cluster["server"].rstrip("/")
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.verify = cluster["certificate-authority"]
        self.session.cert = (user["client-certificate"], user["client-key"])

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content: str = "application/json",
        **params: Any,
    ) -> Any:
        response = self.session.request(
            method,
            self.base + path,
            params=params or None,
            data=None if body is None else json.dumps(body),
            headers={"Content-Type": content},
            timeout=30,
        )
        if response.status_code >= 300:
            raise KubeError(response.status_code, f"{method} {path}: {response.text[:300]}")
        return response.json() if response.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, **params)

    def items(self, path: str, **params: Any) -> list[dict[str, Any]]:
        return self.get(path, **params).get("items") or []

    def create(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, body)

    def patch(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("PATCH", path, body, "application/merge-patch+json")

    def apply(self, path: str, body: dict[str, Any], manager: str) -> Any:
        """Server-side apply: `body` becomes what `manager` says of the object, fields it no
        longer sets included."""
        return self.request(
            "PATCH", path, body, "application/apply-patch+yaml", fieldManager=manager, force="true"
        )

    def delete(self, path: str, **params: Any) -> None:
        try:
            self.request("DELETE", path, **params)
        except KubeError as error:
            if error.status != 404:
                raise

    def watch(
        self, path: str, version: str, seconds: int = 60, **params: Any
    ) -> Iterator[dict[str, Any]]:
        """The watch events of `path` from `version`, until the server ends the watch."""
        response = self.session.get(
            self.base + path,
            params={"watch": "1", "resourceVersion": version, "timeoutSeconds": seconds, **params},
            stream=True,
            timeout=(5, seconds + 10),
        )
        with response:
            for line in response.iter_lines(chunk_size=None):
                if line:
                    yield json.loads(line)


class KubeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
