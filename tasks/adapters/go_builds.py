"""The pinned tools: built from source once, cached per version, handed out by path.

Kubernetes, etcd, KWOK and Helm for the local clusters, the CNCF distribution
registry (the OCI registry the tests and the demo serve charts from), and
actionlint for the CI workflow (.github/workflows/). Every version comes from
`config/tools.yaml`; nothing else in the project names one. The local Go toolchain
builds them through the Go module proxy (the machine has no other way to fetch
them) into `~/.cache/binder-deploy/<tool>-<version>/`: `bin/`, `logs/` (one per
binary) and `module/` (a generated wrapper module). Go's own caches stay where Go
keeps them, so a rebuild after deleting `bin/` is quick.

`k8s.io/kubernetes` and `go.etcd.io/etcd/server/v3` cannot be `go install`ed: their
go.mod files carry `replace` directives, so they are built from a wrapper module
that requires them. Kubernetes also requires its staging modules (`k8s.io/api`,
`k8s.io/client-go`, ...) at the placeholder `v0.0.0`; the wrapper replaces each
with its published `v0.<minor>.<patch>`, or with the closest published v0 release
and a warning (see `_staging_replacements`).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from invoke.exceptions import Exit

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_FILE = REPO_ROOT / "config" / "tools.yaml"
CACHE_ROOT = Path.home() / ".cache" / "binder-deploy"
GO_FALLBACK = Path("/usr/local/go/bin/go")
TIMINGS = "build-times.json"

Echo = Callable[[str], None]


@dataclass(frozen=True)
class Component:
    """One pinned source module and the binaries built from it."""

    key: str
    module: str
    # binary name -> Go package path of its main package
    packages: dict[str, str]
    # "install": `go install pkg@version`; "wrapper": build inside a generated module
    method: str
    ldflags: Callable[[str], list[str]] = lambda v: []
    # the command printing a binary's version, where it is not `--version`
    version_args: dict[str, list[str]] = field(default_factory=dict)
    version_text: Callable[[str], str] = lambda v: v
    # rough cold-build minutes on 2 cores, shown before each build, where not one
    cold_minutes: dict[str, int] = field(default_factory=dict)

    def version_command(self, name: str) -> list[str]:
        return self.version_args.get(name, ["--version"])


def _kubernetes_ldflags(version: str) -> list[str]:
    major, minor, _ = version.lstrip("v").split(".", 2)
    release_date = _release_date("k8s.io/kubernetes", version)
    flags = []
    # Both packages carry the version: component-base for the servers and kubectl,
    # client-go for what clients send as their user agent.
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        for name, value in (
            ("gitVersion", version),
            ("gitMajor", major),
            ("gitMinor", minor),
            ("gitTreeState", "clean"),
            ("gitCommit", ""),
            ("buildDate", release_date),
        ):
            flags.append(f"-X {package}.{name}={value}")
    return flags


def _kwok_ldflags(version: str) -> list[str]:
    kubernetes = pinned_versions()["kubernetes"]
    return [
        f"-X sigs.k8s.io/kwok/pkg/consts.Version={version.lstrip('v')}",
        f"-X sigs.k8s.io/kwok/pkg/consts.KubeVersion={kubernetes.lstrip('v')}",
    ]


def _helm_ldflags(version: str) -> list[str]:
    return [
        f"-X helm.sh/helm/v4/internal/version.version={version}",
        "-X helm.sh/helm/v4/internal/version.gitTreeState=clean",
    ]


COMPONENTS: tuple[Component, ...] = (
    Component(
        key="kubernetes",
        module="k8s.io/kubernetes",
        packages={
            name: f"k8s.io/kubernetes/cmd/{name}"
            for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
        },
        method="wrapper",
        ldflags=_kubernetes_ldflags,
        version_args={"kubectl": ["version", "--client"]},
        cold_minutes={"kube-apiserver": 3},
    ),
    Component(
        key="etcd",
        module="go.etcd.io/etcd/server/v3",
        # server/v3's root package is the etcd main (it calls etcdmain.Main)
        packages={"etcd": "go.etcd.io/etcd/server/v3"},
        method="wrapper",
        version_text=lambda v: f"etcd Version: {v.lstrip('v')}",
    ),
    Component(
        key="kwok",
        module="sigs.k8s.io/kwok",
        packages={"kwok": "sigs.k8s.io/kwok/cmd/kwok", "kwokctl": "sigs.k8s.io/kwok/cmd/kwokctl"},
        method="install",
        ldflags=_kwok_ldflags,
    ),
    Component(
        key="helm",
        module="helm.sh/helm/v4",
        packages={"helm": "helm.sh/helm/v4/cmd/helm"},
        method="install",
        ldflags=_helm_ldflags,
        version_args={"helm": ["version", "--short"]},
        cold_minutes={"helm": 2},
    ),
    Component(
        key="distribution",
        module="github.com/distribution/distribution/v3",
        # The CNCF distribution registry: a real OCI registry on loopback, into which
        # the tests and the demo push the charts they resolve from `oci://`.
        packages={"registry": "github.com/distribution/distribution/v3/cmd/registry"},
        method="install",
        ldflags=lambda v: [f"-X github.com/distribution/distribution/v3/version.version={v}"],
        cold_minutes={"registry": 2},
    ),
    Component(
        key="actionlint",
        module="github.com/rhysd/actionlint",
        packages={"actionlint": "github.com/rhysd/actionlint/cmd/actionlint"},
        # No ldflags: `go install module@version` records the version in the binary's
        # build information, which `actionlint --version` prints.
        method="install",
    ),
)

BINARIES: dict[str, Component] = {name: c for c in COMPONENTS for name in c.packages}


def pinned_versions() -> dict[str, str]:
    """The tool versions pinned in config/tools.yaml, by key (kubernetes, etcd, kwok, helm, ...)."""
    with TOOLS_FILE.open() as f:
        data = yaml.safe_load(f)
    return {str(k): str(v) for k, v in data.items()}


def component_dir(component: Component, root: Path | None = None) -> Path:
    """The cache folder of a component at its pinned version."""
    version = pinned_versions()[component.key]
    return (root or CACHE_ROOT) / f"{component.key}-{version}"


def binary(name: str) -> Path:
    """Path of a cached, pinned tool (helm, kubectl, kube-apiserver, etcd, kwok, kwokctl, ...).

    Only checks that the binary is there; `ensure_built()` also checks its version.
    """
    if name not in BINARIES:
        raise Exit(f"{name!r} is not a pinned cluster tool; known: {', '.join(sorted(BINARIES))}.")
    path = component_dir(BINARIES[name]) / "bin" / name
    if not path.is_file():
        raise Exit(
            f"{name} is not built yet (looked for {path}). Run `invoke cluster.build` "
            "to build the pinned cluster tools."
        )
    return path


def ensure_built(echo: Echo = print, root: Path | None = None) -> dict[str, Path]:
    """Build every pinned tool that is missing or reports the wrong version.

    Returns binary name -> path. Binaries already cached at the right version are
    reused without invoking Go.
    """
    cache = root or CACHE_ROOT
    cache.mkdir(parents=True, exist_ok=True)
    # Two sessions building the same tool at once would only waste the two cores.
    with (cache / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _ensure_built(echo, root)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _ensure_built(echo: Echo, root: Path | None) -> dict[str, Path]:
    versions = pinned_versions()
    paths: dict[str, Path] = {}
    for component in COMPONENTS:
        version = versions[component.key]
        bin_dir = component_dir(component, root) / "bin"
        stale = [
            name
            for name in component.packages
            if not _has_version(component, bin_dir / name, version)
        ]
        if stale:
            build_component(component, version, stale, component_dir(component, root), echo)
            still_wrong = [
                name for name in stale if not _has_version(component, bin_dir / name, version)
            ]
            if still_wrong:
                raise Exit(
                    f"Built {', '.join(still_wrong)} from {component.module}@{version}, but "
                    f"`{' '.join(component.version_command(still_wrong[0]))}` does not report "
                    f"{component.version_text(version)!r}. "
                    f"Logs: {component_dir(component, root) / 'logs'}."
                )
        for name in component.packages:
            paths[name] = bin_dir / name
    return paths


def version_output(path: Path, args: list[str]) -> str:
    """What a binary prints for its version command, or "" when it cannot run."""
    try:
        result = subprocess.run(
            [str(path), *args], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout + result.stderr


def _has_version(component: Component, path: Path, version: str) -> bool:
    if not path.is_file():
        return False
    expected = re.escape(component.version_text(version))
    # v1.36.3 must not pass for v1.36.30
    output = version_output(path, component.version_command(path.name))
    return re.search(rf"{expected}(?![\w.])", output) is not None


def go_binary() -> str:
    """The Go toolchain used for the builds."""
    found = shutil.which("go")
    if found:
        return found
    if GO_FALLBACK.is_file():
        return str(GO_FALLBACK)
    raise Exit(
        "No Go toolchain found (looked on PATH and at /usr/local/go/bin/go); "
        "it builds the cluster tools."
    )


def go_env() -> dict[str, str]:
    """Environment for every go command: the local toolchain only, no workspace, static binaries."""
    return {**os.environ, "GOTOOLCHAIN": "local", "GOWORK": "off", "CGO_ENABLED": "0"}


def build_parallelism() -> int:
    """Packages go builds at once; bounded so a build leaves a small machine usable."""
    return max(1, min(os.cpu_count() or 1, 4))


class GoFailure(Exception):
    """A go command failed; its full output is in `log`."""

    def __init__(self, args: list[str], returncode: int, log: Path) -> None:
        super().__init__(f"{' '.join(args)} exited {returncode}")
        self.args_ = args
        self.returncode = returncode
        self.log = log


def run_go(args: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None) -> str:
    """Run `go <args>` with its output appended to `log`; return stdout on success."""
    log.parent.mkdir(parents=True, exist_ok=True)
    cwd.mkdir(parents=True, exist_ok=True)
    command = [go_binary(), *args]
    with log.open("a") as f:
        f.write(f"\n$ (cd {cwd} && {' '.join(command)})\n")
        f.flush()
        result = subprocess.run(
            command, cwd=cwd, env=env or go_env(), capture_output=True, text=True, check=False
        )
        f.write(result.stdout)
        f.write(result.stderr)
    if result.returncode != 0:
        raise GoFailure(args, result.returncode, log)
    return result.stdout


def build_failure_message(module: str, version: str, what: str, failure: GoFailure) -> str:
    """One paragraph naming what failed, the module and version, and where the full log is."""
    reason = _first_error_line(failure.log)
    message = (
        f"Building {what} from {module}@{version} failed (`go {failure.args_[0]}` exited "
        f"{failure.returncode})."
    )
    if reason:
        message += f" First error: {reason.rstrip('.')}."
    message += f" Full log: {failure.log}"
    return message


def _first_error_line(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    # The log holds several commands; only the output of the last one matters.
    starts = [i for i, line in enumerate(lines) if line.startswith("$ (cd ")]
    tail = lines[starts[-1] + 1 :] if starts else lines
    # `go mod download -json` reports failures inside its JSON output.
    for line in tail:
        text = line.strip().rstrip(",")
        if text.startswith('"Error":'):
            try:
                return _shorten(json.loads("{" + text + "}")["Error"])
            except ValueError:
                return _shorten(text)
    for line in tail:
        text = line.strip()
        if not text or text.startswith(("go: downloading", "go: finding", "{", "}", '"')):
            continue
        return _shorten(text)
    return ""


def _shorten(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def build_component(
    component: Component, version: str, names: list[str], cache: Path, echo: Echo = print
) -> None:
    """Build `names` from `component` at `version` into `cache`/bin, logging to `cache`/logs.

    Raises Exit with a one-paragraph message (module, version, log path) on failure.
    """
    bin_dir = cache / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    log_dir = cache / "logs"
    timings = _load_timings(cache)
    module_dir = cache / "module"
    if component.method == "wrapper":
        log = log_dir / "module.log"
        log.unlink(missing_ok=True)
        echo(f"preparing the wrapper module for {component.module}@{version}...")
        try:
            _prepare_wrapper(component, version, module_dir, log, echo)
        except GoFailure as failure:
            raise Exit(
                build_failure_message(component.module, version, "the wrapper module", failure)
            ) from None
    ldflags = " ".join(["-s", "-w", *component.ldflags(version)])
    flags = ["-p", str(build_parallelism()), "-trimpath", "-ldflags", ldflags]
    for name in names:
        minutes = timings.get(name, component.cold_minutes.get(name, 1) * 60) / 60
        estimate = f"~{max(1, round(minutes))} min" if minutes >= 1 else "under a minute"
        echo(f"building {name} {version} (cold builds take {estimate})...")
        log = log_dir / f"{name}.log"
        log.unlink(missing_ok=True)
        target = bin_dir / name
        started = time.monotonic()
        try:
            if component.method == "wrapper":
                partial = bin_dir / f".{name}.partial"
                run_go(
                    ["build", *flags, "-o", str(partial), component.packages[name]],
                    cwd=module_dir,
                    log=log,
                )
                partial.replace(target)
            else:
                staging = cache / "install"
                env = go_env()
                env["GOBIN"] = str(staging)
                run_go(
                    ["install", *flags, f"{component.packages[name]}@{version}"],
                    cwd=cache,
                    log=log,
                    env=env,
                )
                (staging / name).replace(target)
                staging.rmdir()
        except GoFailure as failure:
            raise Exit(build_failure_message(component.module, version, name, failure)) from None
        elapsed = time.monotonic() - started
        timings[name] = elapsed
        (cache / TIMINGS).write_text(json.dumps(timings, indent=2) + "\n")
        echo(f"built {name} {version} in {_duration(elapsed)} -> {target}")


def _prepare_wrapper(
    component: Component, version: str, module_dir: Path, log: Path, echo: Echo
) -> None:
    info = json.loads(
        run_go(
            ["mod", "download", "-json", f"{component.module}@{version}"], cwd=module_dir, log=log
        )
    )
    upstream = Path(info["GoMod"]).read_text()
    placeholders = _placeholder_requirements(upstream)
    replacements = _staging_replacements(placeholders, version, module_dir, log, echo)
    go_directive = next(
        (line.split()[1] for line in upstream.splitlines() if line.startswith("go ")), None
    )
    lines = [
        "// Generated by binder-deploy's `invoke cluster.build`; lets go build a module",
        "// whose own go.mod carries replace directives.",
        f"module binder-deploy.local/build/{component.key}",
        "",
    ]
    if go_directive:
        lines += [f"go {go_directive}", ""]
    lines += [f"require {component.module} {version}", ""]
    lines += [f"replace {path} => {path} {target}" for path, target in sorted(replacements.items())]
    (module_dir / "go.mod").write_text("\n".join(lines) + "\n")
    (module_dir / "go.sum").unlink(missing_ok=True)
    packages = [f"{pkg}@{version}" for pkg in component.packages.values()]
    run_go(["get", *packages], cwd=module_dir, log=log)


def _placeholder_requirements(go_mod: str) -> list[str]:
    """Modules a go.mod requires at exactly v0.0.0 (Kubernetes' staging modules)."""
    found = []
    in_block = False
    for raw in go_mod.splitlines():
        line = raw.split("//", 1)[0].strip()
        if line.startswith("require ("):
            in_block = True
            continue
        if in_block and line == ")":
            in_block = False
            continue
        if line.startswith("require "):
            line = line[len("require ") :].strip()
        elif not in_block:
            continue
        parts = line.split()
        if len(parts) == 2 and parts[1] == "v0.0.0":
            found.append(parts[0])
    return found


def staging_version(version: str) -> str:
    """v1.36.3 -> v0.36.3: the tag Kubernetes' staging modules get for a release."""
    return "v0." + version.lstrip("v").split(".", 1)[1]


def _staging_replacements(
    modules: list[str], version: str, module_dir: Path, log: Path, echo: Echo
) -> dict[str, str]:
    if not modules:
        return {}
    wanted = staging_version(version)
    result = _mod_download(module_dir, *[f"{m}@{wanted}" for m in modules])
    with log.open("a") as f:
        f.write(result.stdout + result.stderr)
    missing = {d["Path"] for d in _json_stream(result.stdout) if d.get("Error")}
    replacements = {m: wanted for m in modules if m not in missing}
    for module in sorted(missing):
        fallback = _closest_published(module, wanted, module_dir, log)
        if fallback is None:
            echo(f"warning: {module}@{wanted} is not published and has no v0 release; not replaced")
            continue
        echo(f"warning: {module}@{wanted} is not published; using {fallback}")
        replacements[module] = fallback
    return replacements


def _closest_published(module: str, wanted: str, module_dir: Path, log: Path) -> str | None:
    try:
        out = run_go(["list", "-m", "-versions", "-json", module], cwd=module_dir, log=log)
    except GoFailure:
        return None
    versions = json.loads(out).get("Versions") or []
    return closest_version(versions, wanted)


def closest_version(versions: list[str], wanted: str) -> str | None:
    """The newest release of `wanted`'s minor line not above it, else the newest overall."""

    def key(v: str) -> tuple[int, ...]:
        core = v.lstrip("v").split("-", 1)[0]
        return tuple(int(p) for p in core.split(".") if p.isdigit())

    releases = [v for v in versions if "-" not in v]
    if not releases:
        return None
    want = key(wanted)
    same_line = [v for v in releases if key(v)[:2] == want[:2] and key(v) <= want]
    return max(same_line or releases, key=key)


def _json_stream(text: str) -> list[dict]:
    decoder, items, rest = json.JSONDecoder(), [], text.strip()
    while rest:
        item, end = decoder.raw_decode(rest)
        items.append(item)
        rest = rest[end:].lstrip()
    return items


def _mod_download(cwd: Path, *modules: str) -> subprocess.CompletedProcess[str]:
    # Not run_go: a module it cannot fetch is reported in its JSON, which callers read.
    return subprocess.run(
        [go_binary(), "mod", "download", "-json", *modules],
        cwd=cwd,
        env=go_env(),
        capture_output=True,
        text=True,
        check=False,
    )


def _release_date(module: str, version: str) -> str:
    # The proxy's release time makes the build date reproducible across rebuilds.
    info = _mod_download(Path.home(), f"{module}@{version}")
    try:
        stamp = json.loads(info.stdout)["Info"]
        return json.loads(Path(stamp).read_text())["Time"]
    except (ValueError, KeyError, OSError):
        return "1970-01-01T00:00:00Z"


def _load_timings(cache: Path) -> dict[str, float]:
    try:
        return json.loads((cache / TIMINGS).read_text())
    except (OSError, ValueError):
        return {}


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"
