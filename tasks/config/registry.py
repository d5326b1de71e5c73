"""The environment registry: `config/environments.yaml`, loaded once into typed objects.

Adding an environment is editing that file only. Every mistake in it is
reported with the file, the line and what to write instead, before any step
runs.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

from tasks.config.cluster_kind import ClusterKind
from tasks.core.errors import Location, StepFailure
from tasks.core.runner import PROJECT_ROOT

REGISTRY_FILE = Path("config/environments.yaml")
T = TypeVar("T")

# The cluster kinds: each `cluster.kind` of config/environments.yaml and the module
# (tasks/adapters/kinds/) that implements it. A new kind is a module and a line here.
CLUSTER_KINDS = {
    "local": "tasks.adapters.kinds.local",
    "kubeconfig": "tasks.adapters.kinds.kubeconfig",
    "gke": "tasks.adapters.kinds.gke",
}
KEY_SOURCES = {
    # source: (required fields, optional fields)
    "openssl": (("file", "key_env", "iv_env"), ()),
    "gpg": (("file",), ("passphrase_env", "private_key_env")),
    "base64-env": (("env",), ()),
    "file": (("path",), ()),
    "git-crypt-gpg": ((), ()),
}


def cluster_kind(name: str) -> ClusterKind[Any]:
    return importlib.import_module(CLUSTER_KINDS[name]).KIND


@dataclass(frozen=True)
class ClusterAccess:
    """How to reach an environment's cluster: its kind and that kind's fields, as
    config/environments.yaml writes them under `cluster:` (`name`, `kubeconfig`, ...)."""

    kind: str
    fields: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> str:
        return self.fields.get(name, "")

    def secret_files(self) -> list[tuple[str, str]]:
        """The files of the secrets folder this access needs, each with its field."""
        wanted = cluster_kind(self.kind).secret_files
        return [(self.fields[name], f"cluster.{name}") for name in wanted if self.fields.get(name)]


@dataclass(frozen=True)
class Bastion:
    """An SSH host in front of the cluster's API server; steps reach the cluster through it."""

    host: str
    user: str
    key_file: str  # the SSH private key, under the secrets folder
    port: int = 22
    # The bastion's host key in known_hosts format, under the secrets folder;
    # without it any host key is accepted (TLS still checks the API server).
    known_hosts: str = ""


@dataclass(frozen=True)
class KeySource:
    """Where the git-crypt key that unlocks this environment's secrets comes from."""

    source: str
    key_name: str = ""  # a named git-crypt key (git-crypt init -k NAME); "" is the default key
    file: str = ""
    key_env: str = ""
    iv_env: str = ""
    env: str = ""
    path: str = ""
    passphrase_env: str = ""
    private_key_env: str = ""


@dataclass(frozen=True)
class Grafana:
    url: str
    token_file: str = ""  # under the secrets folder
    token_env: str = ""
    dashboard_uid: str = ""
    org_id: int | None = None
    tags: tuple[str, ...] = ()
    strict: bool = False


NOTIFY_FORMATS = ("slack", "zulip")


@dataclass(frozen=True)
class Notify:
    """Where a deploy's outcome is posted: a chat's incoming webhook
    (tasks/adapters/notifications.py).

    The webhook's URL carries its token, so it comes from a secret: a variable
    (`url_env`) or a file under the secrets folder (`url_file`).
    """

    url_env: str = ""
    url_file: str = ""
    format: str = "slack"  # slack: Slack's incoming webhooks; zulip: Zulip's Slack-compatible one
    on_success: bool = False  # a successful deploy posts too

    @property
    def source(self) -> str:
        return f"${self.url_env}" if self.url_env else self.url_file


@dataclass(frozen=True)
class Timeouts:
    upgrade: int = 600
    rollout: int = 600
    smoke: int = 600


