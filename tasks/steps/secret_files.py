"""decrypt-secrets: decrypt the secrets, and check them before any later step uses them.

`decrypt-secrets` gets the environment's git-crypt key from its key source
(tasks/adapters/secrets_keys.py), runs `git-crypt unlock` and checks the result: nothing
still encrypted, every file the environment needs present, keys and
kubeconfigs private, client certificates not expired. An unlock that fails
midway is locked again, so the tree is never left half unlocked.
`check-secrets` guards the other direction: nothing under secrets/ committed
in plaintext. `lock-secrets` locks the working tree again without losing work.

Other steps call `register_secret_values(env)` so whatever they print is
masked, and `require_unlocked(env)` to stop early with the right advice.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import yaml

from tasks.adapters.secrets_keys import (
    Repository,
    check_certificates,
    decrypted_key,
    filter_name,
    is_git_crypt_filter,
    key_label,
    make_private,
    plaintext,
    private_files,
    secret_env_names,
)
from tasks.config.context import StepContext
from tasks.config.registry import REGISTRY_FILE, Environment
from tasks.config.values import is_locked
from tasks.core.errors import CommandFailed, Diagnosis, Skipped, StepFailure, explain
from tasks.core.output import say, warn
from tasks.core.run import current
from tasks.core.runner import PROJECT_ROOT
from tasks.core.step import Changes, Step


def required_files(env: Environment) -> list[tuple[Path, str]]:
    """Each secret file the environment needs, with the registry entry that wants it."""
    where = f"environment {env.name}"
    config = env.secrets_dir / "config"
    needed = [
        (config / "common.yaml", f"{where}, secrets.dir: the common secret values"),
        (config / f"{env.name}.yaml", f"{where}, secrets.dir: its secret values"),
    ]
    needed += [
        (env.secrets_dir / file, f"{where}, {field}") for file, field in env.cluster.secret_files()
    ]
    if env.grafana and env.grafana.token_file:
        needed.append((env.secrets_dir / env.grafana.token_file, f"{where}, grafana.token_file"))
    return needed


def still_encrypted(root: Path, paths: list[Path]) -> list[Path]:
    return [path for path in paths if is_locked(root / path)]


def require_unlocked(env: Environment, root: Path = PROJECT_ROOT) -> None:
    """Stop, with the command that fixes it, unless the environment's secrets are usable."""
    needed = required_files(env)
    encrypted = still_encrypted(root, [path for path, _ in needed])
    if encrypted:
        raise StepFailure(
            f"The secrets of environment {env.name} are still encrypted: "
            f"{', '.join(map(str, encrypted))}.",
            f"Unlock them first: invoke decrypt-secrets --env={env.name}",
        )
    missing = [(path, entry) for path, entry in needed if not (root / path).exists()]
    if missing:
        raise _missing_failure(missing)


def register_secret_values(env: Environment, root: Path = PROJECT_ROOT) -> None:
    """Mask every secret value the environment has in plaintext, in all printed from now on."""
    masker = current().masker
    for name in secret_env_names(env):
        masker.register(os.environ.get(name, ""))
    for values in (f"{env.name}.yaml", "common.yaml"):
        text = plaintext(env.secret_path(f"config/{values}", root))
        if text is not None:
            _register_values(text)
    if env.grafana and env.grafana.token_file:
        masker.register(plaintext(env.secret_path(env.grafana.token_file, root)))
    base = root / env.secrets_dir
    for path in sorted(base.rglob("*")) if base.is_dir() else []:
        text = plaintext(path) if path.is_file() else None
        if text is not None:
            _register_credentials(text)


def _register_values(text: str) -> None:
    masker = current().masker
    try:
        masker.register_tree(yaml.safe_load(text))
    except yaml.YAMLError:
        # A values file helm cannot read is still full of secrets. The mistake is often
        # on the secret's own line (`token: "abc…": x`): its pieces are secrets too.
        for found in re.finditer(r"^[^:#\n]*:[ \t]*(\S.*)$", text, re.MULTILINE):
            value = found.group(1)
            masker.register(value.strip("'\" "))
            for piece in re.split(r"['\"]|:\s|\s#", value):
                masker.register(piece.strip())


