"""Keys: the git-crypt key that unlocks the secrets, and the keys the secrets hold.

Every key source of the registry (`secrets.key.source`) ends the same way: the
raw git-crypt key in a private temporary file that lives only while
`git-crypt unlock` reads it. Every secret a source reads is registered with the
masker before anything could print it. `Repository` is git-crypt's view of the
checkout; the last part checks the private keys and client certificates an
unlock produced.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

import gnupg
import yaml

from tasks.config.context import StepContext
from tasks.config.registry import REGISTRY_FILE, Environment
from tasks.config.values import GIT_CRYPT_HEADER
from tasks.core.errors import CommandFailed, Diagnosis, StepFailure, explain
from tasks.core.output import say, warn
from tasks.core.run import current
from tasks.core.runner import Runner

# The first bytes of an exported key: magic, then a 32-bit format version.
_KEY_MAGIC = b"\x00GITCRYPTKEY"
_KEY_FIELD_END = 0
_KEY_FIELD_NAME = 1

# python-gnupg logs gpg's status lines as warnings; the failures they describe
# are explained here instead, in one message.
logging.getLogger("gnupg").addHandler(logging.NullHandler())
logging.getLogger("gnupg").propagate = False

_BLOCK = 16
# The header of every exported key (magic, then format version 2): exactly the
# first AES block, the only one a wrong IV garbles in CBC mode.
_KEY_HEADER = _KEY_MAGIC + (2).to_bytes(4, "big")

OPENSSL_FAILURES = (
    Diagnosis(
        r"(No such file|Can't open)",
        "openssl could not read {file}.",
        "Restore it from git, or fix secrets.key.file in config/environments.yaml.",
    ),
    Diagnosis(
        r"openssl: (command )?not found",
        "openssl is not installed.",
        "Install it (apt-get install openssl).",
    ),
)


def key_label(key_name: str) -> str:
    return f"the git-crypt key {key_name!r}" if key_name else "the default git-crypt key"


def key_name_in(data: bytes) -> str | None:
    """The key name an exported git-crypt key carries ("" for the default key).

    None when `data` is not an exported git-crypt key at all.
    """
    if not data.startswith(_KEY_MAGIC):
        return None
    position = len(_KEY_MAGIC) + 4
    while position + 8 <= len(data):
        field = int.from_bytes(data[position : position + 4], "big")
        if field == _KEY_FIELD_END:
            return ""
        length = int.from_bytes(data[position + 4 : position + 8], "big")
        position += 8
        if field == _KEY_FIELD_NAME:
            return data[position : position + length].decode(errors="replace")
        position += length
    return None


def secret_env_names(env: Environment) -> list[str]:
    """The environment variables holding this environment's secrets."""
    key = env.key
    names = [key.key_env, key.iv_env, key.env, key.passphrase_env, key.private_key_env]
    if env.grafana:
        names.append(env.grafana.token_env)
    if env.notify:
        names.append(env.notify.url_env)
    return [name for name in names if name]


def read_secret_env(ctx: StepContext, env: Environment, field: str) -> str:
    """The value of the variable named by `secrets.key.<field>`, masked from now on.

    In a dry run a missing variable reads as `$NAME`, so the commands can still
    be shown.
    """
    name = getattr(env.key, field)
    value = os.environ.get(name, "")
    if value:
        current().masker.register(value)
        return value
    if ctx.dry_run:
        return f"${name}"
    raise StepFailure(
        f"The environment variable {name} is not set. Environment {env.name} reads its "
        f"git-crypt key with it ({REGISTRY_FILE}, environment {env.name}, "
        f"secrets.key.{field}).",
        f"On CI it comes from the repository secrets (GitHub: Settings > Secrets and variables "
        f"> Actions, passed to the deploy job's `env:`); a pull request from a fork gets no "
        f"secrets and cannot unlock them. Locally, export {name} first.",
    )