@dataclass(frozen=True)
class Release:
    """One helm release of an environment.

    `chart` is a folder of this repository, an `oci://` reference
    (oci://ghcr.io/traefik/helm/traefik) or a chart's name in the chart
    repository `repository`; the last two need a pinned `version`, and may pin
    the `digest` the registry serves for it.
    """

    name: str
    namespace: str
    chart: str
    version: str = ""
    repository: str = ""
    digest: str = ""
    # Further values files layered after the release's standard ones, in order.
    extra_values: tuple[str, ...] = ()
    # The site chart's release: its values layers are config/<env>.yaml and the
    # environment's secrets, as for a single-release environment.
    site: bool = True

    @property
    def is_folder(self) -> bool:
        return not self.is_oci and not self.repository

    @property
    def is_oci(self) -> bool:
        return self.chart.startswith("oci://")

    @property
    def chart_name(self) -> str:
        return self.chart.rstrip("/").rsplit("/", 1)[-1]

    @property
    def reference(self) -> str:
        """The chart as the operator wrote it, with its version: for messages and records."""
        if self.is_folder:
            return self.chart
        where = self.chart if self.is_oci else f"{self.chart} from {self.repository}"
        return f"{where} {self.version}"


@dataclass(frozen=True)
class Environment:
    name: str
    description: str
    cluster: ClusterAccess
    secrets_dir: Path
    key: KeySource
    # Every release, in the order they are deployed; the last one is the site's (its
    # namespace holds the deploy lock). An entry of one `release:` has that one alone.
    releases: tuple[Release, ...]
    urls: dict[str, str] = field(default_factory=dict)
    grafana: Grafana | None = None
    timeouts: Timeouts = Timeouts()
    gated_by: str | None = None
    components: dict[str, bool] = field(default_factory=dict)
    bastion: Bastion | None = None
    # Whether the registry entry listed `releases:` (else the one `release:`).
    listed: bool = False
    notify: Notify | None = None

    @property
    def lock_namespace(self) -> str:
        """Where the environment's deploy lock lives: the namespace of its last release."""
        return self.releases[-1].namespace

    def release_names(self) -> list[str]:
        return [r.name for r in self.releases]

    def secret_path(self, relative: str, root: Path = PROJECT_ROOT) -> Path:
        return root / self.secrets_dir / relative

    @property
    def is_local(self) -> bool:
        return self.cluster.kind == "local"

    def target(self, release: str | None = None) -> Target:
        """The environment and its release `release` (by default the last one, the site's):
        what a step on one release works on."""
        if release is None:
            return Target(self, self.releases[-1])
        for candidate in self.releases:
            if candidate.name == release:
                return Target(self, candidate)
        raise StepFailure(
            f"{self.name} has no release {release!r}.",
            f"Its releases: {', '.join(self.release_names())} (in {REGISTRY_FILE}).",
        )


@dataclass(frozen=True)
class Target:
    """An environment and the one of its releases a step works on."""

    env: Environment
    release: Release

    @property
    def name(self) -> str:
        """The environment's name: what a message names it by."""
        return self.env.name

    @property
    def namespace(self) -> str:
        return self.release.namespace

    def values_files(self, root: Path = PROJECT_ROOT) -> list[Path]:
        """The values files in the order helm must layer them, existing ones only.

        Common config, common secrets, environment config, environment secrets:
        the environment's own secrets always win. A release other than the
        site's has the same four layers of its own, under config/releases/<release>/.
        """
        env = self.env
        if self.release.site:
            own = ("config", "common.yaml"), ("config", f"{env.name}.yaml")
        else:
            folder = ("config", "releases", self.release.name)
            own = (*folder, "common.yaml"), (*folder, f"{env.name}.yaml")
        common, mine = own
        layers = [
            root.joinpath(*common),
            root.joinpath(env.secrets_dir, *common),
            root.joinpath(*mine),
            root.joinpath(env.secrets_dir, *mine),
        ]
        # The standard layers are optional; a layer the registry names must exist.
        return [path for path in layers if path.exists()] + [
            root / extra for extra in self.release.extra_values
        ]


@dataclass(frozen=True)
class Group:
    """A federation: members deployed side by side once their common gate has passed.

    Experimental members may fail without failing the run.
    """

    name: str
    description: str
    members: tuple[str, ...]
    experimental: tuple[str, ...]
    gate: str  # the environment that gates every member
    notify: Notify | None = None

    def is_experimental(self, member: str) -> bool:
        return member in self.experimental


