"""helm-deps: the chart's dependencies, at exactly the pinned versions.

The pipeline fetches dependencies itself rather than through `helm dependency
build`, for three reasons mybinder.org's history gives: chart repositories
flake (DNS, CDN, 5xx) and deserve retries with backoff; a version that is not
yet in a repository's index deserves an explanation listing what is there;
and sites without outside access need a mirror map. The archives land in
`mybinder/charts/` exactly as helm expects them, each checked against the
digest the repository's index publishes. When they are already there, the
step finishes without touching the network.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import yaml
from invoke import Context

from tasks.adapters import helm, oci, toolchain
from tasks.adapters.helm import shown
from tasks.adapters.oci import newest
from tasks.config import values as values_module
from tasks.config.context import StepContext
from tasks.config.registry import Registry, Release, Target
from tasks.core import diagnoses, web
from tasks.core.errors import CommandFailed, Location, Skipped, StepFailure, explain
from tasks.core.output import say
from tasks.core.runner import PROJECT_ROOT, Runner
from tasks.core.step import Changes, Step


@dataclass(frozen=True)
class Dependency:
    name: str
    version: str
    repository: str

    @property
    def archive(self) -> str:
        return f"{self.name}-{self.version}.tgz"

    @property
    def is_oci(self) -> bool:
        return self.repository.startswith("oci://")

    @property
    def reference(self) -> str:
        """The chart's OCI reference: the repository, then the chart's name."""
        return f"{self.repository.rstrip('/')}/{self.name}"


def pinned_dependencies(chart_dir: Path) -> list[Dependency]:
    """The dependencies Chart.yaml asks for, at the versions Chart.lock pins.

    Chart.yaml must pin exact versions, and Chart.lock must agree with it:
    a range would let two deploys of the same commit get different charts.
    """
    chart_file = chart_dir / "Chart.yaml"
    lock_file = chart_dir / "Chart.lock"
    wanted = (yaml.safe_load(chart_file.read_text()) or {}).get("dependencies") or []
    if not wanted:
        return []
    if not lock_file.exists():
        raise StepFailure(
            f"{shown(lock_file)} is missing, so the dependency versions are not pinned.",
            "Run `helm dependency update mybinder` where the chart repositories are "
            "reachable, and commit Chart.lock.",
        )
    lock_document = yaml.safe_load(lock_file.read_text()) or {}
    locked = {entry["name"]: entry for entry in lock_document.get("dependencies") or []}
    pinned = []
    for entry in wanted:
        name, version, repository = entry["name"], str(entry["version"]), entry["repository"]
        lock = locked.get(name)
        if lock is None or str(lock["version"]) != version or lock["repository"] != repository:
            raise StepFailure(
                f"Chart.lock is out of date for {name}: Chart.yaml asks for {version} from "
                f"{repository}, Chart.lock pins "
                + (f"{lock['version']} from {lock['repository']}" if lock else "nothing")
                + ".",
                "Run `helm dependency update mybinder` and commit Chart.lock with Chart.yaml.",
            )
        pinned.append(Dependency(name, version, repository))
    expected = lock_digest(wanted, lock_document.get("dependencies") or [])
    if lock_document.get("digest") != expected:
        raise StepFailure(
            f"{shown(lock_file)}'s digest ({lock_document.get('digest') or 'none'}) is not "
            "the one helm computes from the dependencies of Chart.yaml and Chart.lock "
            f"({expected}): "
            "Chart.yaml's dependencies changed (a condition, an alias, tags) since "
            "Chart.lock was written, or Chart.lock was edited by hand.",
            "Run `helm dependency update mybinder` and commit Chart.lock with Chart.yaml; "
            "`helm dependency build` refuses a lock out of sync the same way.",
        )
    return pinned


# The fields of helm's chart.Dependency in the order Go marshals them, and whether
# an empty value is left out (`omitempty`).
_DEPENDENCY_FIELDS = (
    ("name", False),
    ("version", True),
    ("repository", False),
    ("condition", True),
    ("tags", True),
    ("enabled", True),
    ("import-values", True),
    ("alias", True),
)


def lock_digest(requirements: list[dict], locked: list[dict]) -> str:
    """Chart.lock's digest as helm computes it (`resolver.HashReq`).

    sha256 of Go's JSON encoding of [Chart.yaml's dependencies, Chart.lock's
    dependencies]; `helm dependency build` refuses a lock whose digest differs.
    """

    def as_go(entry: dict) -> dict:
        encoded: dict = {}
        for key, omit_empty in _DEPENDENCY_FIELDS:
            value = entry.get(key)
            if omit_empty and not value:
                continue
            encoded[key] = (
                value if key in ("tags", "enabled", "import-values") else str(value or "")
            )
        return encoded

    document = [[as_go(e) for e in requirements], [as_go(e) for e in locked]]
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    # Go's encoder escapes these for HTML; the hash covers its exact bytes.
    for character, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(character, escaped)
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def archive_is_valid(path: Path, dependency: Dependency) -> bool:
    """The archive exists and holds the chart and version it is named for."""
    if not path.is_file():
        return False
    try:
        with tarfile.open(path, "r:gz") as archive:
            member = archive.extractfile(f"{dependency.name}/Chart.yaml")
            if member is None:
                return False
            meta = yaml.safe_load(member.read()) or {}
    except (tarfile.TarError, KeyError, OSError, EOFError, yaml.YAMLError):
        return False
    return meta.get("name") == dependency.name and str(meta.get("version")) == dependency.version


def mirrored(repository: str, mirrors: dict[str, str]) -> str:
    for original, mirror in mirrors.items():
        if repository.rstrip("/") == original.rstrip("/"):
            return mirror
    return repository


def _index(repository: str, mirrors: dict[str, str], cache: dict[str, dict]) -> tuple[str, dict]:
    base = mirrored(repository, mirrors).rstrip("/") + "/"
    if base not in cache:
        url = urljoin(base, "index.yaml")
        try:
            cache[base] = yaml.safe_load(web.fetch(url)) or {}
        except web.HttpFailure as error:
            raise StepFailure(
                f"Could not fetch the index of the chart repository {_source(base, repository)}: "
                f"{error}.",
                "The repository or the network is having difficulties; re-run the step. "
                "For a network without outside access, add a mirror under "
                "`repository_mirrors` in config/environments.yaml or DEPLOY_CHART_MIRRORS "
                "(`invoke demo` serves a local copy of the JupyterHub repository from "
                "../shared/charts/jupyterhub-helm-chart or DEPLOY_CHART_REPOSITORY_DIR).",
            ) from None
    return base, cache[base]


def _is_mirror(base: str, repository: str) -> bool:
    return base != repository.rstrip("/") + "/"


def _source(base: str, repository: str) -> str:
    """The repository as read: its mirror, when one stands in for it."""
    return f"{base} (mirror of {repository})" if _is_mirror(base, repository) else base


def source_of(dependency: Dependency, mirrors: dict[str, str]) -> str:
    """Where a dependency is fetched from: its repository, or the mirror standing in for it."""
    if dependency.is_oci:
        return oci.mirrored(dependency.reference, mirrors)
    return mirrored(dependency.repository, mirrors)


def download(
    dependency: Dependency,
    charts_dir: Path,
    mirrors: dict[str, str],
    cache: dict,
    runner: Runner | None = None,
    digest: str = "",
) -> str:
    """Fetch one dependency archive into charts_dir, checked against the index digest.

    One from an OCI registry is pulled by helm (tasks/adapters/oci.py); its manifest
    digest is returned.
    """
    if dependency.is_oci:
        source = oci.mirrored(dependency.reference, mirrors)
        charts_dir.mkdir(parents=True, exist_ok=True)
        # Pulled beside its destination, so the archive arrives whole, in one rename.
        with tempfile.TemporaryDirectory(dir=charts_dir, prefix=".pull-") as scratch:
            pulled, pulled_digest = oci.pull(
                runner or Runner(Context(), tool_dirs=toolchain.search_dirs()),
                source,
                dependency.version,
                Path(scratch),
                original=dependency.reference,
                digest=digest,
            )
            if not archive_is_valid(pulled, dependency):
                raise StepFailure(
                    f"{source} {dependency.version} did not hold the chart {dependency.name} "
                    f"{dependency.version}."
                )
            pulled.replace(charts_dir / dependency.archive)
        return pulled_digest
    base, index = _index(dependency.repository, mirrors, cache)
    entries = (index.get("entries") or {}).get(dependency.name) or []
    entry = next((e for e in entries if str(e.get("version")) == dependency.version), None)
    if entry is None:
        offered = newest([str(e.get("version")) for e in entries])
        lagging = (
            f"The mirror {base} may lag behind {dependency.repository}: bring it up to date, "
            "or remove it from repository_mirrors (DEPLOY_CHART_MIRRORS). "
            if _is_mirror(base, dependency.repository)
            else ""
        )
        raise StepFailure(
            f"Can't get a valid version for {dependency.name}: {dependency.version} is not in "
            f"the index of {_source(base, dependency.repository)}. "
            + (
                f"The newest versions it offers: {', '.join(offered)}."
                if offered
                else f"The repository has no chart called {dependency.name}."
            ),
            lagging
            + "If the version was merged upstream recently, it may not be published yet: wait "
            "until it appears in the repository's index.yaml before bumping it in "
            "mybinder/Chart.yaml. Otherwise fix the version there and in Chart.lock.",
        )
    url = urljoin(base, (entry.get("urls") or [dependency.archive])[0])
    try:
        content = web.fetch(url)
    except web.HttpFailure as error:
        raise StepFailure(
            f"Could not download {dependency.archive} from {url}: {error}.",
            "The repository or the network is having difficulties; re-run the step.",
        ) from None
    index_digest = entry.get("digest")
    actual = hashlib.sha256(content).hexdigest()
    if digest and digest != f"sha256:{actual}":
        raise StepFailure(
            f"{dependency.archive} from {url} has the digest sha256:{actual}, not the {digest} "
            "pinned for it. It was not saved.",
            "The version was published again with other content, or a mirror serves another "
            "chart. Check the repository; pin the new digest only once you trust it.",
        )
    if index_digest and index_digest != actual:
        raise StepFailure(
            f"{dependency.archive} from {url} does not match the digest in the repository's "
            f"index (expected sha256 {index_digest}, got {actual}). It was not saved.",
            "A mirror or proxy served a different file; re-run, and check the mirror.",
        )
    archive = charts_dir / dependency.archive
    charts_dir.mkdir(exist_ok=True)
    # Written beside, then renamed: an interrupted download leaves no half archive.
    partial = archive.with_suffix(".partial")
    partial.write_bytes(content)
    partial.replace(archive)
    if not archive_is_valid(archive, dependency):
        archive.unlink()
        raise StepFailure(f"{url} did not hold the chart {dependency.name} {dependency.version}.")
    return actual


# -- schema refusals ------------------------------------------------------------

SCHEMA_REFUSAL = "values don't meet the specifications of the schema(s) in the following chart(s):"


@dataclass(frozen=True)
class SchemaError:
    """One value a chart's values.schema.json refused, as helm reports it."""

    chart: str  # the chart whose schema refused it, by helm's name for it
    pointer: str  # where, within that chart's own values ('' for its top level)
    message: str


