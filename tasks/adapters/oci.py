"""Charts from OCI registries (`oci://`), pulled by helm at a pinned version.

helm speaks the OCI protocol; this module only gives it what a chart
repository gets from tasks/steps/charts.py: the mirror map, retries with backoff
on a flaky network, a digest check, and an explanation when the pinned
version is not there, listing the versions the registry has. helm cannot
list them; the registry's tag list (`GET /v2/<name>/tags/list`, the
distribution API every OCI registry serves) does.

A mirror maps a reference prefix to another, e.g.

    oci://ghcr.io/traefik/helm: oci://127.0.0.1:5000/traefik/helm

A registry on the loopback interface is spoken to over plain HTTP
(`--plain-http`): that is what a registry serving a local copy runs, and TLS
to 127.0.0.1 could not be checked against a public name anyway.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from tasks.adapters import helm
from tasks.core import web
from tasks.core.errors import CommandFailed, StepFailure
from tasks.core.output import say
from tasks.core.runner import Runner

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
# helm's messages for a registry it could not talk to: worth another attempt.
TRANSIENT = re.compile(
    r"(connection refused|connection reset|no such host|i/o timeout|TLS handshake timeout"
    r"|context deadline exceeded|EOF|server misbehaving|response status code 5\d\d"
    r"|50[234] |Service Unavailable|Bad Gateway|Gateway Timeout)"
)
NOT_FOUND = re.compile(r"(not found|MANIFEST_UNKNOWN|NAME_UNKNOWN|manifest unknown)", re.I)


@dataclass(frozen=True)
class Reference:
    """An `oci://HOST/PATH/CHART` chart reference."""

    host: str
    path: str  # repository path in the registry, the chart's name last

    @classmethod
    def parse(cls, text: str) -> Reference:
        rest = text.removeprefix("oci://").strip("/")
        host, _, path = rest.partition("/")
        if not text.startswith("oci://") or not host or not path:
            raise StepFailure(
                f"{text!r} is not an OCI chart reference.",
                "Write oci://HOST/PATH/CHART, e.g. oci://ghcr.io/traefik/helm/traefik.",
            )
        return cls(host, path)

    def __str__(self) -> str:
        return f"oci://{self.host}/{self.path}"

    @property
    def plain_http(self) -> bool:
        return self.host.rsplit(":", 1)[0] in LOOPBACK_HOSTS or self.host.startswith("[::1]")

    @property
    def api(self) -> str:
        return f"{'http' if self.plain_http else 'https'}://{self.host}/v2/{self.path}"


def mirrored(reference: str, mirrors: dict[str, str]) -> str:
    """`reference` with the longest matching mirror prefix replaced; unchanged without one."""
    best = ""
    for original in mirrors:
        prefix = original.rstrip("/")
        if original.startswith("oci://") and (
            reference == prefix or reference.startswith(prefix + "/")
        ):
            best = max(best, prefix, key=len)
    if not best:
        return reference
    original = next(o for o in mirrors if o.rstrip("/") == best)
    return mirrors[original].rstrip("/") + reference[len(best) :]


def chart_name(reference: str) -> str:
    return Reference.parse(reference).path.rsplit("/", 1)[-1]


def registry_flags(reference: str) -> list[str]:
    """The flags helm needs to reach the registry of `reference`."""
    return ["--plain-http"] if Reference.parse(reference).plain_http else []


def tags(reference: str) -> list[str]:
    """The tags (chart versions) the registry holds for `reference`.

    An anonymous token is fetched when the registry asks for one (ghcr.io,
    Docker Hub), as the distribution token protocol describes. Raises
    HttpFailure when the registry gives no list.
    """
    url = f"{Reference.parse(reference).api}/tags/list"
    response = _get(url)
    challenge = response.headers.get("WWW-Authenticate", "")
    if response.status_code == 401 and challenge.lower().startswith("bearer "):
        fields = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        scope = {k: v for k, v in fields.items() if k in ("service", "scope")}
        token = _get(fields.get("realm", ""), params=scope).json()
        bearer = token.get("token") or token.get("access_token") or ""
        response = _get(url, headers={"Authorization": f"Bearer {bearer}"})
    if response.status_code == 404:
        return []
    if response.status_code >= 400:
        raise web.HttpFailure(f"HTTP {response.status_code} {response.reason}", True)
    # helm stores a version's "+" as "_", which tags may not hold.
    return [tag.replace("_", "+") for tag in response.json().get("tags") or []]


def _get(url: str, **kwargs: Any) -> requests.Response:
    return web.request("GET", url, retries=web.PROBES, label=f"  {web.mask(url)}", **kwargs)


def pull(
    runner: Runner,
    reference: str,
    version: str,
    destination: Path,
    *,
    original: str = "",
    digest: str = "",
) -> tuple[Path, str]:
    """`helm pull` the chart at `version` into `destination`; its archive and manifest digest.

    `original` is the reference as the chart names it, when `reference` is its
    mirror; `digest` the manifest digest it must have, when one is pinned. A
    registry that cannot be reached is tried again as downloads are.
    """
    delays = web.DOWNLOADS.pauses
    destination.mkdir(parents=True, exist_ok=True)
    command = helm.pull(reference, version, destination, *registry_flags(reference))
    archive = destination / f"{chart_name(reference)}-{version}.tgz"
    mirror_of = original if original != reference else ""
    shown = f"{reference} (mirror of {mirror_of})" if mirror_of else reference
    last = ""
    for attempt in range(len(delays) + 1):
        try:
            result = runner.run(command, quiet=True)
        except CommandFailed as failed:
            last = _last_error(failed.output)
            if NOT_FOUND.search(failed.output) and not TRANSIENT.search(failed.output):
                raise missing_version(reference, version, shown, mirror_of) from None
            if not TRANSIENT.search(failed.output):
                raise StepFailure(
                    f"helm could not pull {shown} {version}: {last}",
                    "Check the reference and the registry's access rules (a private "
                    "registry needs `helm registry login HOST` first).",
                    details=failed.output,
                ) from None
            if attempt < len(delays):
                say(f"  {reference}: {last}; retrying in {delays[attempt]:g}s")
                time.sleep(delays[attempt])
            continue
        if result.dry_run:
            return archive, ""
        found = re.search(r"Digest:\s*(sha256:[0-9a-f]{64})", result.stdout + result.stderr)
        pulled_digest = found.group(1) if found else ""
        if digest and pulled_digest != digest:
            archive.unlink(missing_ok=True)
            raise StepFailure(
                f"{shown} {version} has the digest {pulled_digest or 'unknown'}, not the "
                f"{digest} pinned for it. It was not kept.",
                "The tag was pushed again with other content, or a mirror serves another "
                "chart. Check the registry; pin the new digest only once you trust it.",
            )
        return archive, pulled_digest
    mirror_note = f" The mirror stands in for {mirror_of}: is it running?" if mirror_of else ""
    raise StepFailure(
        f"Could not reach the OCI registry of {shown}: {last} "
        f"(after {len(delays) + 1} attempts).{mirror_note}",
        "The registry or the network is having difficulties; re-run the step. For a network "
        "without outside access, map the registry to a mirror under `repository_mirrors` in "
        "config/environments.yaml or DEPLOY_CHART_MIRRORS "
        "(oci://ghcr.io/traefik/helm=oci://HOST:PORT/traefik/helm).",
    )


def missing_version(reference: str, version: str, shown: str, mirror_of: str = "") -> StepFailure:
    """The pinned version is not in the registry: say so, with the versions it has."""
    try:
        offered = tags(reference)
    except (web.HttpFailure, ValueError) as error:
        listing = f"Its tag list could not be read either ({error})."
    else:
        listing = (
            f"The versions it has: {', '.join(newest(offered))}."
            if offered
            else "It holds no version of that chart at all: check the reference."
        )
    lagging = (
        f"The mirror may lag behind {mirror_of}: push the chart into it, or remove it from "
        "repository_mirrors (DEPLOY_CHART_MIRRORS). "
        if mirror_of
        else ""
    )
    return StepFailure(
        f"That version is not in the registry: {shown} has no {version}. {listing}",
        lagging + "Fix the pinned version (Chart.yaml and Chart.lock, or the release's "
        "version: in config/environments.yaml), or wait until it is published.",
    )


def _last_error(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.lower().startswith("error")]
    text = (errors or lines or ["no output"])[-1]
    return text.removeprefix("Error: ").removeprefix("error: ")


def newest(versions: list[str], count: int = 5) -> list[str]:
    def key(version: str) -> tuple:
        core, _, pre = version.partition("-")
        numbers = tuple(int(p) if p.isdigit() else 0 for p in core.split("."))
        return (numbers, pre == "", pre)

    return sorted(versions, key=key, reverse=True)[:count]
