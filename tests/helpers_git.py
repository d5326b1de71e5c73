"""Throwaway git repositories with real git-crypt, openssl and GnuPG, for the secrets tests."""

from __future__ import annotations

import base64
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from invoke import Context

from tasks.config.context import StepContext
from tasks.config.registry import (
    ClusterAccess,
    Environment,
    Grafana,
    KeySource,
    Registry,
    Release,
)
from tasks.core.runner import Runner

GITATTRIBUTES = (
    "secrets/** filter=git-crypt diff=git-crypt\n"
    "secrets/demo/** filter=git-crypt-demo diff=git-crypt-demo\n"
    ".gitattributes !filter !diff\n"
)


def run(*command: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"{command} failed: {done.stderr}{done.stdout}")
    return done.stdout


def git(root: Path, *args: str | Path, env: dict[str, str] | None = None) -> str:
    return run("git", "-C", root, *args, env=env)


@dataclass
class SecretsRepo:
    """A checkout with secrets under the default key and secrets/demo/ under the key "demo"."""

    root: Path
    default_key: Path
    demo_key: Path

    def write(self, relative: str, content: str | bytes, mode: int = 0o644) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode()
        path.write_bytes(content)
        path.chmod(mode)
        return path

    def commit(self, message: str = "change") -> None:
        git(self.root, "add", "-A")
        git(self.root, "commit", "-q", "-m", message)

    def commit_raw(self, relative: str, blob: bytes) -> None:
        """Commit `blob` as is, past the git-crypt filter, as a clone without git-crypt does."""
        raw = self.root.parent / f"raw-{relative.replace('/', '_')}"
        raw.write_bytes(blob)
        sha = git(self.root, "hash-object", "-w", "--no-filters", raw).strip()
        git(self.root, "update-index", "--add", "--cacheinfo", f"100644,{sha},{relative}")
        git(self.root, "commit", "-q", "-m", f"add {relative}")
        git(self.root, "checkout", "--", relative)

    def lock(self) -> None:
        git(self.root, "crypt", "lock", "-a")

    def is_locked(self, relative: str) -> bool:
        return (self.root / relative).read_bytes().startswith(b"\x00GITCRYPT")

    def keys_installed(self) -> list[str]:
        keys = self.root / ".git" / "git-crypt" / "keys"
        return sorted(p.name for p in keys.iterdir()) if keys.is_dir() else []


def make_repo(base: Path, files: dict[str, str | bytes]) -> SecretsRepo:
    """A committed repository whose `files` are encrypted, exported keys beside it, locked."""
    root = base / "repo"
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "deployer@example.org")
    git(root, "config", "user.name", "Deployer")
    git(root, "crypt", "init")
    git(root, "crypt", "init", "-k", "demo")
    repo = SecretsRepo(root, base / "default.key", base / "demo.key")
    repo.write(".gitattributes", GITATTRIBUTES)
    repo.write("config/common.yaml", "hub: {}\n")
    for relative, content in files.items():
        repo.write(relative, content)
    repo.commit("initial")
    git(root, "crypt", "export-key", repo.default_key)
    git(root, "crypt", "export-key", "-k", "demo", repo.demo_key)
    repo.lock()
    return repo


def environment(
    name: str = "staging",
    key: KeySource | None = None,
    secrets_dir: str = "secrets",
    kubeconfig: str = "kubeconfig.yaml",
    grafana_token: str = "grafana-token",
) -> Environment:
    return Environment(
        name=name,
        description="",
        cluster=ClusterAccess("kubeconfig", {"kubeconfig": kubeconfig})
        if kubeconfig
        else ClusterAccess("local", {"name": name}),
        releases=(Release(name, name, "mybinder"),),
        secrets_dir=Path(secrets_dir),
        key=key or KeySource(source="file", path="../default.key"),
        grafana=Grafana(url="https://grafana.example.org", token_file=grafana_token)
        if grafana_token
        else None,
    )


def step_context(repo: SecretsRepo, env: Environment | None, dry_run: bool = False) -> StepContext:
    envs = {env.name: env} if env else {}
    return StepContext(
        c=Context(),
        registry=Registry(envs, Path("mybinder")),
        env=env,
        runner=Runner(Context(), dry_run=dry_run, cwd=repo.root),
        dry_run=dry_run,
        step="decrypt-secrets",
    )