def schema_errors(output: str) -> list[SchemaError]:
    """Every refusal in helm's report: one `NAME:` line per chart, `- at 'PTR': MSG` lines."""
    if SCHEMA_REFUSAL not in output:
        return []
    found: list[SchemaError] = []
    for report in output.split(SCHEMA_REFUSAL)[1:]:
        chart = ""
        for line in report.splitlines():
            text = line.strip()
            heading = re.fullmatch(r"([\w.-]+):", text)
            refusal = re.match(r"- at '([^']*)': (.*)", text)
            if heading:
                chart = heading.group(1)
            elif refusal and chart:
                error = SchemaError(chart, refusal.group(1), refusal.group(2))
                if error not in found:
                    found.append(error)
            elif text:
                break
    return found


def chart_value_paths(chart_dir: Path) -> dict[str, list[tuple[str, ...]]]:
    """Chart name -> where that chart takes its values within the site chart's values.

    The site chart takes them all; a dependency those under its name (or
    alias); a chart packaged inside a dependency those under both names.
    """
    meta = yaml.safe_load((chart_dir / "Chart.yaml").read_text()) or {}
    paths: dict[str, list[tuple[str, ...]]] = {str(meta.get("name", chart_dir.name)): [()]}
    for entry in meta.get("dependencies") or []:
        key = str(entry.get("alias") or entry["name"])
        paths.setdefault(key, []).append((key,))
        archive = chart_dir / "charts" / f"{entry['name']}-{entry['version']}.tgz"
        for nested in _charts_inside(archive, str(entry["name"])):
            paths.setdefault(nested[-1], []).append((key, *nested))
    return paths


