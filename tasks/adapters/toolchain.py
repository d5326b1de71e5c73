"""invoke tools: the deployment tools, at the versions pinned in config/tools.yaml.

helm and kubectl go into `.local/tools/bin`, searched before PATH, from their
release downloads (refused unless the SHA-256 is the pinned one, retried on a
flaky network: the most common reason a deploy failed before it began), or else
from the Go builds of `invoke cluster.build`. git-crypt, gcloud and its GKE plugin
belong to the system's packages: they are checked, and the fix says how to install them.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import re
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

import yaml
from invoke.exceptions import Exit

from tasks.adapters import go_builds
from tasks.config.context import StepContext
from tasks.config.registry import Environment, Registry
from tasks.core import web
from tasks.core.errors import StepFailure
from tasks.core.output import say, warn
from tasks.core.runner import PROJECT_ROOT
from tasks.core.step import Step

TOOLS_BIN = PROJECT_ROOT / ".local" / "tools" / "bin"
SOURCES = ("auto", "download", "go")

# What each tool prints its own version with; the first x.y.z in it is the version.
VERSION_ARGS: dict[str, list[str]] = {
    "helm": ["version", "--short"],
    "kubectl": ["version", "--client"],
    "git-crypt": ["--version"],
    "gcloud": ["version"],
    "gke-gcloud-auth-plugin": ["--version"],
}
_VERSION = re.compile(r"v?\d+\.\d+\.\d+")


@dataclass(frozen=True)
class Download:
    """An official release download of a tool, and the checksum it must have."""

    name: str
    version: str
    url: str
    sha256: str
    member: str = ""  # the binary's path inside a .tar.gz; "" when the URL is the binary


@dataclass(frozen=True)
class SystemTool:
    """A tool the system's packages provide: checked, never installed by the pipeline."""

    name: str
    version: str  # "" when any version will do
    install: str
    needed_by: str = ""  # "gke": only environments of that cluster kind need it


@dataclass(frozen=True)
class ToolState:
    """Which binary a step would run for a tool, and whether it is the pinned one."""

    name: str
    wanted: str  # the pinned version, "" when any will do
    path: Path | None
    version: str  # "" when not found or it does not say
    fix: str

    @property
    def ok(self) -> bool:
        if self.path is None:
            return False
        return not self.wanted or same_version(self.version, self.wanted)

    def describe(self, with_fix: bool = True) -> str:
        fix = f" {self.fix}" if with_fix else ""
        if self.path is None:
            return f"{self.name}: not found.{fix}"
        shown = _shown(self.path)
        version = self.version or "unknown version"
        if self.ok:
            return f"{self.name} {version} ({shown})"
        return f"{self.name} {version} ({shown}), but {self.wanted} is pinned.{fix}"


def _config() -> dict:
    return yaml.safe_load(go_builds.TOOLS_FILE.read_text()) or {}


def downloads() -> dict[str, Download]:
    """The pinned release downloads of config/tools.yaml, by tool name."""
    config = _config()
    found = {}
    for name, entry in (config.get("downloads") or {}).items():
        version = str(config[entry["version_of"]])
        found[name] = Download(
            name=name,
            version=version,
            url=entry["url"].format(version=version),
            sha256=str(entry.get("sha256") or "").lower(),
            member=entry.get("member", ""),
        )
    return found


def system_tools() -> dict[str, SystemTool]:
    config = _config()
    return {
        name: SystemTool(
            name=name,
            version=str(config[entry["version_of"]]) if entry.get("version_of") else "",
            install=" ".join(str(entry["install"]).split()),
            needed_by=entry.get("needed_by", ""),
        )
        for name, entry in (config.get("system") or {}).items()
    }


def search_dirs() -> list[Path]:
    """Where the pinned tools live, in the order steps search them, before PATH."""
    dirs = [TOOLS_BIN]
    for name in downloads():
        try:
            folder = go_builds.binary(name).parent
        except Exit:
            continue
        if folder not in dirs:
            dirs.append(folder)
    return dirs


