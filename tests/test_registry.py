"""The environment registry: the shipped one loads, and every mistake names file and line."""

from pathlib import Path

import pytest

from tasks.config import registry
from tasks.core.errors import StepFailure
from tasks.core.runner import PROJECT_ROOT


def write_registry(root: Path, text: str) -> Path:
    (root / "config").mkdir(parents=True, exist_ok=True)
    path = root / "config" / "environments.yaml"
    path.write_text(text)
    return root


LOCAL = """
    cluster: {kind: local, name: binder-staging}
    release: binder
    namespace: ns
    secrets: {dir: secrets/demo, key: {source: file, path: k.key}}
"""


def test_shipped_registry_has_real_site_and_demo_pair():
    loaded = registry.load(PROJECT_ROOT)
    assert {"staging", "prod", "local-staging", "local-prod"} <= set(loaded.environments)
    assert loaded.get("prod").gated_by == "staging"
    assert loaded.get("prod").cluster.kind == "gke"
    assert loaded.get("local-prod").gated_by == "local-staging"
    assert [e.name for e in loaded.chain("prod")] == ["staging", "prod"]


def test_values_layer_in_mybinder_order():
    env = registry.load(PROJECT_ROOT).get("prod")
    layers = [str(p.relative_to(PROJECT_ROOT)) for p in env.target().values_files()]
    assert layers == [
        "config/common.yaml",
        "secrets/config/common.yaml",
        "config/prod.yaml",
        "secrets/config/prod.yaml",
    ]


def test_unknown_environment_lists_the_known_ones():
    with pytest.raises(StepFailure) as raised:
        registry.load(PROJECT_ROOT).get("prdo")
    assert "prdo" in raised.value.why
    assert "local-staging" in raised.value.fix and "prod" in raised.value.fix


def test_unknown_key_is_reported_with_its_line(tmp_path):
    root = write_registry(tmp_path, "environments:\n  a:" + LOCAL + "    gated_bye: b\n")
    with pytest.raises(StepFailure) as raised:
        registry.load(root)
    assert "config/environments.yaml:7" in raised.value.why
    assert "gated_bye" in raised.value.why
    assert "gated_by" in raised.value.fix


def test_gate_that_does_not_exist_is_an_error(tmp_path):
    root = write_registry(tmp_path, "environments:\n  a:" + LOCAL + "    gated_by: nowhere\n")
    with pytest.raises(StepFailure, match="gated by 'nowhere'"):
        registry.load(root)


def test_gates_that_loop_are_an_error(tmp_path):
    text = "environments:\n  a:" + LOCAL + "    gated_by: b\n  b:" + LOCAL + "    gated_by: a\n"
    with pytest.raises(StepFailure, match="loop"):
        registry.load(write_registry(tmp_path, text))


def test_cluster_kind_is_checked(tmp_path):
    text = "environments:\n  a:" + LOCAL.replace("kind: local", "kind: eks")
    with pytest.raises(StepFailure, match="kind must be one of local, kubeconfig, gke"):
        registry.load(write_registry(tmp_path, text))


def test_key_source_fields_are_checked(tmp_path):
    text = "environments:\n  a:" + LOCAL.replace("{source: file, path: k.key}", "{source: openssl}")
    with pytest.raises(StepFailure, match="source openssl needs `file:`"):
        registry.load(write_registry(tmp_path, text))


def test_timeouts_must_be_whole_seconds(tmp_path):
    text = "environments:\n  a:" + LOCAL + "    timeouts: {rollout: ten}\n"
    with pytest.raises(StepFailure, match=r"timeouts\.rollout must be a whole number"):
        registry.load(write_registry(tmp_path, text))


def test_duplicate_environment_is_an_error(tmp_path):
    text = "environments:\n  a:" + LOCAL + "  a:" + LOCAL
    with pytest.raises(StepFailure, match="appears twice"):
        registry.load(write_registry(tmp_path, text))


