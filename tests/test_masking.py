"""A secret never reaches the output, not even quoted in part."""

from __future__ import annotations

import secrets as random_secrets
import shutil

import pytest
import yaml

from tasks.core.masking import FRAGMENT_LENGTH, SecretMasker
from tasks.core.run import current
from tasks.core.runner import PROJECT_ROOT
from tasks.steps.secret_files import _register_values
from tests.fixtures.chain import demo_registry, invoke

TOKEN = random_secrets.token_hex(24)
BROKEN_LINE = f'federationRedirect:\n  secretToken: "{TOKEN}": x\n'


def leaked_pieces(text: str, secret: str, length: int = 8) -> list[str]:
    """Every run of `length` characters of `secret` that appears in `text`."""
    return [
        secret[i : i + length]
        for i in range(len(secret) - length + 1)
        if secret[i : i + length] in text
    ]


def pyyaml_message(text: str) -> str:
    with pytest.raises(yaml.YAMLError) as raised:
        yaml.safe_load(text)
    return str(raised.value)


def test_pyyamls_shortened_quote_of_a_secret_line_is_masked():
    message = pyyaml_message(BROKEN_LINE)
    assert leaked_pieces(message, TOKEN, 24), "PyYAML no longer quotes the line?"
    fresh = SecretMasker()
    fresh.register(TOKEN)
    assert leaked_pieces(fresh.mask(message), TOKEN, FRAGMENT_LENGTH) == []


def test_a_truncated_secret_is_masked_at_either_end():
    fresh = SecretMasker()
    fresh.register(TOKEN)
    assert fresh.mask(f"token={TOKEN[:20]}...") == "token=********..."
    assert fresh.mask(f"...{TOKEN[-15:]} was refused") == "...******** was refused"


def test_ordinary_text_is_left_alone():
    fresh = SecretMasker()
    fresh.register("https://hub.example.org/secret-path-0f3a9c")
    fresh.register(TOKEN)
    text = "helm upgrade staging mybinder --namespace staging (short: secret-pa)"
    assert fresh.mask(text) == text


def test_a_broken_secret_line_registers_the_value_before_its_stray_colon():
    _register_values(BROKEN_LINE)
    shown = current().masker.mask(pyyaml_message(BROKEN_LINE))
    assert leaked_pieces(shown, TOKEN, FRAGMENT_LENGTH) == []


@pytest.mark.cluster
def test_the_smoke_suite_names_a_broken_secret_line_without_quoting_it(both_clusters, tmp_path):
    secrets_dir = tmp_path / "secrets"
    shutil.copytree(PROJECT_ROOT / "secrets" / "demo", secrets_dir)
    (secrets_dir / "config" / "local-staging.yaml").write_text(BROKEN_LINE)
    key = {"source": "file", "name": "demo", "path": "config/demo/git-crypt-demo.key"}
    env, _ = demo_registry(tmp_path, {"secrets": {"dir": str(secrets_dir), "key": key}})

    result = invoke("smoke-test", "--env=local-staging", env=env)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-3000:]
    assert "INTERNALERROR" not in out and "Traceback" not in out, out[-3000:]
    assert f"{secrets_dir}/config/local-staging.yaml:2:" in out, out[-3000:]
    assert "mapping values are not allowed here" in out
    assert leaked_pieces(out, TOKEN) == []