def _charts_inside(archive: Path, name: str) -> list[tuple[str, ...]]:
    """The charts an archive carries in its charts/ folders, as key paths below it."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getnames()
    except (tarfile.TarError, OSError):
        return []
    nested = []
    for member in members:
        parts = member.split("/")
        inner = parts[1:-1]
        charts_folders = inner[0::2]
        if (
            parts[0] == name
            and parts[-1] == "Chart.yaml"
            and inner
            and len(inner) % 2 == 0
            and all(part == "charts" for part in charts_folders)
        ):
            nested.append(tuple(inner[1::2]))
    return nested


def _refused_keys(error: SchemaError, prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
    base = (*prefix, *(key for key in error.pointer.split("/") if key))
    extra = re.search(
        r"(?:additional|missing) propert(?:y|ies) ((?:'[^']*'(?:, )?)+)", error.message
    )
    if extra:
        return [(*base, name) for name in re.findall(r"'([^']*)'", extra.group(1))]
    return [base]


def schema_failure(
    output: str, files: list[Path], chart_dir: Path, env_name: str
) -> StepFailure | None:
    """Name the chart whose schema refused a value, the key and the values files setting it."""
    errors = schema_errors(output)
    if not errors:
        return None
    value_paths = chart_value_paths(chart_dir)
    meta = yaml.safe_load((chart_dir / "Chart.yaml").read_text()) or {}
    conditions = {
        str(entry.get("alias") or entry["name"]): str(entry.get("condition") or "")
        for entry in meta.get("dependencies") or []
    }
    lines: list[str] = []
    settings: list[str] = []
    switches: list[str] = []
    locations: list[Location] = []
    for error in errors:
        for prefix in value_paths.get(error.chart) or [()]:
            if prefix:
                whose = f"the {error.chart} subchart's schema (values under {'.'.join(prefix)}:)"
            else:
                whose = f"the site chart's schema ({shown(chart_dir / 'values.schema.json')})"
            for keys in _refused_keys(error, prefix):
                key = ".".join(keys) or "(top level)"
                setting = values_module.layers_setting(files, "/" + "/".join(keys))
                where = (
                    "set in "
                    + ", ".join(shown(p) for p in setting)
                    + (" (the last one wins)" if len(setting) > 1 else "")
                    if setting
                    else "set in no values file"
                )
                refusal = f"{whose} refuses {key} ({error.message})"
                lines.append(f"{refusal}, {where}")
                # The last file setting the key is the one whose value helm used.
                for path in setting[-1:]:
                    position = values_module.key_position(path, keys)
                    if position:
                        locations.append(Location(shown(path), *position, refusal))
                settings.append(f"{key} is {where}.")
                if len(keys) == 2 and keys[1] == "enabled" and conditions.get(keys[0]):
                    switches.append(
                        f"{keys[0]} is switched on and off by `{conditions[keys[0]]}`, its "
                        f"condition in {shown(chart_dir / 'Chart.yaml')}, not by {key}."
                    )
    check = f"`invoke validate --env={env_name}` checks every layer offline."
    if len(lines) == 1:
        why = f"{lines[0][0].upper()}{lines[0][1:]}."
        fix = " ".join([*settings, *switches, "Fix or remove it there;", check])
    else:
        why = (
            f"{len(lines)} values of {env_name} are refused by charts' schemas; first, {lines[0]}."
        )
        fix = " ".join([*switches, "Fix or remove each key listed below in the file named;", check])
    return StepFailure(
        why, fix, details="\n".join(lines) if len(lines) > 1 else "", locations=locations
    )


# Charts that environments' releases take from a registry or a repository, fetched
# by helm-deps like the site chart's dependencies, deployed from here.
RELEASE_CHARTS = Path(".local") / "charts"


def chart_of(registry: Registry, release: Release) -> Path:
    """What helm deploys for `release`: a folder of the project, or its fetched archive."""
    if release.site or not release.chart:
        return registry.chart
    if release.is_folder:
        return Path(release.chart)
    return RELEASE_CHARTS / f"{release.chart_name}-{release.version}.tgz"


def release_dependency(release: Release) -> Dependency:
    """A release's chart as a dependency to fetch: its name, version and repository."""
    if release.is_oci:
        return Dependency(
            release.chart_name, release.version, release.chart.rstrip("/").rsplit("/", 1)[0]
        )
    return Dependency(release.chart, release.version, release.repository)