@contextmanager
def decrypted_key(ctx: StepContext, env: Environment, root: Path) -> Iterator[Path | None]:
    """The environment's git-crypt key as a file, for the duration of the block.

    None means git-crypt finds the key itself (its GPG mode). A decrypted key
    is written to a 0600 file in a 0700 directory, deleted on leaving the
    block, failure or not.
    """
    source = env.key.source
    if source == "git-crypt-gpg":
        yield None
        return
    if source == "file":
        yield _key_on_disk(ctx, env, root)
        return
    decrypt = _SOURCES[source]
    if ctx.dry_run:
        placeholder = Path(tempfile.gettempdir()) / "deploy-git-crypt-XXXXXX" / "key"
        decrypt(ctx, env, root, placeholder)
        yield placeholder
        return
    with tempfile.TemporaryDirectory(prefix="deploy-git-crypt-") as private:
        os.chmod(private, 0o700)
        target = Path(private) / "key"
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        decrypt(ctx, env, root, target)
        check_key(env, target.read_bytes(), _origin(env))
        yield target


def check_key(env: Environment, data: bytes, origin: str) -> None:
    """Refuse anything that is not the git-crypt key the environment's secrets use."""
    name = key_name_in(data)
    if name is None:
        raise StepFailure(
            f"{origin} is not a git-crypt key.",
            "Export the key with `git-crypt export-key FILE` (add `-k NAME` for a named key) "
            "in a clone that is unlocked.",
        )
    current().masker.register(base64.b64encode(data).decode())
    if name != env.key.key_name:
        raise StepFailure(
            f"{origin} holds {key_label(name)}, but environment {env.name}'s secrets are "
            f"encrypted with {key_label(env.key.key_name)}.",
            f"Point the environment at the right key, or set secrets.key.name in "
            f"{REGISTRY_FILE} to {name!r}."
            if name
            else f"Remove secrets.key.name from "
            f"environment {env.name} in {REGISTRY_FILE}, or use the key named there.",
        )


def _origin(env: Environment) -> str:
    key = env.key
    return {
        "openssl": f"The key decrypted from {key.file}",
        "gpg": f"The key decrypted from {key.file}",
        "base64-env": f"The value of {key.env}",
        "file": f"The file {key.path}",
    }.get(key.source, "The key")


def _key_on_disk(ctx: StepContext, env: Environment, root: Path) -> Path:
    path = root / env.key.path
    if not path.is_file():
        if ctx.dry_run:
            return path
        raise StepFailure(
            f"The key file {env.key.path} does not exist ({REGISTRY_FILE}, environment "
            f"{env.name}, secrets.key.path).",
            "Copy the exported git-crypt key there, or fix the path.",
        )
    check_key(env, path.read_bytes(), _origin(env))
    return path


def _openssl(ctx: StepContext, env: Environment, root: Path, target: Path) -> None:
    key = env.key
    secret = read_secret_env(ctx, env, "key_env")
    iv = read_secret_env(ctx, env, "iv_env")
    for field, value, digits in (("key_env", secret, 64), ("iv_env", iv, 32)):
        name = getattr(key, field)
        if value == f"${name}":
            continue
        # openssl pads a short hex key with zeros and decrypts garbage without complaint.
        if not re.fullmatch(f"[0-9a-fA-F]{{{digits}}}", value):
            raise StepFailure(
                f"{name} must hold {digits} hexadecimal digits and does not ({REGISTRY_FILE}, "
                f"environment {env.name}, secrets.key.{field}).",
                f"Set {name} to the value `travis encrypt-file` printed (repository secrets "
                "on CI).",
            )
    encrypted = _encrypted_key(ctx, env, root)
    if not ctx.dry_run:
        say(f"decrypting {key.file} with the key in {key.key_env} and the IV in {key.iv_env}")
    command = ["openssl", "aes-256-cbc", "-d", "-K", secret, "-iv", iv]
    try:
        ctx.runner.run([*command, "-in", encrypted, "-out", target], quiet=True)
    except CommandFailed as failed:
        names = {"file": key.file, "key_env": key.key_env, "iv_env": key.iv_env}
        if re.search(r"bad decrypt|wrong final block length", failed.output):
            raise OpenSSLMismatch.diagnose(ctx, env, encrypted.read_bytes(), None) from None
        catalogue = [
            Diagnosis(d.pattern, d.why.format(**names), d.fix.format(**names))
            for d in OPENSSL_FAILURES
        ]
        raise explain(failed, catalogue, f"openssl could not decrypt {key.file}") from None
    if ctx.dry_run:
        return
    decrypted = target.read_bytes()
    if key_name_in(decrypted) is None:
        raise OpenSSLMismatch.diagnose(ctx, env, encrypted.read_bytes(), decrypted)


