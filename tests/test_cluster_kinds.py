"""A cluster kind is one module plus a line in the registry's table: no step changes."""

from pathlib import Path

import pytest
import yaml

from tasks.adapters import access
from tasks.config import registry
from tasks.config.context import load_registry
from tasks.config.registry import RegistryError
from tasks.flows import doctor
from tasks.steps import secret_files
from tests.fakes.environments import step_context, use_registry

SERVER = "https://127.0.0.1:6443"


@pytest.fixture
def command_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.CLUSTER_KINDS, "command", "tests.fakes.command_kind")


def printed_kubeconfig(tmp_path: Path) -> Path:
    path = tmp_path / "printed-kubeconfig.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "toy", "cluster": {"server": SERVER}}],
                "contexts": [{"name": "toy", "context": {"cluster": "toy", "user": "toy"}}],
                "users": [{"name": "toy", "user": {"token": "not-a-real-token"}}],
                "current-context": "toy",
            }
        )
    )
    return path


def test_a_new_kind_opens_credentials_the_steps_commands_use(
    command_kind: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    source = printed_kubeconfig(tmp_path)
    use_registry(
        monkeypatch, tmp_path, {"toy": {"cluster": {"kind": "command", "command": f"cat {source}"}}}
    )
    ctx = step_context("toy")

    with access.credentials(ctx) as variables:
        kubeconfig = Path(variables["KUBECONFIG"])
        server = ctx.runner.with_env(**variables).run(
            [
                "kubectl",
                "config",
                "view",
                "--minify",
                "-o",
                "jsonpath={.clusters[0].cluster.server}",
            ],
            quiet=True,
        )
        assert kubeconfig.stat().st_mode & 0o077 == 0

    assert server.stdout == SERVER
    assert not kubeconfig.exists()
    assert doctor.credential_checks(ctx)[0].detail == f"kubeconfig printed by `cat {source}`"
    assert [path.name for path, _ in secret_files.required_files(ctx.environment)] == [
        "common.yaml",
        "toy.yaml",
    ]


def test_the_registry_checks_a_new_kinds_fields_with_their_line(
    command_kind: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = use_registry(monkeypatch, tmp_path, {"toy": {"cluster": {"kind": "command"}}})

    with pytest.raises(RegistryError) as missing:
        load_registry()

    assert missing.value.why.startswith(f"{path}:")
    assert "cluster of kind command needs `command:`" in missing.value.why


def test_an_unknown_kind_names_every_kind_of_the_table(
    command_kind: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_registry(monkeypatch, tmp_path, {"toy": {"cluster": {"kind": "kind"}}})

    with pytest.raises(RegistryError, match="one of local, kubeconfig, gke, command, not 'kind'"):
        load_registry()