def build_dependencies(ctx: StepContext) -> str:
    """The helm-deps step: every chart folder's pinned dependencies, then the release charts."""
    registry = ctx.registry
    folders = [registry.chart] + [
        Path(r.chart)
        for env in registry.environments.values()
        for r in env.releases
        if r.is_folder and not r.site
    ]
    notes, skipped = [], []
    for folder in dict.fromkeys(folders):
        try:
            notes.append(
                sync_dependencies(
                    PROJECT_ROOT / folder, registry.repository_mirrors, ctx.dry_run, ctx.runner
                )
            )
        except Skipped as nothing:
            skipped.append(str(nothing))
    try:
        notes.append(sync_release_charts(registry, ctx.dry_run, ctx.runner))
    except Skipped as nothing:
        skipped.append(str(nothing))
    if not notes:
        raise Skipped("; ".join(skipped))
    return "; ".join(notes)


def sync_release_charts(registry: Registry, dry_run: bool, runner: Runner | None = None) -> str:
    """Fetch the charts releases take from a registry or repository into RELEASE_CHARTS.

    An archive already there at the pinned version (and digest, when one is
    pinned) is kept; the step then touches no network.
    """
    wanted = registry.fetched_releases()
    if not wanted:
        raise Skipped("no release takes its chart from a registry or repository")
    folder = PROJECT_ROOT / RELEASE_CHARTS
    missing = []
    for release in wanted:
        archive = PROJECT_ROOT / chart_of(registry, release)
        recorded = archive.with_name(archive.name + ".digest")
        pinned_digest_known = not release.digest or (
            recorded.is_file() and recorded.read_text().strip() == release.digest
        )
        if not (archive_is_valid(archive, release_dependency(release)) and pinned_digest_known):
            missing.append(release)
    if not missing:
        raise Skipped(f"{len(wanted)} release chart(s) already in {shown(folder)}")
    mirrors = registry.repository_mirrors
    fetched = []
    for release in missing:
        dependency = release_dependency(release)
        source = source_of(dependency, mirrors)
        if dry_run:
            say(f"[dry-run] fetch {release.reference} from {source} into {shown(folder)}")
            continue
        say(f"fetching {release.reference} from {source}")
        digest = download(dependency, folder, mirrors, {}, runner, release.digest)
        digest = digest if digest.startswith("sha256:") else f"sha256:{digest}"
        (folder / f"{dependency.archive}.digest").write_text(digest + "\n")
        say(f"  saved, {digest[:23]}…")
        fetched.append(dependency.archive)
    if dry_run:
        return f"{len(missing)} release chart(s) to fetch"
    return f"fetched release charts {', '.join(fetched)}"