def same_version(found: str, wanted: str) -> bool:
    return found.lstrip("v") == wanted.lstrip("v")


def version_of(path: Path, name: str | None = None) -> str:
    """The version a tool binary reports, "" when it cannot run or does not say."""
    args = VERSION_ARGS.get(name or path.name, ["--version"])
    found = _VERSION.search(go_builds.version_output(path, args))
    return found.group(0) if found else ""


def locate(name: str, dirs: list[Path] | None = None) -> Path | None:
    """The binary a step's command `name` runs: the tool folders first, then PATH."""
    search = search_dirs() if dirs is None else dirs
    path = os.pathsep.join([*map(str, search), os.environ.get("PATH", "")])
    found = shutil.which(name, path=path)
    return Path(found) if found else None


def needed(env: Environment | None, registry: Registry | None = None) -> list[str]:
    """The tools a run for `env` needs (for every environment of the registry without one)."""
    kinds = {env.cluster.kind} if env else set()
    if env is None and registry is not None:
        kinds = {e.cluster.kind for e in registry.environments.values()}
    names = list(downloads())
    names += [t.name for t in system_tools().values() if not t.needed_by or t.needed_by in kinds]
    return names


def state(name: str, dirs: list[Path] | None = None) -> ToolState:
    """What a step would run for `name`, at which version, and the fix when it is wrong."""
    pinned = downloads().get(name)
    system = system_tools().get(name)
    path = locate(name, dirs)
    if pinned is not None:
        wanted, fix = pinned.version, "Run `invoke tools` to install the pinned version."
    elif system is not None:
        wanted, fix = system.version, f"Install it: {system.install}."
    else:
        wanted, fix = "", ""
    return ToolState(name, wanted, path, version_of(path, name) if path else "", fix)


def describe_tools(env: Environment | None = None) -> list[str]:
    """A line per tool a run uses: which binary, which version, and what is wrong."""
    return [state(name).describe() for name in needed(env)]


def install_download(download: Download, bin_dir: Path | None = None) -> Path:
    """Download, verify and install one tool; nothing is written unless the checksum matches.

    Raises HttpFailure when the download cannot be reached.
    """
    if not re.fullmatch(r"[0-9a-f]{64}", download.sha256):
        raise StepFailure(
            f"config/tools.yaml records no SHA-256 for {download.name} {download.version}, "
            "so its download cannot be verified.",
            f"Add the checksum published at {download.url}.sha256sum (or .sha256) under "
            f"downloads.{download.name}.sha256 in config/tools.yaml.",
        )
    bin_dir = TOOLS_BIN if bin_dir is None else bin_dir
    say(f"downloading {download.url}")
    content = web.fetch(download.url)
    digest = hashlib.sha256(content).hexdigest()
    if digest != download.sha256:
        raise StepFailure(
            f"The download of {download.name} {download.version} has SHA-256 {digest}, "
            f"not the {download.sha256} config/tools.yaml pins: refused, nothing was installed.",
            "Retry later (a proxy or mirror may have served a broken file). If the release "
            "was re-published, check the new checksum at its source before updating "
            "config/tools.yaml.",
            details=f"from {download.url}",
        )
    binary = _extract(download, content) if download.member else content
    bin_dir.mkdir(parents=True, exist_ok=True)
    partial_file = bin_dir / f".{download.name}.partial"
    try:
        partial_file.write_bytes(binary)
        partial_file.chmod(0o755)
        reported = version_of(partial_file, download.name)
        if not same_version(reported, download.version):
            raise StepFailure(
                f"The verified download of {download.name} reports version "
                f"{reported or 'nothing'}, not {download.version}.",
                "Check the URL under downloads in config/tools.yaml.",
            )
        target = bin_dir / download.name
        partial_file.replace(target)
    finally:
        partial_file.unlink(missing_ok=True)
    return target