def test_mirrors_from_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOY_CHART_MIRRORS", "https://a.example/=http://127.0.0.1:1/")
    loaded = registry.load(write_registry(tmp_path, "environments:\n  a:" + LOCAL))
    assert loaded.repository_mirrors == {"https://a.example/": "http://127.0.0.1:1/"}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("    release:\n", "release needs a value"),
        ("    gated_by:\n", "gated_by needs a value"),
        ("    urls: [https://a.example]\n", "urls must be a mapping"),
        ("    extra_values: 5\n", "extra_values must be a list"),
        ("    timeouts: {upgrade: yes}\n", "timeouts.upgrade must be a whole number"),
        ("    grafana: {url: https://g.example, org_id: main}\n", "org_id must be a whole number"),
        ("    grafana: {url: https://g.example, strict: maybe}\n", "strict must be true or false"),
        ("    components: {static: sometimes}\n", "must be true or false"),
    ],
)
def test_wrong_types_and_empty_values_are_named_with_their_line(tmp_path, line, message):
    body = LOCAL.replace("    release: binder\n", "") if "release" in line else LOCAL
    root = write_registry(tmp_path, "environments:\n  a:" + body + line)
    with pytest.raises(StepFailure) as raised:
        registry.load(root)
    assert message in raised.value.why
    assert raised.value.why.startswith("config/environments.yaml:")


@pytest.mark.parametrize(
    ("line", "wanted"),
    [
        ("    urls: {binder: 8080}\n", "urls.binder must be an http(s) URL"),
        ("    urls: {hub: 'hub.example.org'}\n", "does not start with https://"),
        ("    urls: {binder: 'https://binder.example.org:99999'}\n", "has a port that is not"),
        ("    grafana: {url: 'grafana.example.org'}\n", "grafana.url must be an http(s) URL"),
    ],
)
def test_a_url_that_can_never_be_requested_is_refused_with_its_line(tmp_path, line, wanted):
    root = write_registry(tmp_path, "environments:\n  a:" + LOCAL + line)
    with pytest.raises(StepFailure) as raised:
        registry.load(root)
    assert "config/environments.yaml:7" in raised.value.why
    assert wanted in raised.value.why


def test_an_empty_url_still_means_none(tmp_path):
    urls = "    urls: {binder: 'https://b.example.org', hub: ''}\n"
    loaded = registry.load(write_registry(tmp_path, "environments:\n  a:" + LOCAL + urls))
    assert loaded.get("a").urls == {"binder": "https://b.example.org", "hub": ""}


@pytest.mark.parametrize(
    ("field", "value", "wanted"),
    [
        ("namespace", "Binder_Staging", "is not a valid Kubernetes namespace"),
        ("namespace", "x" * 64, "is not a valid Kubernetes namespace"),
        ("release", "My Release", "is not a valid helm release name"),
        ("release", "r" * 54, "is not a valid helm release name"),
    ],
)
def test_a_kubernetes_name_the_cluster_would_refuse_is_refused_with_its_line(
    tmp_path, field, value, wanted
):
    body = LOCAL.replace(f"    {field}: ", f"    {field}: '{value}' #")
    root = write_registry(tmp_path, "environments:\n  a:" + body)
    with pytest.raises(StepFailure) as raised:
        registry.load(root)
    assert "config/environments.yaml:" in raised.value.why
    assert wanted in raised.value.why
    assert raised.value.fix.startswith("e.g. '")


def test_a_local_cluster_name_invoke_cluster_up_would_refuse_is_refused(tmp_path):
    body = LOCAL.replace("name: binder-staging", "name: ../elsewhere")
    root = write_registry(tmp_path, "environments:\n  a:" + body)
    with pytest.raises(StepFailure, match="is not a local cluster name"):
        registry.load(root)


# -- groups -------------------------------------------------------------------------

GATED = LOCAL + "    gated_by: staging\n"


