"""The environment under test: its URLs, components, cluster access and the suite's settings.

Everything comes from the environment registry, except what the environment
variables below override. `invoke smoke-test` sets KUBECONFIG and
SMOKE_KUBECTL; the project's own tests set the URLs to local servers.

    SMOKE_BINDER_URL, SMOKE_HUB_URL, SMOKE_FEDERATION_REDIRECT_URL
                            use this URL instead of the registry's urls.<key>
    SMOKE_NAMESPACE         check this namespace instead of the environment's
    KUBECONFIG              the cluster's credentials (cluster checks skip without)
    SMOKE_KUBECTL           the kubectl to use (default: the pinned one)
    SMOKE_ATTEMPTS          how often a request that failed for infrastructure reasons
                            (no answer, 502/503/504) is tried in all (3)
    SMOKE_WARMUP_SECONDS    how long answers of a proxy still warming up are retried (60)
    SMOKE_RETRY_SECONDS     pause between retries (3)
    SMOKE_REQUEST_SECONDS   timeout of one HTTP request (20)
    SMOKE_STALL_SECONDS     longest silence of a build's event stream (180)
    SMOKE_TEST_TIMEOUT      per-test timeout for every test, overriding each one's own
    SMOKE_LAUNCH_SPEC       what the launch check launches (<provider>/<spec>)
    SMOKE_SCRATCH_KEY       push key for the scratch repository (default: from the secrets)
    SMOKE_SCRATCH_REMOTE    git remote of the scratch repository
    SMOKE_SCRATCH_SPEC      <provider>/<spec prefix> BinderHub builds the scratch repository from
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tasks.config.registry import Environment
from tasks.core.runner import PROJECT_ROOT
from tasks.steps.smoke import ComponentState, component_states, register_secrets

URL_KEYS = ("binder", "hub", "federation_redirect")
SCRATCH_KEY_FILE = "binderhub-ci-repos-deploy-key"
# A known-good commit of an example repository: its image is almost always cached,
# so the launch check measures launching, not building.
DEFAULT_LAUNCH_SPEC = "gh/binder-examples/requirements/50533eb"
DEFAULT_SCRATCH_REMOTE = "git@github.com:binderhub-ci-repos/cached-minimal-dockerfile.git"
DEFAULT_SCRATCH_SPEC = "gh/binderhub-ci-repos/cached-minimal-dockerfile"


@dataclass(frozen=True)
class Settings:
    """How patient the suite is; small values keep the project's own tests fast."""

    attempts: int = 3
    warmup_seconds: float = 60
    retry_seconds: float = 3
    request_seconds: float = 20
    stall_seconds: float = 180
    test_timeout: float | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        def number(name: str, default: float) -> float:
            raw = environ.get(name, "")
            return float(raw) if raw else default

        timeout = environ.get("SMOKE_TEST_TIMEOUT", "")
        return cls(
            attempts=max(1, int(number("SMOKE_ATTEMPTS", cls.attempts))),
            warmup_seconds=number("SMOKE_WARMUP_SECONDS", cls.warmup_seconds),
            retry_seconds=number("SMOKE_RETRY_SECONDS", cls.retry_seconds),
            request_seconds=number("SMOKE_REQUEST_SECONDS", cls.request_seconds),
            stall_seconds=number("SMOKE_STALL_SECONDS", cls.stall_seconds),
            test_timeout=float(timeout) if timeout else None,
        )


@dataclass(frozen=True)
class Target:
    """What the suite validates, resolved once per session."""

    env: Environment
    urls: dict[str, str]
    components: dict[str, ComponentState]
    namespace: str
    kubeconfig: Path | None
    kubectl: str | None
    settings: Settings
    launch_spec: str
    scratch_key: Path
    scratch_remote: str
    scratch_spec: str
    # Answers from a proxy whose routes are not registered yet are retried until then.
    warm_until: float = field(default=0.0)

    @classmethod
    def load(cls, env: Environment, environ: Mapping[str, str] = os.environ) -> Target:
        urls = {
            key: (environ.get(f"SMOKE_{key.upper()}_URL") or env.urls.get(key, "")).rstrip("/")
            for key in URL_KEYS
        }
        settings = Settings.from_environ(environ)
        kubeconfig = environ.get("KUBECONFIG", "")
        return cls(
            env=env,
            urls=urls,
            components=component_states(env),
            namespace=environ.get("SMOKE_NAMESPACE") or env.target().namespace,
            kubeconfig=Path(kubeconfig) if kubeconfig else None,
            kubectl=environ.get("SMOKE_KUBECTL") or None,
            settings=settings,
            launch_spec=environ.get("SMOKE_LAUNCH_SPEC") or DEFAULT_LAUNCH_SPEC,
            scratch_key=Path(environ.get("SMOKE_SCRATCH_KEY") or env.secret_path(SCRATCH_KEY_FILE)),
            scratch_remote=environ.get("SMOKE_SCRATCH_REMOTE") or DEFAULT_SCRATCH_REMOTE,
            scratch_spec=environ.get("SMOKE_SCRATCH_SPEC") or DEFAULT_SCRATCH_SPEC,
            warm_until=time.monotonic() + settings.warmup_seconds,
        )

    def url(self, key: str) -> str:
        """The public URL `key`, or skip: an environment without one is not served publicly.

        On a local cluster KWOK simulates the pods: they run no container, so
        nothing answers HTTP there unless a SMOKE_*_URL points elsewhere.
        """
        if not self.urls.get(key):
            served = (
                ": its pods are simulated by KWOK and serve no HTTP" if self.env.is_local else ""
            )
            pytest.skip(f"environment {self.env.name} has no public URL (urls.{key}){served}")
        return self.urls[key]

    def require(self, component: str) -> None:
        """Skip unless the environment runs `component`, saying which values file decided."""
        state = self.components[component]
        if not state.enabled:
            pytest.skip(f"environment {self.env.name} {state.reason}")

    def require_push_key(self) -> Path:
        if not self.scratch_key.is_file():
            shown = (
                self.scratch_key.relative_to(PROJECT_ROOT)
                if self.scratch_key.is_relative_to(PROJECT_ROOT)
                else self.scratch_key
            )
            pytest.skip(
                f"environment {self.env.name} provides no push key for a scratch repository "
                f"({shown})"
            )
        return self.scratch_key

    def register_secrets(self) -> None:
        """Mask every value of the environment's secret layers in what the suite prints."""
        register_secrets(self.env)