def _encrypted_key(ctx: StepContext, env: Environment, root: Path) -> Path:
    encrypted = root / env.key.file
    if not ctx.dry_run and not encrypted.is_file():
        raise StepFailure(
            f"The encrypted key {env.key.file} does not exist ({REGISTRY_FILE}, environment "
            f"{env.name}, secrets.key.file).",
            "Restore it from git, or fix the path.",
        )
    return encrypted


def is_key_layout(data: bytes, start: int = len(_KEY_HEADER)) -> bool:
    """True when `data` from `start` on is laid out as an exported key's fields.

    The header fields, then one or more key entries, each a list of fields ending
    with a zero; every field an id, a length and that many bytes. Random bytes
    almost never fit.
    """
    position, entries, in_header = start, 0, True
    while position < len(data):
        if position + 4 > len(data):
            return False
        field = int.from_bytes(data[position : position + 4], "big")
        position += 4
        if field == _KEY_FIELD_END:
            if not in_header:
                entries += 1
            in_header = False
            continue
        if position + 4 > len(data) or field > 255:
            return False
        length = int.from_bytes(data[position : position + 4], "big")
        position += 4 + length
        if length > 4096 or position > len(data):
            return False
    return position == len(data) and entries > 0


def openssl_verdict(ciphertext: bytes, decrypted: bytes | None) -> str:
    """What an openssl key+IV decryption that did not yield a git-crypt key means.

    `decrypted` is None when openssl itself refused. One of: "passphrase" (the
    file was encrypted with a passphrase, not a key), "damaged" (not whole
    AES blocks), "wrong-iv" (only the first block is wrong: CBC with the right
    key), "other-file" (it decrypts, to something else), "wrong-key".
    """
    if ciphertext.startswith(b"Salted__"):
        return "passphrase"
    if not ciphertext or len(ciphertext) % _BLOCK:
        return "damaged"
    if decrypted is None:
        return "wrong-key"
    if decrypted[:_BLOCK] != _KEY_HEADER and is_key_layout(decrypted):
        return "wrong-iv"
    body = decrypted[_BLOCK:]
    printable = sum(32 <= byte < 127 or byte in (9, 10, 13) for byte in body)
    if body and printable / len(body) > 0.9:
        return "other-file"
    # One wrong key in about 256 ends in valid padding, and openssl does not notice.
    return "wrong-key"


