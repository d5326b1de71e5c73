"""decrypt-secrets, check-secrets and lock-secrets against throwaway repositories.

Everything runs for real: git-crypt encrypts, openssl and GnuPG guard the key,
openssl reads the certificates. Nothing secret may reach the output.
"""

from __future__ import annotations

import base64
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from invoke import Context
from invoke.exceptions import Exit

from tasks.cli import operate, steps
from tasks.config import registry
from tasks.config.context import StepContext
from tasks.config.registry import Environment, KeySource
from tasks.core.errors import Skipped, StepFailure
from tasks.core.output import say
from tasks.core.run import current
from tasks.core.runner import PROJECT_ROOT, Runner
from tasks.steps import secret_files
from tests.helpers_git import (
    GpgKeys,
    SecretsRepo,
    certificate,
    environment,
    git,
    kubeconfig,
    make_gpg_keys,
    make_repo,
    run,
    step_context,
    stop_gpg_agent,
)

CANARY_VALUE = "canary-registry-password-9d41"
CANARY_COOKIE = "canary-cookie-secret-31f0"
CANARY_TOKEN = "canary-grafana-token-77ab"
CANARY_DEMO = "canary-demo-value-0c2d"


@pytest.fixture(autouse=True)
def no_keyring(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # No test may reach the operator's own keyring.
    monkeypatch.setenv("GNUPGHOME", str(tmp_path / "no-keyring"))


@pytest.fixture(scope="module")
def client_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return certificate(tmp_path_factory.mktemp("cert"), days=365)


@pytest.fixture(scope="module")
def gpg_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpgKeys]:
    keys = make_gpg_keys(tmp_path_factory.mktemp("gpg"))
    yield keys
    stop_gpg_agent(keys.protected_home)
    stop_gpg_agent(keys.keyring_home)


def site_files(cert: tuple[str, str]) -> dict[str, str | bytes]:
    return {
        "secrets/config/common.yaml": f"registry:\n  password: {CANARY_VALUE}\n",
        "secrets/config/staging.yaml": f"hub:\n  cookieSecret: {CANARY_COOKIE}\n",
        "secrets/kubeconfig.yaml": kubeconfig(*cert),
        "secrets/grafana-token": CANARY_TOKEN + "\n",
        "secrets/demo/config/common.yaml": f"demo: {CANARY_DEMO}\n",
        "secrets/demo/config/local-staging.yaml": "hub: {}\n",
    }


@pytest.fixture
def repo(tmp_path: Path, client_cert: tuple[str, str]) -> SecretsRepo:
    return make_repo(tmp_path, site_files(client_cert))


def temporary_leftovers() -> set[Path]:
    """What decrypt-secrets puts in the temporary folder: the key and a GNUPGHOME."""
    folder = Path(tempfile.gettempdir())
    return {*folder.glob("deploy-git-crypt-*"), *folder.glob("deploy-gnupg-*")}


