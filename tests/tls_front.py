"""An https front for a test server: TLS on a loopback port (a self-signed certificate for 127.0.0.1, made
here), each connection piped to a plain-HTTP port. So a client can be tested against an https origin, e.g.
through `connect_proxy.ConnectProxy`, which then must tunnel with CONNECT.

    with TlsFront(gateway.port) as front:
        client trusting front.cert_pem -> front.url (https://127.0.0.1:PORT)
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from loopback_server import LoopbackServer, pipe


def self_signed(host: str = "127.0.0.1") -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for `host` (an IP address), valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


class TlsFront(LoopbackServer):
    def __init__(self, target_port: int) -> None:
        super().__init__("tls-front")
        self._target = target_port
        self.cert_pem, self._key_pem = self_signed()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
            cert.write_bytes(self.cert_pem)
            key.write_bytes(self._key_pem)
            ctx.load_cert_chain(cert, key)
        return ctx

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except asyncio.CancelledError:  # stopping with connections still open
            writer.close()
            up_writer.close()