class OpenSSLMismatch(StepFailure):
    """The key, the IV and the encrypted file of an openssl key source do not go together."""

    @classmethod
    def diagnose(
        cls, ctx: StepContext, env: Environment, ciphertext: bytes, decrypted: bytes | None
    ) -> OpenSSLMismatch:
        key = env.key
        file, key_env, iv_env = key.file, key.key_env, key.iv_env
        used = f"the key in {key_env} and the IV in {iv_env}"
        history = _last_change(ctx, key.file)
        verdict = openssl_verdict(ciphertext, decrypted)
        if verdict == "passphrase":
            return cls(
                f"{file} was encrypted with a passphrase (it starts with `Salted__`, as "
                f"`openssl enc -k/-pass` writes), but this environment decrypts it with {used}.",
                f"Encrypt the git-crypt key with a key and IV instead (`openssl aes-256-cbc -K "
                f"KEY -iv IV`, as `travis encrypt-file` does) and put them in {key_env} and "
                f"{iv_env}.",
            )
        if verdict == "damaged":
            return cls(
                f"{file} is not an openssl ciphertext: {len(ciphertext)} bytes, not a whole "
                "number of 16-byte blocks. It is empty, cut short or altered (a Git LFS "
                "pointer, or line endings converted on checkout).",
                f"Restore it from git (git checkout -- {file}); mark it `binary` in "
                ".gitattributes if line endings were converted.",
            )
        if verdict == "wrong-iv":
            return cls(
                f"{iv_env} is wrong, and {key_env} is right: openssl decrypted {file} with "
                f"{used}, and everything but the first 16 bytes came out as the git-crypt key "
                "(a wrong IV garbles only the first block).",
                f"Set {iv_env} to the IV that was made with the key in {key_env} (one "
                f"`travis encrypt-file` run prints both; rotating the key means a new IV too).",
            )
        if verdict == "other-file":
            return cls(
                f"{file} decrypts with {used}, but to another file, not a git-crypt key: it "
                "was overwritten by encrypting another file with the same key and IV "
                "(`travis encrypt-file` holds one file per repository)"
                + (f"; {history}" if history else "")
                + ".",
                f"Revert the change that re-encrypted it (git log -- {file}); put any further "
                "secret under secrets/, where git-crypt encrypts it.",
            )
        return cls(
            f"The key in {key_env} and the IV in {iv_env} do not decrypt {file}. Most likely "
            f"{key_env} is wrong: "
            "mistyped, copied from another repository, or rotated without the file being "
            f"encrypted again. Less likely, {file} was encrypted again with a new key and "
            f"IV, and {key_env} and {iv_env} still hold the old ones"
            + (f" ({history})" if history else "")
            + ".",
            f"Check {key_env} and {iv_env} against the values printed when {file} was "
            "encrypted (repository secrets on CI: GitHub Settings > Secrets and variables > "
            f"Actions). If {file} changed in git since then, set both to that change's values.",
        )


def _last_change(ctx: StepContext, relative: str) -> str:
    """When git last changed the encrypted file, for the operator to compare with the variables."""
    result = ctx.runner.run(
        ["git", "-C", ctx.runner.cwd, "log", "-1", "--format=%h on %cs: %s", "--", relative],
        quiet=True,
        check=False,
        touches_nothing=True,
    )
    found = result.stdout.strip() if result.ok else ""
    return f"it last changed in commit {found}" if found else ""


def _base64_env(ctx: StepContext, env: Environment, root: Path, target: Path) -> None:
    name = env.key.env
    value = read_secret_env(ctx, env, "env")
    if ctx.dry_run:
        say(f"[dry-run] decode ${name} (base64) into {target}")
        return
    try:
        data = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise StepFailure(
            f"{name} is not valid base64 ({REGISTRY_FILE}, environment {env.name}, "
            "secrets.key.env).",
            f"Set {name} to the output of `git-crypt export-key - | base64 -w0` (add "
            "`-k NAME` for a named key).",
        ) from None
    target.write_bytes(data)


def _gpg(ctx: StepContext, env: Environment, root: Path, target: Path) -> None:
    key = env.key
    passphrase = read_secret_env(ctx, env, "passphrase_env") if key.passphrase_env else None
    private_key = read_secret_env(ctx, env, "private_key_env") if key.private_key_env else None
    if ctx.dry_run:
        where = (
            f"the private key in ${key.private_key_env}, imported into a temporary GNUPGHOME"
            if private_key
            else "your own GPG keyring"
        )
        say(f"[dry-run] gpg --decrypt {key.file} > {target}  (python-gnupg, with {where})")
        return
    encrypted = _encrypted_key(ctx, env, root)
    with _gnupg(ctx, env, private_key, passphrase) as gpg:
        try:
            result = gpg.decrypt_file(str(encrypted), passphrase=passphrase)
        except ValueError:
            raise StepFailure(
                f"The passphrase in {key.passphrase_env} contains a line break, which GnuPG "
                "cannot take.",
                f"Store the passphrase alone, on one line, in {key.passphrase_env}.",
            ) from None
        if not result.ok:
            raise _gpg_failure(gpg, result, env, encrypted)
        target.write_bytes(result.data)