def _register_credentials(text: str) -> None:
    # A key file is secret through and through; a JSON key's other fields (its
    # token URL, its account's address) are public, and masking their fragments
    # would blank out what error messages need to say.
    masker = current().masker
    if "PRIVATE KEY-----" in text and text.lstrip().startswith("-----BEGIN"):
        masker.register(text)
    if '"private_key"' in text:
        try:
            document = json.loads(text)
        except ValueError:
            document = {}
        if isinstance(document, dict):
            masker.register(document.get("private_key"))
            masker.register(document.get("private_key_id"))
    if "users:" in text:
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError:
            document = {}
        users = document.get("users") if isinstance(document, dict) else None
        for user in users if isinstance(users, list) else []:
            credentials = user.get("user") if isinstance(user, dict) else None
            for field in ("client-key-data", "token", "password"):
                if isinstance(credentials, dict):
                    masker.register(credentials.get(field))


UNLOCK_FAILURES = (
    Diagnosis(
        r"no GPG secret key available",
        "None of the secret keys in your GPG keyring can open the git-crypt key.",
        "Ask someone who can unlock to add your key (git-crypt add-gpg-user [-k NAME] KEYID) "
        "and pull, or use another key source in config/environments.yaml.",
    ),
    Diagnosis(
        r"('crypt' is not a git command|git-crypt: (command )?not found)",
        "git-crypt is not installed.",
        "Install it (apt-get install git-crypt).",
    ),
    Diagnosis(
        r"GPG error",
        "git-crypt could not run GnuPG to find a key in your keyring (GNUPGHOME, ~/.gnupg).",
        "Check that gpg works and lists your secret key: gpg --list-secret-keys",
    ),
    Diagnosis(
        r"(malformed|incompatible|invalid key|Unable to open key file)",
        "git-crypt could not read the key file.",
        "Export the key again with `git-crypt export-key FILE` in an unlocked clone.",
    ),
)


def unlock(ctx: StepContext) -> str | None:
    """Unlock the environment's secrets and check them; lock them again if that fails."""
    env = ctx.environment
    repo = Repository(ctx.runner)
    label = key_label(env.key.key_name)
    before = repo.unlocked_keys()
    if env.key.key_name in before:
        # Someone else's unlock: report what is wrong with it, but leave it as it is.
        raise Skipped(f"already unlocked with {label}; {check_unlocked(ctx, env, repo)}")
    dirty = [path for _, path in repo.changes(untracked=False)]
    if dirty:
        raise StepFailure(
            f"git-crypt refuses to unlock while tracked files have uncommitted changes (it "
            f"checks every encrypted file out again): {', '.join(dirty)}.",
            "Commit them or put them aside (git stash), unlock, then bring them back "
            "(git stash pop).",
        )
    with decrypted_key(ctx, env, repo.root) as key_file:
        if not ctx.dry_run:
            say(f"unlocking {env.secrets_dir}/ with {label} (key source: {env.key.source})")
        try:
            repo.crypt("unlock", *([key_file] if key_file else []))
        except CommandFailed as failed:
            undecryptable: tuple[list[str], int] = ([], 0)
            if re.search(r"tampered|smudge filter", failed.output):
                undecryptable = repo.undecryptable(env.key.key_name)
            repo.lock_again(repo.unlocked_keys() - before)
            if undecryptable[0]:
                raise StillEncrypted(env, *undecryptable, locked_again=True) from None
            failure = explain(failed, UNLOCK_FAILURES, f"git-crypt could not unlock {label}")
            raise failure from None
        except KeyboardInterrupt:
            repo.lock_again(repo.unlocked_keys() - before)
            raise
    if ctx.dry_run:
        return f"would unlock with {label}, then check the result"
    if env.key.key_name not in repo.unlocked_keys():
        repo.lock_again(repo.unlocked_keys() - before)
        raise StepFailure(
            f"git-crypt unlocked, but not {label}: none of your GPG secret keys can open it.",
            f"Ask someone who can unlock to add your key (git-crypt add-gpg-user "
            f"{'-k ' + env.key.key_name + ' ' if env.key.key_name else ''}KEYID) and pull.",
        )
    try:
        note = check_unlocked(ctx, env, repo)
    except StillEncrypted as leftover:
        repo.lock_again(repo.unlocked_keys() - before)
        raise StillEncrypted(env, leftover.paths, leftover.total, locked_again=True) from None
    return f"unlocked with {label}; {note}"