def group_registry(tmp_path: Path, groups: str, members: tuple[str, ...] = ("a", "b")) -> Path:
    environments = "environments:\n  staging:" + LOCAL
    environments += "".join(f"  {name}:" + GATED for name in members)
    return write_registry(tmp_path, environments + "groups:\n" + groups)


def test_shipped_registry_has_the_prod_federation():
    loaded = registry.load(PROJECT_ROOT)
    federation = loaded.group("federation")
    assert federation is not None and "prod" in federation.members
    assert federation.gate == "staging"
    assert [e.name for e in loaded.chain("federation")] == ["staging", *federation.members]


def test_a_group_knows_its_gate_and_experimental_members(tmp_path):
    root = group_registry(tmp_path, "  fed:\n    members: [a, b]\n    experimental: [b]\n")
    loaded = registry.load(root)
    fed = loaded.group("fed")
    assert (fed.members, fed.experimental, fed.gate) == (("a", "b"), ("b",), "staging")
    assert loaded.target("fed") is fed and loaded.target("a") == loaded.get("a")
    assert [e.name for e in loaded.checked_first("fed")] == ["staging", "a"]


@pytest.mark.parametrize(
    ("groups", "line", "said"),
    [
        (
            "  fed:\n    members: [a, nowhere]\n",
            21,
            "'fed' members: 'nowhere' is not an environment",
        ),
        ("  fed:\n    members: [a, a]\n", 21, "'a' is listed twice"),
        ("  fed:\n    members: [a]\n    experimental: [b]\n", 22, "'b' is experimental but not"),
        ("  fed:\n    description: x\n", 21, "group 'fed' has no `members:`"),
        ("  fed:\n    members: []\n", 21, "group 'fed' lists no members"),
        ("  fed:\n    members: [staging]\n", 21, "member 'staging' has no gated_by"),
        ("  a:\n    members: [b]\n", 21, "group 'a' has the name of an environment"),
        ("  fed:\n    member: [a]\n", 21, "unknown key 'member'"),
    ],
)
def test_a_mistake_in_a_group_names_its_line(tmp_path, groups, line, said):
    root = group_registry(tmp_path, groups)
    with pytest.raises(StepFailure) as raised:
        registry.load(root)
    assert f"config/environments.yaml:{line}:" in raised.value.why
    assert said in raised.value.why


def test_members_gated_by_different_environments_cannot_form_a_group(tmp_path):
    text = "environments:\n  staging:" + LOCAL + "  other:" + LOCAL
    text += "  a:" + GATED + "  b:" + LOCAL + "    gated_by: other\n"
    root = write_registry(tmp_path, text + "groups:\n  fed:\n    members: [a, b]\n")
    with pytest.raises(StepFailure) as raised:
        registry.load(root)
    assert "gated by different environments (a by staging, b by other)" in raised.value.why


def test_an_unknown_target_lists_environments_and_groups(tmp_path):
    loaded = registry.load(group_registry(tmp_path, "  fed:\n    members: [a]\n"))
    with pytest.raises(StepFailure) as raised:
        loaded.target("feed")
    assert "Unknown environment or group 'feed'" in raised.value.why
    assert "fed" in raised.value.fix and "staging" in raised.value.fix
    with pytest.raises(StepFailure) as one:
        loaded.get("fed")
    assert "'fed' is a group of environments" in one.value.why


# -- several releases per environment ---------------------------------------------

RELEASES = """
    cluster: {kind: local, name: binder-staging}
    secrets: {dir: secrets/demo, key: {source: file, path: k.key}}
    releases:
"""