@contextmanager
def _gnupg(
    ctx: StepContext, env: Environment, private_key: str | None, passphrase: str | None
) -> Iterator[gnupg.GPG]:
    if private_key is None:
        yield _gpg_in(None)
        return
    with tempfile.TemporaryDirectory(prefix="deploy-gnupg-") as home:
        os.chmod(home, 0o700)
        try:
            gpg = _gpg_in(home)
            imported = gpg.import_keys(private_key, passphrase=passphrase)
            if not imported.sec_imported:
                raise StepFailure(
                    f"{env.key.private_key_env} holds no GPG private key ({REGISTRY_FILE}, "
                    f"environment {env.name}, secrets.key.private_key_env).",
                    "Set it to the output of `gpg --armor --export-secret-keys KEYID`.",
                )
            yield gpg
        finally:
            # The agent gpg started for this home would otherwise outlive it.
            ctx.runner.run(
                ["gpgconf", "--homedir", home, "--kill", "gpg-agent"],
                check=False,
                quiet=True,
                touches_nothing=True,
            )


def _gpg_in(home: str | None) -> gnupg.GPG:
    try:
        return gnupg.GPG(gnupghome=home)
    except OSError:
        raise StepFailure(
            "GnuPG (gpg) is not installed, and this environment's key is encrypted with it.",
            "Install it (apt-get install gnupg).",
        ) from None


def _gpg_failure(
    gpg: gnupg.GPG, result: gnupg.Crypt, env: Environment, encrypted: Path
) -> StepFailure:
    key = env.key
    wanted = [k.upper() for k in gpg.get_recipients_file(str(encrypted))]
    if not wanted and result.key_id:
        wanted = [result.key_id.upper()]
    available = gpg.list_keys(secret=True)
    described = []
    held = set()
    for secret in available:
        ids = [secret["keyid"], *(sub[0] for sub in secret.get("subkeys", []))]
        held.update(i.upper() for i in ids)
        uid = secret["uids"][0] if secret.get("uids") else "no user id"
        described.append(f"{secret['keyid']} ({uid}; subkeys {', '.join(ids[1:]) or 'none'})")
    have = "; ".join(described) or "none"
    keyring = f"the private key in {key.private_key_env}" if key.private_key_env else "your keyring"
    recipients = ", ".join(wanted) or "an unknown key"
    if not held.intersection(wanted):
        provide = (
            f"Set {key.private_key_env} (a repository secret on CI) to that key's armored "
            "private key"
            if key.private_key_env
            else "Import that key's private key into your keyring"
        )
        return StepFailure(
            f"{key.file} is encrypted for GPG key {recipients}, and {keyring} has no secret "
            f"key for it. Secret keys available: {have}.",
            f"{provide}, or re-encrypt the git-crypt key for a key you have: "
            f"gpg --encrypt -r KEYID -o {key.file} KEYFILE.",
        )
    passphrase = (
        f"the passphrase in {key.passphrase_env}"
        if key.passphrase_env
        else "the passphrase (no secrets.key.passphrase_env is configured)"
    )
    return StepFailure(
        f"{key.file} is encrypted for GPG key {recipients}, which {keyring} holds, but GnuPG "
        f"could not use it ({result.status}): {passphrase} is wrong or missing.",
        f"Check the value of {key.passphrase_env or 'your passphrase'} "
        f"({REGISTRY_FILE}, environment {env.name}, secrets.key.passphrase_env; repository "
        "secrets on CI).",
    )


_SOURCES: dict[str, Callable[[StepContext, Environment, Path, Path], None]] = {
    "openssl": _openssl,
    "gpg": _gpg,
    "base64-env": _base64_env,
}