def openssl_encrypt(repo: SecretsRepo, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """The default key encrypted the way `travis encrypt-file` does; key and IV in CI variables."""
    key, iv = os.urandom(32).hex(), os.urandom(16).hex()
    target = repo.root.parent / "crypt-key.enc"
    run("openssl", "aes-256-cbc", "-K", key, "-iv", iv, "-in", repo.default_key, "-out", target)
    monkeypatch.setenv("CRYPT_KEY", key)
    monkeypatch.setenv("CRYPT_IV", iv)
    return key, iv


OPENSSL = KeySource(
    source="openssl", file="../crypt-key.enc", key_env="CRYPT_KEY", iv_env="CRYPT_IV"
)


def unlock(repo: SecretsRepo, env: Environment | None = None, dry_run: bool = False) -> str | None:
    return secret_files.unlock(step_context(repo, env or environment(), dry_run=dry_run))


def failure_text(failure: StepFailure) -> str:
    return "\n".join((failure.why, failure.fix, failure.details))


# Each key source unlocks.


def test_file_key_unlocks_the_named_demo_key_only(repo: SecretsRepo) -> None:
    env = environment(
        "local-staging",
        KeySource(source="file", key_name="demo", path="../demo.key"),
        secrets_dir="secrets/demo",
        kubeconfig="",
        grafana_token="",
    )

    note = unlock(repo, env)

    assert note and "unlocked with the git-crypt key 'demo'" in note
    assert (repo.root / "secrets/demo/config/common.yaml").read_text() == f"demo: {CANARY_DEMO}\n"
    assert repo.is_locked("secrets/config/common.yaml")
    assert repo.keys_installed() == ["demo"]


def test_openssl_key_unlocks_and_leaves_no_key_behind(
    repo: SecretsRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    openssl_encrypt(repo, monkeypatch)
    before = temporary_leftovers()

    note = unlock(repo, environment(key=OPENSSL))

    assert note and note.startswith("unlocked with the default git-crypt key")
    assert not repo.is_locked("secrets/config/common.yaml")
    assert temporary_leftovers() == before


def test_base64_env_key_unlocks(repo: SecretsRepo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CRYPT_KEY", base64.b64encode(repo.default_key.read_bytes()).decode())

    unlock(repo, environment(key=KeySource(source="base64-env", env="GIT_CRYPT_KEY")))

    assert (repo.root / "secrets/grafana-token").read_text() == CANARY_TOKEN + "\n"


def test_gpg_key_unlocks_with_private_key_and_passphrase_from_ci_variables(
    repo: SecretsRepo, gpg_keys: GpgKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    encrypted = repo.root.parent / "crypt-key.gpg"
    gpg_keys.encrypt(gpg_keys.protected_home, gpg_keys.protected_id, repo.default_key, encrypted)
    monkeypatch.setenv("DEPLOY_GPG_KEY", gpg_keys.armored_private)
    monkeypatch.setenv("DEPLOY_GPG_PASSPHRASE", gpg_keys.passphrase)
    before = temporary_leftovers()

    unlock(repo, environment(key=gpg_source()))

    assert not repo.is_locked("secrets/config/staging.yaml")
    assert temporary_leftovers() == before, "the temporary GNUPGHOME must be deleted"


def gpg_source(private: bool = True) -> KeySource:
    if not private:
        return KeySource(source="gpg", file="../crypt-key.gpg")
    return KeySource(
        source="gpg",
        file="../crypt-key.gpg",
        private_key_env="DEPLOY_GPG_KEY",
        passphrase_env="DEPLOY_GPG_PASSPHRASE",
    )


def test_gpg_key_unlocks_from_the_operators_keyring(
    repo: SecretsRepo, gpg_keys: GpgKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    encrypted = repo.root.parent / "crypt-key.gpg"
    gpg_keys.encrypt(gpg_keys.keyring_home, gpg_keys.keyring_id, repo.default_key, encrypted)
    monkeypatch.setenv("GNUPGHOME", str(gpg_keys.keyring_home))

    unlock(repo, environment(key=gpg_source(private=False)))

    assert not repo.is_locked("secrets/config/common.yaml")


def test_git_crypt_gpg_mode_unlocks_with_the_keyring(
    repo: SecretsRepo, gpg_keys: GpgKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyring = {"GNUPGHOME": str(gpg_keys.keyring_home)}
    git(repo.root, "crypt", "unlock", repo.default_key)
    git(repo.root, "crypt", "add-gpg-user", "--trusted", gpg_keys.keyring_id, env=keyring)
    repo.lock()
    monkeypatch.setenv("GNUPGHOME", str(gpg_keys.keyring_home))

    unlock(repo, environment(key=KeySource(source="git-crypt-gpg")))

    assert repo.keys_installed() == ["default"]
    assert not repo.is_locked("secrets/kubeconfig.yaml")


def test_already_unlocked_is_skipped_after_checking_again(repo: SecretsRepo) -> None:
    unlock(repo)
    (repo.root / "secrets/kubeconfig.yaml").chmod(0o644)

    with pytest.raises(Skipped, match="already unlocked with the default git-crypt key") as skip:
        unlock(repo)

    assert "1 made private" in str(skip.value)


def test_decrypted_key_is_private_and_deleted_even_on_failure(
    repo: SecretsRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GIT_CRYPT_KEY", base64.b64encode(repo.default_key.read_bytes()).decode())
    env = environment(key=KeySource(source="base64-env", env="GIT_CRYPT_KEY"))
    ctx = step_context(repo, env)

    with pytest.raises(RuntimeError), secret_files.decrypted_key(ctx, env, repo.root) as key_file:
        assert key_file is not None
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
        raise RuntimeError("git-crypt died")

    assert not key_file.exists() and not key_file.parent.exists()


# Failures are explained, and leave nothing unlocked.


def test_wrong_openssl_key_names_the_variable_first(
    repo: SecretsRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    openssl_encrypt(repo, monkeypatch)
    monkeypatch.setenv("CRYPT_KEY", os.urandom(32).hex())

    with pytest.raises(StepFailure) as failed:
        unlock(repo, environment(key=OPENSSL))

    why = failed.value.why
    assert "The key in CRYPT_KEY and the IV in CRYPT_IV do not decrypt ../crypt-key.enc" in why
    assert "Most likely CRYPT_KEY is wrong" in why and "rotated" in why
    assert "Check CRYPT_KEY and CRYPT_IV" in failed.value.fix
    assert repo.keys_installed() == [] and repo.is_locked("secrets/config/common.yaml")


def test_wrong_openssl_iv_is_told_from_a_wrong_key(
    repo: SecretsRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    openssl_encrypt(repo, monkeypatch)
    monkeypatch.setenv("CRYPT_IV", os.urandom(16).hex())

    with pytest.raises(StepFailure) as failed:
        unlock(repo, environment(key=OPENSSL))

    assert failed.value.why.startswith("CRYPT_IV is wrong, and CRYPT_KEY is right")
    assert "Set CRYPT_IV" in failed.value.fix
    assert repo.keys_installed() == []


def test_encrypted_key_file_cut_short_is_called_damaged(
    repo: SecretsRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    openssl_encrypt(repo, monkeypatch)
    encrypted = repo.root.parent / "crypt-key.enc"
    encrypted.write_bytes(encrypted.read_bytes()[:100])

    with pytest.raises(StepFailure) as failed:
        unlock(repo, environment(key=OPENSSL))

    assert "100 bytes, not a whole number of 16-byte blocks" in failed.value.why
    assert "git checkout -- ../crypt-key.enc" in failed.value.fix


def test_key_file_encrypted_with_a_passphrase_is_named_so(
    repo: SecretsRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    openssl_encrypt(repo, monkeypatch)
    encrypted = repo.root.parent / "crypt-key.enc"
    run(
        "openssl",
        "aes-256-cbc",
        "-pbkdf2",
        "-pass",
        "pass:hunter2hunter2",
        "-in",
        repo.default_key,
        "-out",
        encrypted,
    )

    with pytest.raises(StepFailure) as failed:
        unlock(repo, environment(key=OPENSSL))

    assert "was encrypted with a passphrase" in failed.value.why


def test_key_file_overwritten_with_another_file_under_the_same_key_says_so(
    repo: SecretsRepo, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key, iv = openssl_encrypt(repo, monkeypatch)
    other = tmp_path / "id_rsa.txt"
    other.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot a git-crypt key at all\n" * 4)
    run(
        "openssl",
        "aes-256-cbc",
        "-K",
        key,
        "-iv",
        iv,
        "-in",
        other,
        "-out",
        repo.root.parent / "crypt-key.enc",
    )

    with pytest.raises(StepFailure) as failed:
        unlock(repo, environment(key=OPENSSL))

    assert "decrypts with the key in CRYPT_KEY and the IV in CRYPT_IV, but to another file" in (
        failed.value.why
    )
    assert "Revert the change" in failed.value.fix


def test_short_openssl_key_is_refused_before_openssl_pads_it(
    repo: SecretsRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    openssl_encrypt(repo, monkeypatch)
    monkeypatch.setenv("CRYPT_KEY", "abc123")

    with pytest.raises(StepFailure, match="CRYPT_KEY must hold 64 hexadecimal digits"):
        unlock(repo, environment(key=OPENSSL))


def test_missing_env_var_is_named_with_its_registry_entry(
    repo: SecretsRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    openssl_encrypt(repo, monkeypatch)
    monkeypatch.delenv("CRYPT_IV")

    with pytest.raises(StepFailure) as failed:
        unlock(repo, environment(key=OPENSSL))

    assert "CRYPT_IV is not set" in failed.value.why
    assert "config/environments.yaml, environment staging, secrets.key.iv_env" in failed.value.why
    assert "repository secrets" in failed.value.fix


def test_gpg_file_for_another_key_names_that_key_and_the_available_ones(
    repo: SecretsRepo, gpg_keys: GpgKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    encrypted = repo.root.parent / "crypt-key.gpg"
    gpg_keys.encrypt(gpg_keys.keyring_home, gpg_keys.keyring_id, repo.default_key, encrypted)
    monkeypatch.setenv("DEPLOY_GPG_KEY", gpg_keys.armored_private)
    monkeypatch.setenv("DEPLOY_GPG_PASSPHRASE", gpg_keys.passphrase)
    before = temporary_leftovers()

    with pytest.raises(StepFailure) as failed:
        unlock(repo, environment(key=gpg_source()))

    assert temporary_leftovers() == before, "the temporary GNUPGHOME must be deleted"
    assert f"encrypted for GPG key {gpg_keys.keyring_id}" in failed.value.why
    assert gpg_keys.protected_id in failed.value.why  # the subkey that is available
    assert "Deployer <deployer@example.org>" in failed.value.why
    assert repo.keys_installed() == []


def test_wrong_gpg_passphrase_is_named(
    repo: SecretsRepo,
    gpg_keys: GpgKeys,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    encrypted = repo.root.parent / "crypt-key.gpg"
    gpg_keys.encrypt(gpg_keys.protected_home, gpg_keys.protected_id, repo.default_key, encrypted)
    monkeypatch.setenv("DEPLOY_GPG_KEY", gpg_keys.armored_private)
    monkeypatch.setenv("DEPLOY_GPG_PASSPHRASE", "canary-wrong-passphrase-e81")

    with pytest.raises(StepFailure) as failed:
        unlock(repo, environment(key=gpg_source()))

    assert "the passphrase in DEPLOY_GPG_PASSPHRASE is wrong" in failed.value.why
    assert gpg_keys.protected_id in failed.value.why
    shown = failure_text(failed.value) + "".join(capfd.readouterr())
    assert "canary-wrong-passphrase-e81" not in shown and "PRIVATE KEY" not in shown


def test_file_encrypted_with_another_key_is_named_and_the_tree_locked_again(
    repo: SecretsRepo, tmp_path: Path, client_cert: tuple[str, str]
) -> None:
    other = make_repo(tmp_path / "other", {"secrets/config/extra.yaml": "x: canary-other-1\n"})
    encrypted_elsewhere = (other.root / "secrets/config/extra.yaml").read_bytes()
    repo.commit_raw("secrets/config/extra.yaml", encrypted_elsewhere)

    with pytest.raises(StepFailure) as failed:
        unlock(repo)

    assert "secrets/config/extra.yaml" in failed.value.why
    assert "common.yaml" not in failed.value.why
    assert "after the key changed" in failed.value.why and "fork" in failed.value.why
    assert repo.keys_installed() == []
    assert repo.is_locked("secrets/config/common.yaml")
    assert git(repo.root, "status", "--porcelain", "-uno") == ""


def test_key_that_opens_nothing_says_the_key_is_wrong(repo: SecretsRepo, tmp_path: Path) -> None:
    stranger = make_repo(tmp_path / "stranger", {"secrets/x": "x\n"})

    with pytest.raises(StepFailure) as failed:
        unlock(repo, environment(key=KeySource(source="file", path=str(stranger.default_key))))

    assert failed.value.why.startswith("None of the 4 secret files decrypt")
    assert "the key is wrong" in failed.value.why
    assert repo.keys_installed() == []


def test_key_of_another_name_is_refused(repo: SecretsRepo) -> None:
    with pytest.raises(StepFailure, match="holds the git-crypt key 'demo'"):
        unlock(repo, environment(key=KeySource(source="file", path="../demo.key")))


def test_uncommitted_changes_stop_the_unlock_by_name(repo: SecretsRepo) -> None:
    repo.write("config/common.yaml", "hub: {changed: true}\n")

    with pytest.raises(StepFailure, match=r"config/common\.yaml") as failed:
        unlock(repo)

    assert "git stash" in failed.value.fix
    assert repo.keys_installed() == []


# The checks after unlocking.


def test_missing_secret_file_is_named_with_the_registry_entry_that_wants_it(
    repo: SecretsRepo,
) -> None:
    env = environment(kubeconfig="kubeconfig-prod.yaml")

    with pytest.raises(StepFailure) as failed:
        unlock(repo, env)

    assert "secrets/kubeconfig-prod.yaml (environment staging, cluster.kubeconfig)" in (
        failed.value.why
    )


def test_readable_kubeconfig_is_made_private(repo: SecretsRepo) -> None:
    umask = os.umask(0o022)  # what most machines use: git-crypt writes 0644 files
    try:
        note = unlock(repo)
    finally:
        os.umask(umask)

    kubeconfig_mode = stat.S_IMODE((repo.root / "secrets/kubeconfig.yaml").stat().st_mode)
    assert kubeconfig_mode == 0o600
    assert note and "1 made private (0600)" in note


def test_credential_that_is_a_symlink_fails(repo: SecretsRepo, tmp_path: Path) -> None:
    outside = tmp_path / "operator-kubeconfig"
    outside.write_text("kind: Config\n")
    git(repo.root, "crypt", "unlock", repo.default_key)
    link = repo.root / "secrets/kubeconfig.yaml"
    link.unlink()
    link.symlink_to(outside)
    git(repo.root, "add", "-A")
    git(repo.root, "commit", "-q", "-m", "link")
    repo.lock()

    with pytest.raises(StepFailure, match="is a symbolic link"):
        unlock(repo)

    assert stat.S_IMODE(outside.stat().st_mode) == 0o644


def test_expired_client_certificate_fails_and_mentions_k3s(
    tmp_path: Path, client_cert: tuple[str, str]
) -> None:
    files = site_files(client_cert)
    files["secrets/kubeconfig.yaml"] = kubeconfig(*certificate(tmp_path / "old", expired=True))
    repo = make_repo(tmp_path, files)

    with pytest.raises(StepFailure) as failed:
        unlock(repo)

    assert "expired on 2025-01-01" in failed.value.why
    assert "k3s client certificates expire after a year" in failed.value.fix


def test_client_certificate_expiring_within_30_days_warns(
    tmp_path: Path, client_cert: tuple[str, str], capfd: pytest.CaptureFixture[str]
) -> None:
    files = site_files(client_cert)
    files["secrets/kubeconfig.yaml"] = kubeconfig(*certificate(tmp_path / "soon", days=10))
    repo = make_repo(tmp_path, files)

    note = unlock(repo)

    assert note and "1 client certificate(s) expiring soon" in note
    assert "in 10 days" in capfd.readouterr().err
    warnings = current().summary.warnings
    assert any("k3s client certificates expire after a year" in w for w in warnings)


def test_require_unlocked_sends_later_steps_to_decrypt_secrets(repo: SecretsRepo) -> None:
    with pytest.raises(StepFailure, match="still encrypted") as failed:
        secret_files.require_unlocked(environment(), repo.root)
    assert failed.value.fix == "Unlock them first: invoke decrypt-secrets --env=staging"

    git(repo.root, "crypt", "unlock", repo.default_key)
    secret_files.require_unlocked(environment(), repo.root)


# check-secrets: nothing committed in plaintext.


def check(repo: SecretsRepo) -> str | None:
    return secret_files.check_committed(step_context(repo, environment()))


def test_encrypted_repository_passes_check_secrets(repo: SecretsRepo) -> None:
    assert check(repo) == "6 secret files checked, all encrypted in git"


def test_plaintext_file_committed_under_secrets_is_named(repo: SecretsRepo) -> None:
    repo.commit_raw("secrets/leaked.yaml", b"password: canary-leaked-4e2\n")

    with pytest.raises(StepFailure) as failed:
        check(repo)

    assert "secrets/leaked.yaml (staged), secrets/leaked.yaml (in HEAD)" in failed.value.why
    assert "git-crypt status -f" in failed.value.fix and "rotate" in failed.value.fix


def test_gitattributes_that_misses_secrets_fails_check_secrets(repo: SecretsRepo) -> None:
    repo.write(".gitattributes", "secrets/demo/** filter=git-crypt-demo diff=git-crypt-demo\n")

    with pytest.raises(StepFailure) as failed:
        check(repo)

    assert "does not have git-crypt encrypt new files under secrets/" in failed.value.why
    assert "`secrets/** filter=git-crypt diff=git-crypt`" in failed.value.fix


def test_this_repository_passes_check_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    operate.check_secrets(Context())

    assert "check-secrets: ok" in capsys.readouterr().out


# lock-secrets.


def lock(repo: SecretsRepo, env: Environment | None = None) -> str | None:
    ctx = step_context(repo, env)
    return secret_files.lock(ctx)


def test_lock_refuses_to_lose_uncommitted_secret_changes(repo: SecretsRepo) -> None:
    unlock(repo)
    repo.write("secrets/config/staging.yaml", "hub:\n  cookieSecret: rotated-but-uncommitted\n")

    with pytest.raises(StepFailure, match=r"secrets/config/staging\.yaml") as failed:
        lock(repo)

    assert "git stash" in failed.value.fix
    assert repo.keys_installed() == ["default"]


def test_lock_keeps_unrelated_changes_that_git_crypt_alone_would_refuse(repo: SecretsRepo) -> None:
    unlock(repo)
    repo.write("config/common.yaml", "hub: {work: in-progress}\n")

    assert lock(repo) == "locked the default git-crypt key"

    assert repo.is_locked("secrets/config/common.yaml")
    assert (repo.root / "config/common.yaml").read_text() == "hub: {work: in-progress}\n"


def test_lock_of_one_environment_leaves_other_keys_unlocked(repo: SecretsRepo) -> None:
    git(repo.root, "crypt", "unlock", repo.default_key)
    git(repo.root, "crypt", "unlock", repo.demo_key)
    demo = environment("demo", KeySource(source="file", key_name="demo", path="../demo.key"))

    assert lock(repo, demo) == "locked the git-crypt key 'demo'"

    assert repo.keys_installed() == ["default"]
    assert repo.is_locked("secrets/demo/config/common.yaml")
    assert not repo.is_locked("secrets/config/common.yaml")


def test_lock_of_a_locked_tree_is_skipped(repo: SecretsRepo) -> None:
    with pytest.raises(Skipped, match="already locked"):
        lock(repo)


# Dry run and secrecy.


def test_dry_run_prints_masked_commands_and_touches_nothing(
    repo: SecretsRepo, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    key, iv = openssl_encrypt(repo, monkeypatch)
    before = temporary_leftovers()

    note = unlock(repo, environment(key=OPENSSL), dry_run=True)

    out = capfd.readouterr().out
    assert "[dry-run] openssl aes-256-cbc -d -K ******** -iv ********" in out
    assert "crypt unlock" in out
    assert key not in out and iv not in out
    assert note and note.startswith("would unlock")
    assert repo.keys_installed() == [] and repo.is_locked("secrets/config/common.yaml")
    assert temporary_leftovers() == before


def test_decrypt_secrets_task_dry_run_on_this_repository(
    capsys: pytest.CaptureFixture[str],
) -> None:
    refused = ""
    try:
        steps.decrypt_secrets(Context(), env="local-staging", dry_run=True)
    except Exit as stopped:
        # Only a locked checkout with work in progress stops here: git-crypt would refuse.
        refused = str(stopped.message)
    out = capsys.readouterr().out

    assert "decrypt-secrets [local-staging] (dry run)" in out
    assert "already unlocked" in out or "[dry-run] git -C" in out or "uncommitted" in refused


def test_fresh_clone_of_this_repository_unlocks_the_demo_with_its_public_key(
    tmp_path: Path,
) -> None:
    clone = tmp_path / "clone"
    run("git", "clone", "-q", PROJECT_ROOT, clone)
    demo = registry.load(clone).get("local-staging")
    assert SecretsRepo(clone, Path(), Path()).is_locked("secrets/demo/config/common.yaml")
    ctx = StepContext(
        Context(), registry.load(clone), demo, Runner(Context(), cwd=clone), False, ""
    )

    note = secret_files.unlock(ctx)

    assert note and note.startswith("unlocked with the git-crypt key 'demo'")
    assert not SecretsRepo(clone, Path(), Path()).is_locked("secrets/demo/config/common.yaml")


CANARIES = (CANARY_VALUE, CANARY_COOKIE, CANARY_TOKEN)


@pytest.mark.parametrize("dry_run", [False, True])
@pytest.mark.parametrize("outcome", ["success", "bad key"])
def test_no_secret_reaches_the_output(
    repo: SecretsRepo,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    outcome: str,
    dry_run: bool,
) -> None:
    key, iv = openssl_encrypt(repo, monkeypatch)
    if outcome == "bad key":
        key = os.urandom(32).hex()
        monkeypatch.setenv("CRYPT_KEY", key)
    shown = ""
    try:
        unlock(repo, environment(key=OPENSSL), dry_run=dry_run)
    except StepFailure as failure:
        shown = failure_text(failure)
    if outcome == "success" and not dry_run:
        # Whatever a later step prints about these values is masked too.
        say(f"values: {' '.join(CANARIES)}")
    say(f"key: {key} iv: {iv}")
    out, err = capfd.readouterr()

    everything = shown + out + err
    for canary in (*CANARIES, key, iv):
        assert canary not in everything
    assert "********" in everything


def test_register_secret_values_masks_an_already_unlocked_tree(repo: SecretsRepo) -> None:
    git(repo.root, "crypt", "unlock", repo.default_key)

    secret_files.register_secret_values(environment(), repo.root)

    for canary in CANARIES:
        assert current().masker.mask(f"x {canary} y") == "x ******** y"
    client_key = kubeconfig_client_key(repo)
    assert client_key not in current().masker.mask(client_key)


def kubeconfig_client_key(repo: SecretsRepo) -> str:
    text = (repo.root / "secrets/kubeconfig.yaml").read_text()
    return text.split("client-key-data: ")[1].strip()