def test_an_environment_lists_its_releases_in_order_the_site_last(tmp_path):
    releases = (
        "      - {name: traefik, chart: oci://ghcr.io/traefik/helm/traefik, version: 41.1.1,\n"
        "         namespace: ingress, extra_values: [config/more.yaml]}\n"
        "      - {name: site, chart: mybinder, namespace: binder}\n"
    )
    root = write_registry(tmp_path, "environments:\n  a:" + RELEASES + releases)
    env = registry.load(root).get("a")
    assert env.listed and env.release_names() == ["traefik", "site"]
    # Without a release named, a step works on the last release: the site's.
    site = env.target()
    assert (site.release.name, site.namespace, env.lock_namespace) == ("site", "binder", "binder")
    traefik = env.target("traefik")
    assert (traefik.release.name, traefik.namespace, traefik.env.lock_namespace) == (
        "traefik",
        "ingress",
        "binder",
    )
    assert traefik.release.is_oci and traefik.release.chart_name == "traefik"
    assert not traefik.release.site and site.release.site
    # A release beside the site's has its own layers, under config/releases/<release>/.
    for path in ("config/releases/traefik/common.yaml", "config/releases/traefik/a.yaml"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("{}\n")
    (tmp_path / "config/a.yaml").write_text("{}\n")
    shown = [str(p.relative_to(tmp_path)) for p in traefik.values_files(tmp_path)]
    assert shown == [
        "config/releases/traefik/common.yaml",
        "config/releases/traefik/a.yaml",
        "config/more.yaml",
    ]
    assert [str(p.relative_to(tmp_path)) for p in site.values_files(tmp_path)] == ["config/a.yaml"]
    with pytest.raises(StepFailure) as raised:
        env.target("nginx")
    assert "no release 'nginx'" in raised.value.why and "traefik, site" in raised.value.fix


def test_a_single_release_entry_is_one_release_of_the_site_chart():
    env = registry.load(PROJECT_ROOT).get("prod")
    assert not env.listed and env.release_names() == ["prod"]
    [only] = env.releases
    assert (only.name, only.namespace, only.chart, only.site) == ("prod", "prod", "mybinder", True)
    assert env.target() == env.target("prod") and env.target().release is only


@pytest.mark.parametrize(
    ("entry", "line", "said"),
    [
        (
            "      - {name: t, chart: oci://ghcr.io/traefik/helm/traefik, namespace: n}\n",
            6,
            "without a pinned `version:`",
        ),
        (
            "      - {name: t, chart: traefik, repository: https://x.org/, namespace: n}\n",
            6,
            "without a pinned `version:`",
        ),
        ("      - {name: t, chart: nowhere, namespace: n}\n", 6, "neither a folder"),
        ("      - {name: t, chart: mybinder, version: 1.0.0, namespace: n}\n", 6, "no use there"),
        ("      - {name: T_1, chart: mybinder, namespace: n}\n", 6, "not a valid helm release"),
        ("      - {name: t, chart: mybinder}\n", 6, "has no `namespace:`"),
        (
            "      - {name: t, chart: oci://h/t, version: 1, namespace: n, digest: md5:x}\n",
            6,
            "sha256:<64 hex digits>",
        ),
        (
            "      - {name: t, chart: mybinder, namespace: n}\n"
            "      - {name: t, chart: oci://h/t, version: 1, namespace: m}\n",
            7,
            "listed twice",
        ),
        (
            "      - {name: t, chart: mybinder, namespace: n}\n"
            "      - {name: u, chart: mybinder, namespace: m}\n",
            6,
            "deploys the site chart mybinder twice",
        ),
    ],
)
def test_a_mistake_in_a_release_names_the_line(tmp_path, entry, line, said):
    root = write_registry(tmp_path, "environments:\n  a:" + RELEASES + entry)
    with pytest.raises(StepFailure) as raised:
        registry.load(root)
    assert f"config/environments.yaml:{line}:" in raised.value.why
    assert said in raised.value.why


def test_releases_and_a_single_release_do_not_mix(tmp_path):
    text = "environments:\n  a:" + RELEASES.replace(
        "    releases:\n", "    release: x\n    releases:\n"
    )
    text += "      - {name: t, chart: mybinder, namespace: n}\n"
    root = write_registry(tmp_path, text)
    with pytest.raises(StepFailure) as raised:
        registry.load(root)
    assert "`release:` belongs to each release" in raised.value.why
    assert "under releases:" in raised.value.fix