def sync_dependencies(
    chart_dir: Path, mirrors: dict[str, str], dry_run: bool = False, runner: Runner | None = None
) -> str:
    charts_dir = chart_dir / "charts"
    dependencies = pinned_dependencies(chart_dir)
    if not dependencies:
        raise Skipped(f"{shown(chart_dir)}/Chart.yaml has no dependencies")
    wanted = {d.archive for d in dependencies}
    stale = [p for p in charts_dir.glob("*.tgz") if p.name not in wanted]
    missing = [d for d in dependencies if not archive_is_valid(charts_dir / d.archive, d)]
    if not missing and not stale:
        raise Skipped(f"{', '.join(sorted(wanted))} already in {shown(charts_dir)}")
    if dry_run:
        for dependency in missing:
            say(f"[dry-run] fetch {dependency.archive} from {source_of(dependency, mirrors)}")
        for path in stale:
            say(f"[dry-run] remove stale {shown(path)}")
        return f"{len(missing)} to fetch"
    for path in stale:
        say(f"removing {shown(path)}: not pinned by Chart.lock")
        path.unlink()
    cache: dict[str, dict] = {}
    for dependency in missing:
        say(f"fetching {dependency.archive} from {source_of(dependency, mirrors)}")
        digest = download(dependency, charts_dir, mirrors, cache, runner)
        say(f"  saved, sha256 {digest[:16]}…")
    return f"fetched {', '.join(d.archive for d in missing)}"


