"""A real OpenSSH server on loopback, playing the part of an environment's bastion host.

Debian's sshd runs in the foreground with its own host key, authorized_keys and
configuration, all in a temporary folder, on a free port of 127.0.0.1. It lets
the tests open real SSH tunnels: the pipeline's bastion code cannot tell it from
a bastion in front of a private cluster.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")
# sshd refuses to start as root without its privilege separation folder.
PRIVSEP_DIR = Path("/run/sshd")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def keypair(path: Path) -> Path:
    """An ed25519 key without passphrase at `path` (and `path`.pub)."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path


class LocalSshd:
    """`with LocalSshd(folder) as bastion:` a running sshd that accepts `bastion.client_key`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = 0
        self.user = os.environ.get("USER") or _login_name()
        self.client_key = folder / "client_key"
        self.host_key = folder / "host_key"
        self.log = folder / "sshd.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def known_hosts_line(self) -> str:
        """The server's host key as an OpenSSH known_hosts line."""
        public = (self.folder / "host_key.pub").read_text().split()
        return f"[127.0.0.1]:{self.port} {public[0]} {public[1]}\n"

    def __enter__(self) -> LocalSshd:
        self.folder.mkdir(parents=True, exist_ok=True)
        keypair(self.host_key)
        keypair(self.client_key)
        authorized = self.folder / "authorized_keys"
        authorized.write_text((self.folder / "client_key.pub").read_text())
        self.port = free_port()
        config = self.folder / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"AuthorizedKeysFile {authorized}",
                    f"PidFile {self.folder / 'sshd.pid'}",
                    "UsePAM no",
                    "StrictModes no",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "AllowTcpForwarding yes",
                    "LogLevel VERBOSE",
                ]
            )
            + "\n"
        )
        if os.geteuid() == 0:
            PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(config)], stdout=log, stderr=log
            )
        self._wait_until_listening()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"sshd exited at start: {self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"sshd did not listen on port {self.port}: {self.log.read_text()}")


def _login_name() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name