class Repository:
    """The checkout the secrets live in, seen through git and git-crypt.

    Runner.run runs in the current directory, so every command names the
    checkout with `git -C`; `git -C ROOT crypt ...` runs git-crypt there too.
    """

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.root = runner.cwd

    def git(self, *args: str | Path, check: bool = True) -> str:
        command = ["git", "-C", self.root, *args]
        return self.runner.run(command, quiet=True, check=check, touches_nothing=True).stdout

    def crypt(self, *args: str | Path) -> None:
        self.runner.run(["git", "-C", self.root, "crypt", *args], quiet=True)

    @cached_property
    def _keys_dir(self) -> Path:
        return Path(self.git("rev-parse", "--absolute-git-dir").strip()) / "git-crypt" / "keys"

    def unlocked_keys(self) -> set[str]:
        """The names of the keys git-crypt holds ("" is the default key)."""
        if not self._keys_dir.is_dir():
            return set()
        return {"" if p.name == "default" else p.name for p in self._keys_dir.iterdir()}

    def filters(self, paths: list[str]) -> dict[str, str]:
        if not paths:
            return {}
        fields = self.git("check-attr", "-z", "filter", "--", *paths).split("\0")
        return {fields[i]: fields[i + 2] for i in range(0, len(fields) - 2, 3)}

    def changes(self, untracked: bool = True) -> list[tuple[str, str]]:
        """(status, path) of every change in the working tree and index."""
        listing = self.git("status", "--porcelain", "-z", "-uall" if untracked else "-uno")
        entries = listing.split("\0")
        found: list[tuple[str, str]] = []
        skip = False
        for entry in entries:
            if skip or len(entry) < 4:
                skip = False
                continue
            found.append((entry[:2], entry[3:]))
            # A rename or copy is followed by its old path.
            skip = entry[0] in "RC"
        return found

    def blobs(self, revision: str) -> dict[str, str]:
        """path -> blob id of every file in the index ("") or in `revision`."""
        if revision:
            if not self.git("rev-parse", "--verify", "-q", revision, check=False).strip():
                return {}
            listing = self.git("ls-tree", "-r", "-z", revision)
        else:
            listing = self.git("ls-files", "-s", "-z")
        blobs = {}
        for entry in filter(None, listing.split("\0")):
            info, path = entry.split("\t", 1)
            fields = info.split()
            # ls-tree: mode type blob; ls-files -s: mode blob stage. 160000 is a submodule.
            blob = fields[2] if revision else fields[1]
            if fields[0] != "160000":
                blobs[path] = blob
        return blobs

    def blob_is_encrypted(self, blob: str) -> bool:
        # Decoded as text, the header's bytes are all ASCII and survive intact.
        return self.git("cat-file", "blob", blob).startswith(GIT_CRYPT_HEADER.decode())

    def undecryptable(self, key_name: str) -> tuple[list[str], int]:
        """Tracked files of `key_name` its installed key cannot decrypt, and how many it has."""
        tracked = [p for p in self.git("ls-files", "-z").split("\0") if p]
        own = filter_name(key_name)
        files = [path for path, value in self.filters(tracked).items() if value == own]
        return [path for path in files if not self._smudges(path)], len(files)

    def _smudges(self, path: str) -> bool:
        # --filters smudges the staged blob with the installed key: it fails where checkout did.
        command = ["git", "-C", self.root, "cat-file", "--filters", f":{path}"]
        return self.runner.run(command, quiet=True, check=False, touches_nothing=True).ok

    def lock_again(self, keys: set[str]) -> None:
        # Forcing is safe: git-crypt only unlocks a clean tree, so every change
        # in it now is the unlock's own.
        for key_name in sorted(keys):
            self.crypt("lock", "--force", *(["-k", key_name] if key_name else []))


def filter_name(key_name: str) -> str:
    return f"git-crypt-{key_name}" if key_name else "git-crypt"


def is_git_crypt_filter(value: str | None) -> bool:
    return value is not None and (value == "git-crypt" or value.startswith("git-crypt-"))


