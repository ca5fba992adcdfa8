"""Helpers for the forward-proxy tests: a gateway with `forward_proxy` on, raw CONNECT sockets, a local TLS server."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import Gateway, Mock, upstreams

DIRECTORY = {"org": "acme", "teams": [{"id": "platform"}], "people": [{"id": "alice", "team": "platform"}]}


def proxy_config(mock: Mock, **forward: Any) -> dict[str, Any]:
    return {"providers": upstreams(mock.url, api_key="sk-real-provider-key"), "directory": DIRECTORY,
            "identity": {"default_user": "alice"}, "forward_proxy": {"port": 0, **forward}}


def proxy_info(gw: Gateway) -> dict[str, Any]:
    assert gw.state is not None
    info = gw.state.health.current["forward_proxy"]()
    assert isinstance(info, dict)
    return info


def proxy_url(gw: Gateway) -> str:
    return f"http://127.0.0.1:{proxy_info(gw)['port']}"


def connect(port: int, request: bytes, timeout: float = 10) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(request)
    return sock


def read_head(sock: socket.socket) -> bytes:
    """The response head (up to the blank line), or what came before the connection closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def self_signed(directory: Path, host: str = "localhost") -> tuple[Path, Path]:
    """A self-signed server certificate for `host` (and 127.0.0.1): (cert+key file, cert file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    chain, only = directory / "server.pem", directory / "server-cert.pem"
    chain.write_bytes(cert_pem + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    only.write_bytes(cert_pem)
    return chain, only


class EchoTLSServer:
    """A TLS server on 127.0.0.1 with its own certificate: answers each line with 'echo: ' + the line, and a
    line 'big N' with N bytes."""

    def __init__(self, chain: Path) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(chain)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(raw,), daemon=True).start()

    def _one(self, raw: socket.socket) -> None:
        try:
            with self.ctx.wrap_socket(raw, server_side=True) as conn:
                reader = conn.makefile("rb")
                for line in reader:
                    text = line.strip()
                    if text.startswith(b"big "):
                        conn.sendall(b"x" * int(text[4:]))
                    else:
                        conn.sendall(b"echo: " + text + b"\n")
        except (OSError, ssl.SSLError):
            pass

    def close(self) -> None:
        self.sock.close()