class StillEncrypted(StepFailure):
    """Files that still carry git-crypt's header after an unlock, and their likely causes."""

    def __init__(self, env: Environment, paths: list[str], total: int, locked_again: bool) -> None:
        self.paths = paths
        self.total = total
        label = key_label(env.key.key_name)
        listed = ", ".join(paths)
        if len(paths) == total > 1:
            why = (
                f"None of the {total} secret files decrypt with {label} ({listed}): the key "
                "is wrong, or this is a pull request from a fork, which gets no secrets."
            )
        else:
            count = "1 file is" if len(paths) == 1 else f"{len(paths)} files are"
            why = (
                f"{count} still encrypted after unlocking with {label}: {listed}. Likely "
                "causes: the key is wrong; the file was added or re-encrypted after the key "
                "changed, so another key encrypted it; or this is a pull request from a fork, "
                "which gets no secrets."
            )
        fix = (
            "Check the key source in config/environments.yaml. To re-encrypt a file with the "
            "current key, put its plaintext back in a clone unlocked with that key and commit it."
        )
        if locked_again:
            fix += " The working tree has been locked again."
        super().__init__(why, fix)


def check_unlocked(ctx: StepContext, env: Environment, repo: Repository) -> str:
    """Check what an unlock produced; the note says what was checked and fixed."""
    root = repo.root
    register_secret_values(env, root)
    on_disk = _secret_files(repo, env)
    needed = required_files(env)
    encrypted = still_encrypted(root, sorted({*on_disk, *(path for path, _ in needed)}))
    if encrypted:
        raise StillEncrypted(env, [str(p) for p in encrypted], len(on_disk), locked_again=False)
    missing = [(path, entry) for path, entry in needed if not (root / path).exists()]
    if missing:
        raise _missing_failure(missing)
    private = private_files(env, root, on_disk)
    tightened = make_private(ctx, root, private)
    expiring = check_certificates(ctx, root, private)
    note = f"{len(on_disk)} secret files checked"
    if tightened:
        note += f", {tightened} made private (0600)"
    if expiring:
        note += f", {expiring} client certificate(s) expiring soon"
    return note


def _secret_files(repo: Repository, env: Environment) -> list[Path]:
    """Files under the secrets folder, except those of other git-crypt keys, which may stay
    encrypted (secrets/ holds the demo's secrets/demo/ too, under a key of its own)."""
    base = repo.root / env.secrets_dir
    found = [
        p.relative_to(repo.root) if p.is_relative_to(repo.root) else p
        for p in base.rglob("*")
        if p.is_file() or p.is_symlink()
    ]
    # A secrets folder outside the repository (a test's) has no git attributes.
    filters = repo.filters([str(p) for p in found if not p.is_absolute()])
    own = filter_name(env.key.key_name)
    return sorted(
        p
        for p in found
        if not is_git_crypt_filter(filters.get(str(p))) or filters.get(str(p)) == own
    )


def _missing_failure(missing: list[tuple[Path, str]]) -> StepFailure:
    listed = "; ".join(f"{path} ({entry})" for path, entry in missing)
    return StepFailure(
        f"Secret files the registry names do not exist: {listed}.",
        f"Add them under git-crypt (git add encrypts them), or fix the entry in {REGISTRY_FILE}.",
    )