# -- offline validation -------------------------------------------------------

PLACEHOLDER_SECRETS = Path("config/placeholder-secrets.yaml")


def validation_layers(target: Target) -> tuple[list[Path], list[Path]]:
    """The values files to render `target` with, and which of them are placeholders.

    A secret layer that is still encrypted (a pull request from a fork, CI
    without keys) is replaced by the placeholder secrets.
    """
    layers: list[Path] = []
    placeholders: list[Path] = []
    for path in target.values_files():
        if values_module.is_locked(path):
            placeholders.append(path)
            path = PROJECT_ROOT / PLACEHOLDER_SECRETS
        if path not in layers:
            layers.append(path)
    return layers, placeholders


def validate_environment(ctx: StepContext) -> str:
    """Check every values file, then render and lint the chart as the target would get it."""
    target = ctx.target
    layers, placeholders = validation_layers(target)
    values_module.refuse(
        values_module.check_files(
            [p for p in target.values_files() if p not in placeholders], PROJECT_ROOT
        ),
        f"problem(s) in the values files of {target.name}.",
    )
    chart = chart_of(ctx.registry, target.release)
    for command in (helm.template(target, chart, layers), helm.lint(target, chart, layers)):
        try:
            # Rendering reads only local files; a dry run shows it instead, since the
            # dependencies it needs may not be fetched yet.
            ctx.runner.run(command, quiet=True, touches_nothing=not ctx.dry_run)
        except CommandFailed as failed:
            refused = (
                schema_failure(failed.output, layers, PROJECT_ROOT / chart, target.name)
                if (PROJECT_ROOT / chart).is_dir()
                else None
            )
            raise refused or explain(
                failed,
                diagnoses.for_env(diagnoses.RENDER_FAILURES, target.name),
                f"`{command[1]}` failed for {target.name}",
            ) from None
    note = (
        f"{len(layers)} values layers checked; would render and lint them"
        if ctx.dry_run
        else f"{len(layers)} values layers rendered and linted"
    )
    if placeholders:
        note += f"; placeholders for {len(placeholders)} locked secret file(s)"
    return note


# -- tasks --------------------------------------------------------------------


def lint_repository_yaml(ctx: StepContext) -> str:
    """Tabs, duplicate keys and syntax errors in every YAML file of the repository.

    Chart templates are Go templates, not YAML, and files still encrypted by
    git-crypt have nothing to read: both are passed over.
    """
    listed = ctx.runner.run(
        ["git", "ls-files", "*.yaml", "*.yml"], quiet=True, touches_nothing=True
    )
    templates = PROJECT_ROOT / ctx.registry.chart / "templates"
    paths = [
        PROJECT_ROOT / name
        for name in listed.stdout.split()
        if (PROJECT_ROOT / name).is_file() and templates not in (PROJECT_ROOT / name).parents
    ]
    readable = [p for p in paths if not values_module.is_locked(p)]
    values_module.refuse(
        values_module.check_files(readable, PROJECT_ROOT, documents=True),
        "YAML problem(s) in the repository.",
    )
    return f"{len(readable)} YAML files clean ({len(paths) - len(readable)} encrypted, skipped)"


HELM_DEPS = Step("helm-deps", build_dependencies, Changes.CHECKOUT, needs_env=False)
VALIDATE = Step("validate", validate_environment, per_release=True)
YAML_LINT = Step("yaml-lint", lint_repository_yaml, needs_env=False)