@dataclass(frozen=True)
class Registry:
    environments: dict[str, Environment]
    chart: Path
    repository_mirrors: dict[str, str] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)

    def fetched_releases(self) -> list[Release]:
        """The releases whose chart is fetched from a registry or repository, each chart once."""
        releases = [r for env in self.environments.values() for r in env.releases]
        return list(
            {(r.chart, r.repository, r.version): r for r in releases if not r.is_folder}.values()
        )

    def get(self, name: str | None) -> Environment:
        """The environment called `name`, or an error that lists the known ones."""
        known = ", ".join(self.environments)
        if not name:
            raise StepFailure(
                "No environment given.",
                f"Pass --env=NAME; the known environments are: {known}.",
            )
        if name not in self.environments:
            why = f"Unknown environment {name!r}."
            if name in self.groups:
                why = f"{name!r} is a group of environments, and this takes one environment."
            fix = f"The known environments are: {known} (defined in {REGISTRY_FILE})."
            if self.groups:
                fix += (
                    f" Groups ({', '.join(self.groups)}) deploy with `invoke deploy --env=GROUP`."
                )
            raise StepFailure(why, fix)
        return self.environments[name]

    def group(self, name: str | None) -> Group | None:
        return self.groups.get(name or "")

    def target(self, name: str | None) -> Environment | Group:
        """What `deploy --env=NAME` deploys: a group, or else an environment (or the error)."""
        group = self.group(name)
        if group is not None:
            return group
        if name and name not in self.environments:
            known = ", ".join([*self.environments, *self.groups])
            raise StepFailure(
                f"Unknown environment or group {name!r}.",
                f"The known ones are: {known} (defined in {REGISTRY_FILE}).",
            )
        return self.get(name)

    def chain(self, name: str) -> list[Environment]:
        """The environments a deploy of `name` goes through, gates first, a group's members last."""
        group = self.group(name)
        if group is not None:
            return self.chain(group.gate) + [self.get(m) for m in group.members]
        order: list[Environment] = []
        current: str | None = name
        while current is not None:
            env = self.get(current)
            order.insert(0, env)
            current = env.gated_by
        return order

    def checked_first(self, name: str) -> list[Environment]:
        """The environments a deploy of `name` validates and checks before its first change.

        An experimental member is checked as its own first step instead: it may
        fail without stopping the others.
        """
        group = self.group(name)
        return [e for e in self.chain(name) if not (group and group.is_experimental(e.name))]


class RegistryError(StepFailure):
    pass


# Kubernetes: a namespace is a DNS label (RFC 1123); helm: a release name is a
# DNS subdomain of at most 53 characters (its Secrets add a suffix).
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_RELEASE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# kind of name: (longest, pattern, what it is, what it may hold)
_NAME_RULES = {
    "namespace": (63, _DNS_LABEL, "Kubernetes namespace", "letters, digits and '-'"),
    "release": (53, _RELEASE_NAME, "helm release name", "letters, digits, '-' and '.'"),
}


def url_problem(value: object) -> str:
    """Why `value` cannot be an http(s) URL the pipeline can request; "" when it can."""
    if not isinstance(value, str):
        return f"{value!r} is not a URL"
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        return f"{value!r} does not start with https:// (or http://)"
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        return f"{value!r} has a port that is not a number from 1 to 65535"
    if not parts.hostname or any(ch.isspace() for ch in value):
        return f"{value!r} names no host"
    return ""


