"""The environment registry: the shipped one loads, and every mistake names file and line."""

from pathlib import Path

import pytest

from tasks import registry
from tasks.errors import StepFailure
from tasks.runner import PROJECT_ROOT


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
    layers = [str(p.relative_to(PROJECT_ROOT)) for p in env.values_files()]
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