def check_committed(ctx: StepContext) -> str | None:
    """Check that git holds everything under secrets/ encrypted, staged and committed."""
    repo = Repository(ctx.runner)
    folders = _secret_folders(ctx)
    probes = {f"{folder}/a-new-secret": folder for folder in folders}
    probes |= {f"{folder}/config/a-new-secret.yaml": folder for folder in folders}
    probed = repo.filters(sorted(probes))
    uncovered = sorted(
        {folder for probe, folder in probes.items() if not is_git_crypt_filter(probed.get(probe))}
    )
    staged, committed = repo.blobs(""), repo.blobs("HEAD")
    filters = repo.filters(sorted({*staged, *committed}))
    encrypted: dict[str, bool] = {}
    plaintext = []
    checked = 0
    for path in sorted({*staged, *committed}):
        if not (is_git_crypt_filter(filters.get(path)) or _under(path, folders)):
            continue
        checked += 1
        for where, blobs in (("staged", staged), ("in HEAD", committed)):
            blob = blobs.get(path)
            if blob is None:
                continue
            if blob not in encrypted:
                encrypted[blob] = repo.blob_is_encrypted(blob)
            if not encrypted[blob]:
                plaintext.append(f"{path} ({where})")
    whys, fixes = [], []
    if uncovered:
        whys.append(
            ".gitattributes does not have git-crypt encrypt new files under "
            f"{', '.join(f + '/' for f in uncovered)}."
        )
        fixes.append(
            "Add a line per folder to .gitattributes: "
            + "; ".join(f"`{f}/** filter=git-crypt diff=git-crypt`" for f in uncovered)
            + "."
        )
    if plaintext:
        whys.append(
            f"Committed in plaintext although git-crypt should encrypt them: "
            f"{', '.join(plaintext)}."
        )
        fixes.append(
            "Encrypt them: `git-crypt status -f` stages them encrypted; then commit. Anything "
            "already pushed in plaintext is public: rotate those secrets."
        )
    if whys:
        raise StepFailure(" ".join(whys), " ".join(fixes))
    return f"{checked} secret files checked, all encrypted in git"


def _secret_folders(ctx: StepContext) -> list[str]:
    """Every environment's secrets folder, and secrets/ itself."""
    return sorted({str(e.secrets_dir) for e in ctx.registry.environments.values()} | {"secrets"})


def _under(path: str, folders: list[str]) -> bool:
    return any(path.startswith(folder + "/") for folder in folders)


def lock(ctx: StepContext) -> str | None:
    """Lock the working tree again (one environment's key, or all of them)."""
    repo = Repository(ctx.runner)
    env = ctx.env
    unlocked = repo.unlocked_keys()
    keys = ({env.key.key_name} & unlocked) if env else unlocked
    if not keys:
        raise Skipped("already locked")
    folders = _secret_folders(ctx)
    changes = repo.changes()
    filters = repo.filters([path for _, path in changes])

    def secret(path: str) -> bool:
        return is_git_crypt_filter(filters.get(path)) or _under(path, folders)

    at_risk = [path for state, path in changes if state != "??" and secret(path)]
    if at_risk:
        raise StepFailure(
            f"Locking would throw away uncommitted changes to: {', '.join(at_risk)}.",
            "git-crypt checks every encrypted file out again when it locks. Commit them "
            "(git add encrypts them) or put them aside (git stash), then lock again.",
        )
    elsewhere = [path for state, path in changes if state != "??"]
    untracked = [path for state, path in changes if state == "??" and secret(path)]
    if env is None:
        args = ["lock", "-a"]
    else:
        args = ["lock", *(["-k", env.key.key_name] if env.key.key_name else [])]
    if elsewhere:
        # git-crypt refuses to lock while any tracked file is modified, even far
        # from secrets/, yet it only checks out again the files it encrypts,
        # which were just shown to be unchanged: forcing loses nothing.
        args.append("--force")
    repo.crypt(*args)
    if untracked:
        warn(
            "Untracked files under the secrets folders stay in plaintext (git-crypt encrypts "
            f"only what git tracks): {', '.join(untracked)}."
        )
    locked = ", ".join(key_label(k) for k in sorted(keys))
    return f"would lock {locked}" if ctx.dry_run else f"locked {locked}"


DECRYPT_SECRETS = Step("decrypt-secrets", unlock, Changes.CHECKOUT)
CHECK_SECRETS = Step("check-secrets", check_committed, needs_env=False)
LOCK_SECRETS = Step("lock-secrets", lock, Changes.CHECKOUT, needs_env=False)