def _extract(download: Download, archive: bytes) -> bytes:
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            member = tar.extractfile(download.member)
            if member is None:
                raise KeyError(download.member)
            return member.read()
    except (tarfile.TarError, KeyError, EOFError) as error:
        raise StepFailure(
            f"The download of {download.name} holds no {download.member} ({error}).",
            f"Check downloads.{download.name}.member in config/tools.yaml.",
        ) from None


def link_go_build(name: str, bin_dir: Path | None = None) -> Path:
    """Put the pinned Go build of `name` (built first if needed) into the tools folder."""
    bin_dir = TOOLS_BIN if bin_dir is None else bin_dir
    component = go_builds.BINARIES[name]
    version = go_builds.pinned_versions()[component.key]
    built = go_builds.component_dir(component) / "bin" / name
    if not same_version(version_of(built, name), version):
        cache = go_builds.CACHE_ROOT
        cache.mkdir(parents=True, exist_ok=True)
        # The lock `invoke cluster.build` takes: two builds at once only slow both.
        with (cache / ".build.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            go_builds.build_component(
                component, version, [name], go_builds.component_dir(component), echo=say
            )
    bin_dir.mkdir(parents=True, exist_ok=True)
    link = bin_dir / f".{name}.link"
    link.unlink(missing_ok=True)
    link.symlink_to(built)
    link.replace(bin_dir / name)
    return bin_dir / name


def ensure(
    download: Download,
    *,
    source: str = "auto",
    bin_dir: Path | None = None,
) -> str:
    """Make the tools folder hold `download`'s tool at its pinned version; say how."""
    bin_dir = TOOLS_BIN if bin_dir is None else bin_dir
    target = bin_dir / download.name
    if target.exists() and same_version(version_of(target, download.name), download.version):
        return "already there"
    if source in ("auto", "download"):
        try:
            install_download(download, bin_dir)
            return "downloaded and verified"
        except web.HttpFailure as error:
            if source == "download":
                raise StepFailure(
                    f"{download.url} could not be fetched: {error}.",
                    "Check the network, or run `invoke tools --source=go` to build it from "
                    "the Go module proxy.",
                ) from None
            say(f"{download.name}: the download cannot be reached ({error}); using the Go build")
        except StepFailure as failure:
            if source == "download" or "records no SHA-256" not in failure.why:
                raise
            warn(f"{failure.why} Using the Go build instead.")
    try:
        link_go_build(download.name, bin_dir)
    except Exit as error:
        raise StepFailure(
            f"{download.name} {download.version} could neither be downloaded nor built.",
            "Check the network and the Go toolchain (invoke cluster.build shows the build).",
            details=str(error.message),
        ) from None
    return "Go build from the module proxy"


def ensure_tools(ctx: StepContext, *, source: str = "auto", check: bool = False) -> str:
    """`invoke tools`: install what is missing (unless `check`), then report every tool."""
    if source not in SOURCES:
        raise StepFailure(f"Unknown --source {source!r}.", f"Use one of: {', '.join(SOURCES)}.")
    if not check:
        for download in downloads().values():
            if ctx.dry_run:
                say(f"[dry-run] would put {download.name} {download.version} into {TOOLS_BIN}")
            else:
                say(f"{download.name} {download.version}: {ensure(download, source=source)}")
    problems = []
    for name in needed(ctx.env, ctx.registry):
        tool = state(name)
        say(("OK    " if tool.ok else "FAIL  ") + tool.describe())
        if not tool.ok:
            problems.append(tool)
    if problems:
        raise StepFailure(
            "Not every tool is present at its pinned version: "
            + ", ".join(t.name for t in problems)
            + ".",
            " ".join(dict.fromkeys(t.fix for t in problems)),
        )
    return "every tool at its pinned version"


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


TOOLS = Step("tools", ensure_tools, needs_env=False)