def certificate(base: Path, days: int | None = None, expired: bool = False) -> tuple[str, str]:
    """A self-signed client certificate and its key, both base64 as a kubeconfig holds them.

    `days` from now, or (with `expired`) one that ended in 2025: openssl 3.0's
    `-days` takes no negative number, `openssl ca -enddate` can backdate.
    """
    base.mkdir(parents=True, exist_ok=True)
    key, cert = base / "client.key", base / "client.crt"
    subject = "/O=system:masters/CN=admin"
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    if not expired:
        run(
            "openssl",
            "req",
            "-x509",
            *curve,
            "-keyout",
            key,
            "-out",
            cert,
            "-days",
            str(days),
            "-subj",
            subject,
        )
    else:
        (base / "index.txt").write_text("")
        (base / "ca.cnf").write_text(
            "[ca]\ndefault_ca = throwaway\n[throwaway]\ndatabase = index.txt\n"
            "new_certs_dir = .\nserial = serial\ndefault_md = sha256\npolicy = any\n"
            "rand_serial = yes\n[any]\ncommonName = supplied\n"
        )
        run(
            "openssl",
            "req",
            "-new",
            *curve,
            "-keyout",
            key,
            "-out",
            base / "client.csr",
            "-subj",
            subject,
            cwd=base,
        )
        run(
            "openssl",
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-selfsign",
            "-keyfile",
            key,
            "-in",
            "client.csr",
            "-out",
            cert,
            "-startdate",
            "20240101000000Z",
            "-enddate",
            "20250101000000Z",
            cwd=base,
        )
    return _base64(cert), _base64(key)


def _base64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def kubeconfig(cert_data: str, key_data: str) -> str:
    return (
        "apiVersion: v1\nkind: Config\n"
        "clusters:\n- name: k3s\n  cluster:\n    server: https://127.0.0.1:6443\n"
        "contexts:\n- name: k3s\n  context:\n    cluster: k3s\n    user: admin\n"
        "current-context: k3s\n"
        f"users:\n- name: admin\n  user:\n    client-certificate-data: {cert_data}\n"
        f"    client-key-data: {key_data}\n"
    )


@dataclass
class GpgKeys:
    """A passphrase-protected key (exported armored) and an unprotected one in a keyring."""

    protected_home: Path
    protected_id: str
    passphrase: str
    armored_private: str
    keyring_home: Path
    keyring_id: str

    def encrypt(self, home: Path, recipient: str, source: Path, target: Path) -> None:
        run(
            "gpg",
            "--homedir",
            home,
            "--batch",
            "--yes",
            "--trust-model",
            "always",
            "-r",
            recipient,
            "-o",
            target,
            "--encrypt",
            source,
        )


def make_gpg_keys(base: Path) -> GpgKeys:
    protected, keyring = base / "protected", base / "keyring"
    passphrase = "canary-passphrase-5c1e"
    for home, uid, secret in (
        (protected, "Deployer <deployer@example.org>", passphrase),
        (keyring, "Operator <operator@example.org>", ""),
    ):
        home.mkdir(mode=0o700, parents=True)
        run(
            "gpg",
            "--homedir",
            home,
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            secret,
            "--quick-gen-key",
            uid,
            "future-default",
            "default",
            "never",
        )
    armored = run(
        "gpg",
        "--homedir",
        protected,
        "--batch",
        "--pinentry-mode",
        "loopback",
        "--passphrase",
        passphrase,
        "--armor",
        "--export-secret-keys",
    )
    return GpgKeys(
        protected,
        _encryption_key_id(protected),
        passphrase,
        armored,
        keyring,
        _encryption_key_id(keyring),
    )


def _encryption_key_id(home: Path) -> str:
    listing = run("gpg", "--homedir", home, "--batch", "--with-colons", "--list-keys")
    return next(line.split(":")[4] for line in listing.splitlines() if line.startswith("sub:"))


def stop_gpg_agent(home: Path) -> None:
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)
