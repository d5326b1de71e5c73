"""An HTTPS proxy on loopback that answers for one real host from a local folder.

helm reaches a chart repository by its URL; to prove what a real
`helm dependency update` writes without the network, helm is pointed at this
proxy (HTTPS_PROXY) and told to trust a throwaway certificate authority
(SSL_CERT_FILE). The proxy accepts CONNECT to the one host it serves,
terminates TLS there with a certificate that authority signed for that host,
and answers GETs under the repository's path from the folder. Every other
host is refused, so nothing leaves the machine. The URL in Chart.yaml stays
the real one.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import urlsplit

from tests.fakes.loopback import LoopbackServer, send_file


def make_authority(folder: Path, host: str) -> tuple[Path, Path, Path]:
    """A CA certificate, and a key and certificate it signed for `host` (openssl)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = folder / "ca.key", folder / "ca.pem"
    key, request, cert = folder / "host.key", folder / "host.csr", folder / "host.pem"
    extensions = folder / "host.ext"
    extensions.write_text(
        f"subjectAltName=DNS:{host}\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    new_key = ["-newkey", "rsa:2048", "-nodes"]
    authority = "/CN=binder-deploy test authority"
    signing = ["-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial", "-extfile", extensions]
    for command in (
        ["req", "-x509", *new_key, "-keyout", ca_key, "-out", ca_cert, "-subj", authority],
        ["req", *new_key, "-keyout", key, "-out", request, "-subj", f"/CN={host}"],
        ["x509", "-req", "-in", request, *signing, "-out", cert, "-days", "2"],
    ):
        subprocess.run(["openssl", *map(str, command)], check=True, capture_output=True)
    return ca_cert, cert, key


class InterceptingProxy:
    """`with InterceptingProxy(url, folder, tmp) as proxy:` serves `url` from `folder`.

    `proxy.environment` holds what a client needs: HTTPS_PROXY and SSL_CERT_FILE.
    `proxy.requests` lists every request, refused CONNECTs included.
    """

    def __init__(self, url: str, folder: Path, workdir: Path) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or ""
        self.prefix = parts.path.rstrip("/") + "/"
        self.folder = folder
        self.requests: list[str] = []
        self.ca_cert, cert, key = make_authority(workdir, self.host)
        self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._tls.load_cert_chain(cert, key)
        self._http = LoopbackServer(self._connect_handler(), "intercepting proxy")

    @property
    def environment(self) -> dict[str, str]:
        return {
            "HTTPS_PROXY": self._http.url,
            "https_proxy": self._http.url,
            "NO_PROXY": "",
            "no_proxy": "",
            "SSL_CERT_FILE": str(self.ca_cert),
        }

    def _connect_handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Files(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                proxy.requests.append(f"GET https://{proxy.host}{self.path}")
                relative = self.path.split("?", 1)[0]
                served = relative.startswith(proxy.prefix) and ".." not in relative
                send_file(self, proxy.folder / relative[len(proxy.prefix) :] if served else None)

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Connect(BaseHTTPRequestHandler):
            def do_CONNECT(self) -> None:
                proxy.requests.append(f"CONNECT {self.path}")
                if self.path != f"{proxy.host}:443":
                    self.send_response(403, "only the repository under test is served")
                    self.end_headers()
                    return
                self.send_response(200, "Connection established")
                self.end_headers()
                self.wfile.flush()
                try:
                    tunnel = proxy._tls.wrap_socket(self.connection, server_side=True)
                except (ssl.SSLError, OSError):
                    return
                # The tunnel speaks HTTP/1.1 inside TLS: one handler serves its requests.
                Files(tunnel, self.client_address, self.server)
                self.close_connection = True
                _close_quietly(tunnel)

            def log_message(self, format: str, *args: object) -> None:
                pass

        Files.protocol_version = "HTTP/1.1"
        return Connect

    def __enter__(self) -> InterceptingProxy:
        self._http.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.stop()


def _close_quietly(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):
        connection.close()