def plaintext(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if data.startswith(GIT_CRYPT_HEADER):
        return None
    return data.decode(errors="replace")


EXPIRY_WARNING_DAYS = 30
_PRIVATE_MARKERS = (b"PRIVATE KEY-----", b'"private_key"', b"client-key-data", b"kind: Config")


def private_files(env: Environment, root: Path, on_disk: list[Path]) -> list[Path]:
    named = [env.secrets_dir / file for file, _ in env.cluster.secret_files()]
    sniffed = []
    for path in on_disk:
        try:
            head = (root / path).read_bytes()[:65536]
        except OSError:
            continue
        if any(marker in head for marker in _PRIVATE_MARKERS):
            sniffed.append(path)
    return sorted({*named, *sniffed})


def make_private(ctx: StepContext, root: Path, paths: list[Path]) -> int:
    """Make keys and kubeconfigs 0600; the number tightened.

    Git keeps no permissions beyond the executable bit, and git-crypt writes
    what it decrypts with the umask (0644 on most machines): every fresh unlock
    yields readable keys, so refusing them would fail every deploy. Tightening
    loses nothing; only a file that cannot be tightened stops the step.
    """
    tightened = 0
    for path in paths:
        full = root / path
        if full.is_symlink():
            raise StepFailure(
                f"{path} is a symbolic link (to {os.readlink(full)}); git-crypt does not "
                "encrypt links, so the credential it points to is not under git-crypt at all.",
                f"Replace the link with the file itself and commit it: {path} is then encrypted.",
            )
        mode = stat.S_IMODE(full.stat().st_mode)
        if not mode & 0o077:
            continue
        if ctx.dry_run:
            say(f"[dry-run] chmod 600 {path}")
            continue
        try:
            full.chmod(0o600)
        except OSError as error:
            raise StepFailure(
                f"{path} is readable by others (mode {mode:04o}) and cannot be made private: "
                f"{error.strerror}.",
                f"Make it private (chmod 600 {path}); check who owns it (ls -l {path}).",
            ) from None
        say(f"{path} was mode {mode:04o}; made it 0600")
        tightened += 1
    return tightened


def check_certificates(ctx: StepContext, root: Path, paths: list[Path]) -> int:
    """Warn about kubeconfig client certificates near expiry; fail on expired ones."""
    expiring = 0
    now = datetime.now(UTC)
    for path in paths:
        text = plaintext(root / path) or ""
        if "client-certificate" not in text:
            continue
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError:
            continue
        users = config.get("users") if isinstance(config, dict) else None
        for user in users if isinstance(users, list) else []:
            name = user.get("name", "?") if isinstance(user, dict) else "?"
            found = _client_certificate(user, root / path)
            if found is None:
                continue
            ends = _not_after(ctx.runner, found, f"user {name!r} in {path}")
            days = (ends - now).total_seconds() / 86400
            when = ends.strftime("%Y-%m-%d %H:%M UTC")
            if days < 0:
                raise StepFailure(
                    f"The client certificate of user {name!r} in {path} expired on {when}: "
                    "the cluster will refuse it.",
                    "k3s client certificates expire after a year. Renew them on the server "
                    "(stop k3s, run `k3s certificate rotate`, start it), put the new kubeconfig "
                    f"in {path} and commit it.",
                )
            if days < EXPIRY_WARNING_DAYS:
                warn(
                    f"The client certificate of user {name!r} in {path} expires on {when}, "
                    f"in {days:.0f} days. k3s client certificates expire after a year: renew "
                    "it before then (`k3s certificate rotate` on the server)."
                )
                expiring += 1
    return expiring


def _client_certificate(user: object, kubeconfig: Path) -> bytes | Path | None:
    credentials = user.get("user") if isinstance(user, dict) else None
    if not isinstance(credentials, dict):
        return None
    data = credentials.get("client-certificate-data")
    if isinstance(data, str):
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            return b""
    named = credentials.get("client-certificate")
    if isinstance(named, str):
        return kubeconfig.parent / named
    return None


def _not_after(runner: Runner, certificate: bytes | Path, whose: str) -> datetime:
    with tempfile.TemporaryDirectory(prefix="deploy-cert-") as private:
        if isinstance(certificate, bytes):
            pem = Path(private) / "client.crt"
            pem.write_bytes(certificate)
            certificate = pem
        result = runner.run(
            ["openssl", "x509", "-enddate", "-noout", "-in", certificate],
            quiet=True,
            check=False,
            touches_nothing=True,
        )
    found = re.search(r"notAfter=(.+)", result.stdout)
    if not result.ok or not found:
        raise StepFailure(
            f"The client certificate of {whose} is not a certificate openssl can read.",
            "Put the kubeconfig the cluster issued there again (base64 of a PEM certificate "
            "in client-certificate-data).",
            details=result.stderr,
        )
    # openssl pads single-digit days with a second space: "Jan  1 00:00:00 2027 GMT".
    stamp = " ".join(found.group(1).split())
    return datetime.strptime(stamp, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=UTC)
