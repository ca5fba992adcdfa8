"""Real receivers for alert tests: an HTTP server standing in for Slack or a webhook consumer (it verifies
Standard Webhooks signatures when given the secret), and an SMTP server (aiosmtpd) with STARTTLS and AUTH.
Each can be stopped and started again on the same port (a receiver that is down for a while)."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import ssl
import threading
import time
from collections.abc import Callable
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from standardwebhooks import Webhook, WebhookVerificationError

from conftest import free_port


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


class _Log:
    def __init__(self) -> None:
        self.items: list[Any] = []
        self._cond = threading.Condition()

    def add(self, item: Any) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def wait_for(self, check: Callable[[list[Any]], bool], timeout: float = 20.0) -> list[Any]:
        with self._cond:
            if not self._cond.wait_for(lambda: check(self.items), timeout):
                raise AssertionError(f"receiver: condition not met within {timeout} s; got {self.items!r}")
            return list(self.items)


class HttpReceiver:
    """POSTs are recorded as (headers, parsed JSON body). With `secret`, a bad signature is answered 401 and
    counted in `rejected`."""

    def __init__(self, secret: str | None = None) -> None:
        self.port = free_port()
        self.secret = secret
        self.log = _Log()
        self.rejected = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/services/T000/B000/secretpath"

    def start(self) -> HttpReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                if receiver.secret is not None:
                    try:
                        Webhook(receiver.secret).verify(body, headers)
                    except WebhookVerificationError:
                        receiver.rejected += 1
                        self.send_response(401)
                        self.end_headers()
                        return
                receiver.log.add((headers, json.loads(body)))
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (and its key), to serve STARTTLS with and to trust as the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class SmtpReceiver:
    """aiosmtpd requiring STARTTLS before AUTH and AUTH before mail; messages recorded as (envelope rcpts,
    parsed message)."""

    USER, PASSWORD = "alerts", "s3cret-pw"

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.cert, key = self_signed(directory)
        self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._tls.load_cert_chain(self.cert, key)
        self.log = _Log()
        self.logins: list[str] = []
        self._controller: Controller | None = None

    @property
    def url(self) -> str:
        return f"smtp://{self.USER}:{self.PASSWORD}@127.0.0.1:{self.port}"

    def start(self) -> SmtpReceiver:
        receiver = self

        class Handler:
            async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
                content = envelope.original_content or b""
                receiver.log.add((list(envelope.rcpt_tos), message_from_bytes(content)))
                return "250 OK"

        def authenticate(server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                         auth_data: Any) -> AuthResult:
            ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == self.USER and \
                auth_data.password.decode() == self.PASSWORD
            if ok:
                receiver.logins.append(mechanism)
            return AuthResult(success=ok)

        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, tls_context=self._tls,
                                      require_starttls=True, authenticator=authenticate, auth_required=True,
                                      auth_require_tls=True, ready_timeout=10)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


def messages(log: _Log) -> list[Message]:
    return [m for _, m in log.items]


def wait_until(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll a condition the test cannot be told about (state in another process)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(0.05)