class _Reader:
    """Reads mappings from the registry file, keeping line numbers for errors."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.root_node = yaml.compose(text)

    def fail(self, node: yaml.Node | None, message: str, fix: str = "") -> RegistryError:
        if node is None:
            return RegistryError(f"{self.path}: {message}", fix)
        line, column = node.start_mark.line + 1, node.start_mark.column + 1
        return RegistryError(
            f"{self.path}:{line}: {message}",
            fix,
            locations=[Location(str(self.path), line, column, message)],
        )

    def mapping(
        self, node: yaml.Node | None, where: str, allowed: tuple[str, ...]
    ) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{where} must be a mapping of keys to values.")
        items: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            if key in items:
                raise self.fail(key_node, f"{where}: the key {key!r} appears twice.")
            if allowed and key not in allowed:
                raise self.fail(
                    key_node,
                    f"{where}: unknown key {key!r}.",
                    f"Use one of: {', '.join(allowed)}.",
                )
            items[key] = value_node
        return items

    def scalar(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, "expected a single value here, not a list or mapping.")
        return self.plain(node)

    def plain(self, node: yaml.Node) -> Any:
        # An empty value (`release:`) is None, as in any YAML document.
        return yaml.SafeLoader("").construct_document(node)

    def text(self, node: yaml.Node, what: str) -> str:
        """A required, non-empty text value."""
        value = self.scalar(node)
        if value is None or value == "" or isinstance(value, bool | list | dict):
            raise self.fail(node, f"{what} needs a value here, not {value!r}.")
        return str(value)

    def map_of(
        self, node: yaml.Node, what: str, read: Callable[[yaml.Node, str], T]
    ) -> dict[str, T]:
        items = self.mapping(node, what, ()).items()
        return {key: read(value, f"{what}.{key}") for key, value in items}

    def optional(
        self,
        items: dict[str, yaml.Node],
        key: str,
        read: Callable[[yaml.Node, str], T],
        what: str,
        default: T,
    ) -> T:
        return read(items[key], what) if key in items else default

    def switched_off(self, node: yaml.Node) -> bool:
        """`grafana: null` or `bastion: false`: the section is left out on purpose."""
        return isinstance(node, yaml.ScalarNode) and self.scalar(node) in (None, False)

    def url(self, node: yaml.Node, what: str) -> str:
        value = self.scalar(node)
        problem = url_problem(value)
        if problem:
            raise self.fail(
                node,
                f"{what} must be an http(s) URL such as https://binder.example.org: {problem}.",
            )
        return str(value)

    def kubernetes_name(self, node: yaml.Node, what: str, kind: str) -> str:
        value = self.text(node, what)
        limit, pattern, called, letters = _NAME_RULES[kind]
        if len(value) > limit or not pattern.fullmatch(value):
            raise self.fail(
                node,
                f"{what} {value!r} is not a valid {called}: at most {limit} lowercase {letters}, "
                "starting and ending with a letter or digit.",
                f"e.g. {_suggested(value)!r}",
            )
        return value

    def text_list(self, node: yaml.Node, what: str) -> tuple[str, ...]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, f"{what} must be a list, e.g. [config/a.yaml, config/b.yaml].")
        return tuple(self.text(item, what) for item in node.value)

    def flag(self, node: yaml.Node, what: str) -> bool:
        value = self.scalar(node)
        if not isinstance(value, bool):
            raise self.fail(node, f"{what} must be true or false, not {value!r}.")
        return value


_ENV_KEYS = (
    "description",
    "cluster",
    "release",
    "namespace",
    "secrets",
    "urls",
    "grafana",
    "timeouts",
    "gated_by",
    "components",
    "extra_values",
    "bastion",
    "releases",
    "notify",
)
_RELEASE_KEYS = ("name", "chart", "version", "repository", "digest", "namespace", "extra_values")


def load(root: Path = PROJECT_ROOT, path: Path | None = None) -> Registry:
    """Load and check the registry; every error names the file and line.

    `path` (or the DEPLOY_REGISTRY variable) reads another registry file, e.g.
    to rehearse a change to it; values files are still found under `root`.
    """
    if path is None and os.environ.get("DEPLOY_REGISTRY"):
        path = Path(os.environ["DEPLOY_REGISTRY"])
    shown = path or REGISTRY_FILE
    try:
        text = (root / shown).read_text()
    except FileNotFoundError:
        raise RegistryError(
            f"{shown} is missing.",
            "Restore it from git: git checkout -- config/",
        ) from None
    try:
        reader = _Reader(shown, text)
    except yaml.YAMLError as error:
        raise RegistryError(f"{shown} is not valid YAML: {error}") from None
    top = reader.mapping(
        reader.root_node,
        "the top level",
        ("chart", "repository_mirrors", "environments", "groups"),
    )
    if "environments" not in top:
        raise reader.fail(reader.root_node, "no `environments:` mapping.")
    env_nodes = reader.mapping(top["environments"], "environments", ())
    chart = Path(reader.text(top["chart"], "chart")) if "chart" in top else Path("mybinder")
    envs = {name: _environment(reader, name, body, chart) for name, body in env_nodes.items()}
    for env in envs.values():
        if env.gated_by is not None and env.gated_by not in envs:
            raise reader.fail(
                env_nodes[env.name],
                f"environment {env.name!r} is gated by {env.gated_by!r}, which is not defined.",
                f"Define it or use one of: {', '.join(envs)}.",
            )
    _check_no_gate_cycle(reader, envs, env_nodes)
    mirrors: dict[str, str] = {}
    if "repository_mirrors" in top:
        mirrors = reader.map_of(top["repository_mirrors"], "repository_mirrors", reader.text)
    groups = _groups(reader, top["groups"], envs) if "groups" in top else {}
    return Registry(envs, chart, {**mirrors, **mirrors_from_environment()}, groups)


def _groups(reader: _Reader, node: yaml.Node, envs: dict[str, Environment]) -> dict[str, Group]:
    groups = {}
    for name, body in reader.mapping(node, "groups", ()).items():
        where = f"group {name!r}"
        if name in envs:
            raise reader.fail(
                body,
                f"{where} has the name of an environment; `invoke deploy --env={name}` "
                "could mean either.",
                "Give the group another name.",
            )
        items = reader.mapping(body, where, ("description", "members", "experimental", "notify"))
        if "members" not in items:
            raise reader.fail(body, f"{where} has no `members:`, the environments it deploys.")
        members = _member_list(reader, items["members"], f"{where} members", envs)
        if not members:
            raise reader.fail(items["members"], f"{where} lists no members.")
        experimental = (
            _member_list(reader, items["experimental"], f"{where} experimental", envs)
            if "experimental" in items
            else ()
        )
        for member in experimental:
            if member not in members:
                raise reader.fail(
                    items["experimental"],
                    f"{where}: {member!r} is experimental but not one of its members "
                    f"({', '.join(members)}).",
                    "Add it to members: too, or remove it from experimental:.",
                )
        gates = {m: envs[m].gated_by for m in members}
        ungated = [m for m, gate in gates.items() if gate is None]
        if ungated:
            raise reader.fail(
                items["members"],
                f"{where}: member {ungated[0]!r} has no gated_by. A group's members are "
                "deployed after their common gate (staging) has passed.",
                f"Set gated_by: on {ungated[0]!r} in environments:.",
            )
        if len(set(gates.values())) > 1:
            shown = ", ".join(f"{m} by {g}" for m, g in gates.items())
            raise reader.fail(
                items["members"],
                f"{where}: its members are gated by different environments ({shown}); "
                "a group has one gate, deployed once before every member.",
                "Gate every member by the same environment, or split the group.",
            )
        description = reader.optional(items, "description", reader.text, f"{where} description", "")
        notify = _notify(reader, where, items["notify"]) if "notify" in items else None
        groups[name] = Group(
            name, description, members, experimental, gates[members[0]] or "", notify
        )
    return groups


def _member_list(
    reader: _Reader, node: yaml.Node, what: str, envs: dict[str, Environment]
) -> tuple[str, ...]:
    names = reader.text_list(node, what)
    for item, name in zip(node.value, names, strict=True):
        if name not in envs:
            raise reader.fail(
                item,
                f"{what}: {name!r} is not an environment.",
                f"Use one of: {', '.join(envs)}.",
            )
        if names.count(name) > 1:
            raise reader.fail(item, f"{what}: {name!r} is listed twice.")
    return names


def mirrors_from_environment() -> dict[str, str]:
    """DEPLOY_CHART_MIRRORS="URL=MIRROR,URL=MIRROR": mirrors for one run, e.g. in CI."""
    mirrors: dict[str, str] = {}
    for pair in os.environ.get("DEPLOY_CHART_MIRRORS", "").split(","):
        if "=" in pair:
            original, mirror = pair.split("=", 1)
            mirrors[original.strip()] = mirror.strip()
    return mirrors


def _check_no_gate_cycle(
    reader: _Reader, envs: dict[str, Environment], nodes: dict[str, yaml.Node]
) -> None:
    for env in envs.values():
        seen = [env.name]
        current = env.gated_by
        while current is not None:
            if current in seen:
                raise reader.fail(
                    nodes[env.name],
                    f"the gates form a loop: {' -> '.join([*seen, current])}.",
                    "An environment cannot be gated by itself, directly or through others.",
                )
            seen.append(current)
            current = envs[current].gated_by


def _environment(reader: _Reader, name: str, node: yaml.Node, chart: Path) -> Environment:
    where = f"environment {name!r}"
    items = reader.mapping(node, where, _ENV_KEYS)
    if "releases" in items:
        for single in ("release", "namespace", "extra_values"):
            if single in items:
                raise reader.fail(
                    items[single],
                    f"{where} lists `releases:`, so `{single}:` belongs to each release.",
                    "Move it into the release it is for, under releases:.",
                )
        releases = _releases(reader, where, items["releases"], chart)
    else:
        releases = ()
    for required in ("cluster", "secrets") + (() if releases else ("release", "namespace")):
        if required not in items:
            raise reader.fail(node, f"{where} has no `{required}:`.")
    secrets = reader.mapping(items["secrets"], f"{where} secrets", ("dir", "key"))
    if not releases:
        release_name = reader.kubernetes_name(items["release"], f"{where} release", "release")
        namespace = reader.kubernetes_name(items["namespace"], f"{where} namespace", "namespace")
        extra = reader.optional(
            items, "extra_values", reader.text_list, f"{where} extra_values", ()
        )
        releases = (Release(release_name, namespace, str(chart), extra_values=extra),)
    return Environment(
        name=name,
        description=reader.optional(items, "description", reader.text, f"{where} description", ""),
        cluster=_cluster(reader, where, items["cluster"]),
        secrets_dir=Path(
            reader.optional(secrets, "dir", reader.text, f"{where} secrets.dir", "secrets")
        ),
        key=_key_source(reader, where, secrets.get("key"), items["secrets"]),
        urls=_urls(reader, where, items["urls"]) if "urls" in items else {},
        grafana=_grafana(reader, where, items["grafana"]) if "grafana" in items else None,
        timeouts=_timeouts(reader, where, items["timeouts"]) if "timeouts" in items else Timeouts(),
        gated_by=reader.optional(items, "gated_by", reader.text, f"{where} gated_by", None),
        components=reader.map_of(items["components"], f"{where} components", reader.flag)
        if "components" in items
        else {},
        bastion=_bastion(reader, where, items["bastion"]) if "bastion" in items else None,
        releases=releases,
        listed="releases" in items,
        notify=_notify(reader, where, items["notify"]) if "notify" in items else None,
    )


def _releases(reader: _Reader, where: str, node: yaml.Node, chart: Path) -> tuple[Release, ...]:
    """An environment's `releases:`, in deploy order; the site chart's release, if any, last."""
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        raise reader.fail(
            node,
            f"{where} releases must be a list of releases, each with name, chart and namespace.",
        )
    releases: list[Release] = []
    for item in node.value:
        what = f"{where} releases[{len(releases)}]"
        fields = reader.mapping(item, what, _RELEASE_KEYS)
        for required in ("name", "chart", "namespace"):
            if required not in fields:
                raise reader.fail(item, f"{what} has no `{required}:`.")
        name = reader.kubernetes_name(fields["name"], f"{what} name", "release")
        what = f"{where} release {name!r}"
        texts = {
            key: reader.text(fields[key], f"{what} {key}")
            for key in ("chart", "version", "repository", "digest")
            if key in fields
        }
        reference = texts["chart"]
        if "repository" in texts:
            problem = url_problem(texts["repository"])
            if problem:
                raise reader.fail(
                    fields["repository"],
                    f"{what} repository must be a chart repository's http(s) URL: {problem}.",
                    "For a chart in an OCI registry, write chart: oci://HOST/PATH/CHART instead.",
                )
            if "/" in reference:
                raise reader.fail(
                    fields["chart"],
                    f"{what} chart {reference!r} must be the chart's name in "
                    f"{texts['repository']}.",
                )
        remote = "repository" in texts or reference.startswith("oci://")
        if remote and "version" not in texts:
            raise reader.fail(
                item,
                f"{what} takes {reference} from a registry or repository without a pinned "
                "`version:`; every deploy of a commit must get the same chart.",
                "Add version: with the exact version to deploy.",
            )
        if not remote:
            for key in ("version", "digest"):
                if key in texts:
                    raise reader.fail(
                        fields[key],
                        f"{what} chart {reference} is a folder of this repository; "
                        f"`{key}:` has no use there (its Chart.yaml says it).",
                    )
            if not (PROJECT_ROOT / reference / "Chart.yaml").is_file() and Path(reference) != Path(
                chart
            ):
                raise reader.fail(
                    fields["chart"],
                    f"{what} chart {reference!r} is neither a folder of this repository holding "
                    "a Chart.yaml nor an oci:// reference.",
                    "Write a folder (e.g. mybinder), oci://HOST/PATH/CHART with version:, or a "
                    "chart name with repository: and version:.",
                )
        digest = texts.get("digest", "")
        if digest and not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise reader.fail(
                fields["digest"], f"{what} digest must read sha256:<64 hex digits>, not {digest!r}."
            )
        if any(r.name == name for r in releases):
            raise reader.fail(fields["name"], f"{where}: the release {name!r} is listed twice.")
        releases.append(
            Release(
                name=name,
                namespace=reader.kubernetes_name(
                    fields["namespace"], f"{what} namespace", "namespace"
                ),
                chart=reference,
                version=texts.get("version", ""),
                repository=texts.get("repository", ""),
                digest=digest,
                extra_values=reader.optional(
                    fields, "extra_values", reader.text_list, f"{what} extra_values", ()
                ),
                site=not remote and Path(reference) == Path(chart),
            )
        )
    sites = [r for r in releases if r.site]
    if len(sites) > 1:
        raise reader.fail(
            node,
            f"{where} deploys the site chart {chart} twice ({', '.join(r.name for r in sites)}).",
        )
    return tuple(releases)


def _urls(reader: _Reader, where: str, node: yaml.Node) -> dict[str, str]:
    # An empty URL means "this environment has none" (e.g. no federation redirector).
    urls = reader.mapping(node, f"{where} urls", ())
    return {
        name: reader.url(value, f"{where} urls.{name}") if reader.scalar(value) else ""
        for name, value in urls.items()
    }


def _suggested(name: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:53] or "binder"


def _cluster(reader: _Reader, where: str, node: yaml.Node) -> ClusterAccess:
    kind_node = reader.mapping(node, f"{where} cluster", ()).get("kind")
    kind = reader.scalar(kind_node) if kind_node is not None else None
    if kind not in CLUSTER_KINDS:
        raise reader.fail(
            kind_node or node,
            f"{where} cluster: kind must be one of {', '.join(CLUSTER_KINDS)}, not {kind!r}.",
        )
    spec = cluster_kind(kind)
    items = reader.mapping(node, f"{where} cluster", ("kind", *spec.required, *spec.optional))
    for key in spec.required:
        if key not in items:
            raise reader.fail(node, f"{where} cluster of kind {kind} needs `{key}:`.")
    fields = {k: reader.text(v, f"{where} cluster.{k}") for k, v in items.items() if k != "kind"}
    problem = spec.problem(fields)
    if problem is not None:
        raise reader.fail(items[problem[0]], f"{where} {problem[1]}")
    return ClusterAccess(kind, fields)


def _bastion(reader: _Reader, where: str, node: yaml.Node) -> Bastion | None:
    if reader.switched_off(node):
        return None
    items = reader.mapping(
        node, f"{where} bastion", ("host", "port", "user", "key_file", "known_hosts")
    )
    for required in ("host", "user", "key_file"):
        if required not in items:
            raise reader.fail(node, f"{where} bastion needs `{required}:`.")
    port = reader.scalar(items["port"]) if "port" in items else 22
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise reader.fail(
            items["port"], f"{where} bastion port must be a TCP port number, not {port!r}."
        )
    values = {
        k: str(reader.scalar(items[k]))
        for k in ("host", "user", "key_file", "known_hosts")
        if k in items
    }
    return Bastion(port=port, **values)


def _key_source(
    reader: _Reader, where: str, node: yaml.Node | None, parent: yaml.Node
) -> KeySource:
    if node is None:
        raise reader.fail(parent, f"{where} secrets has no `key:` saying how to unlock them.")
    every_field = {"source", "name"}
    for required, optional in KEY_SOURCES.values():
        every_field.update(required, optional)
    items = reader.mapping(node, f"{where} secrets key", tuple(sorted(every_field)))
    source = reader.scalar(items["source"]) if "source" in items else None
    if source not in KEY_SOURCES:
        raise reader.fail(
            items.get("source", node),
            f"{where} secrets key: source must be one of {', '.join(KEY_SOURCES)}, not {source!r}.",
        )
    required, optional = KEY_SOURCES[source]
    for key in required:
        if key not in items:
            raise reader.fail(node, f"{where} secrets key of source {source} needs `{key}:`.")
    for key in items:
        if key not in ("source", "name", *required, *optional):
            raise reader.fail(
                items[key],
                f"{where} secrets key of source {source} has no use for `{key}:`.",
            )
    values = {
        k: reader.text(v, f"{where} secrets.key.{k}")
        for k, v in items.items()
        if k not in ("source", "name")
    }
    key_name = reader.optional(items, "name", reader.text, f"{where} secrets.key.name", "")
    return KeySource(source=source, key_name=key_name, **values)


def _grafana(reader: _Reader, where: str, node: yaml.Node) -> Grafana | None:
    if reader.switched_off(node):
        return None
    what = f"{where} grafana"
    fields = ("url", "token_file", "token_env", "dashboard_uid", "org_id", "tags", "strict")
    items = reader.mapping(node, what, fields)
    if "url" not in items:
        raise reader.fail(node, f"{what} needs `url:` (or `grafana: null` to skip it).")
    texts = {
        key: reader.text(items[key], f"{what}.{key}")
        for key in ("url", "token_file", "token_env", "dashboard_uid")
        if key in items
    }
    reader.url(items["url"], f"{what}.url")
    org_id = reader.scalar(items["org_id"]) if "org_id" in items else None
    if org_id is not None and (isinstance(org_id, bool) or not isinstance(org_id, int)):
        raise reader.fail(items["org_id"], f"{what}.org_id must be a whole number, not {org_id!r}.")
    return Grafana(
        url=texts["url"].rstrip("/"),
        token_file=texts.get("token_file", ""),
        token_env=texts.get("token_env", ""),
        dashboard_uid=texts.get("dashboard_uid", ""),
        org_id=org_id,
        tags=reader.optional(items, "tags", reader.text_list, f"{what}.tags", ()),
        strict=reader.optional(items, "strict", reader.flag, f"{what}.strict", False),
    )


def _notify(reader: _Reader, where: str, node: yaml.Node) -> Notify | None:
    if reader.switched_off(node):
        return None
    what = f"{where} notify"
    items = reader.mapping(node, what, ("url_env", "url_file", "format", "on_success"))
    sources = [key for key in ("url_env", "url_file") if key in items]
    if len(sources) != 1:
        raise reader.fail(
            node,
            f"{what} needs one of `url_env:` (the variable holding the webhook's URL) or "
            "`url_file:` (a file under the secrets folder holding it)"
            + (", not both." if sources else "."),
            "The URL carries the webhook's token: keep it in a secret, never in this file.",
        )
    fmt = reader.scalar(items["format"]) if "format" in items else "slack"
    if fmt not in NOTIFY_FORMATS:
        raise reader.fail(
            items["format"],
            f"{what}.format must be one of {', '.join(NOTIFY_FORMATS)}, not {fmt!r}.",
        )
    return Notify(
        url_env=reader.optional(items, "url_env", reader.text, f"{what}.url_env", ""),
        url_file=reader.optional(items, "url_file", reader.text, f"{what}.url_file", ""),
        format=fmt,
        on_success=reader.optional(items, "on_success", reader.flag, f"{what}.on_success", False),
    )


def _timeouts(reader: _Reader, where: str, node: yaml.Node) -> Timeouts:
    items = reader.mapping(node, f"{where} timeouts", ("upgrade", "rollout", "smoke"))
    values: dict[str, int] = {}
    for key, value_node in items.items():
        value = reader.scalar(value_node)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise reader.fail(
                value_node,
                f"{where} timeouts.{key} must be a whole number of seconds, not {value!r}.",
            )
        values[key] = value
    return Timeouts(**values)
