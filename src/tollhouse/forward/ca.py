"""The forward proxy's local certificate authority: made on first start in the data directory, its private key
never leaving it (mode 0600), its power limited by X.509 name constraints to the intercepted hosts.

Files, under `<data dir>/forward-proxy/`: `ca-key.pem` (0600), `ca.pem` (what `tollhouse ca export` prints and
clients trust: NODE_EXTRA_CA_CERTS) and `ca-bundle.pem` (the system's roots plus ours, for SSL_CERT_FILE,
REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, which replace the trust store rather than add to it).

When `forward_proxy.intercept` changes, the certificate is re-issued (same key, new constraints) and the log says
so: clients must be given the new `ca.pem` (re-run `tollhouse install --forward-proxy`).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import logging
import os
import ssl
import tempfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger("tollhouse.forward")

CA_DIR = "forward-proxy"
KEY_FILE, CERT_FILE, BUNDLE_FILE = "ca-key.pem", "ca.pem", "ca-bundle.pem"
CA_NAME = "Tollhouse forward-proxy CA"
_CA_DAYS = 3650
_LEAF_DAYS = 7
SYSTEM_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem",
                  "/usr/local/etc/openssl/cert.pem")


class CAError(Exception):
    """The CA's files cannot be read or written; the message names the file and what to do."""


def _constraint(host: str) -> str:
    # `*.example.com` → `.example.com` (every host under it); a plain name also covers names under it (RFC 5280)
    return host[1:] if host.startswith("*.") else host


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name_constraints(hosts: Sequence[str]) -> x509.NameConstraints:
    return x509.NameConstraints(
        permitted_subtrees=[x509.DNSName(_constraint(h)) for h in sorted(set(hosts))],
        # no address may ever be certified by this CA
        excluded_subtrees=[x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")),
                           x509.IPAddress(ipaddress.ip_network("::/0"))])


def _issue_ca(key: ec.EllipticCurvePrivateKey, hosts: Sequence[str]) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tollhouse")])
    now = _now()
    public = key.public_key()
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=_CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(_name_constraints(hosts), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256()))


def permitted_hosts(cert: x509.Certificate) -> tuple[str, ...]:
    """The DNS names the certificate's name constraints permit (empty: no constraints)."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(sorted(str(n.value) for n in ext.permitted_subtrees or () if isinstance(n, x509.DNSName)))


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), mode)
        out.write(data)
    os.replace(tmp, path)


def system_roots() -> bytes:
    """The system's trusted roots as PEM (certifi's when installed, else the first system bundle found)."""
    try:
        import certifi  # optional

        return Path(certifi.where()).read_bytes()
    except ImportError:
        pass
    for candidate in SYSTEM_BUNDLES:
        try:
            return Path(candidate).read_bytes()
        except OSError:
            continue
    paths = ssl.get_default_verify_paths()
    if paths.cafile:
        return Path(paths.cafile).read_bytes()
    log.warning("no system CA bundle found (looked at %s): the merged bundle holds only the forward-proxy CA, "
                "so clients using it trust nothing else", ", ".join(SYSTEM_BUNDLES))
    return b""


@dataclass(frozen=True, slots=True)
class CAFiles:
    directory: Path

    @property
    def key(self) -> Path:
        return self.directory / KEY_FILE

    @property
    def cert(self) -> Path:
        return self.directory / CERT_FILE

    @property
    def bundle(self) -> Path:
        return self.directory / BUNDLE_FILE


class LocalCA:
    """The CA key and certificate, and the leaf certificates it mints (for the permitted hosts only)."""

    def __init__(self, files: CAFiles, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.files = files
        self.key = key
        self.cert = cert
        self.hosts = permitted_hosts(cert)
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())  # one per process: a leaf costs a signature
        self._leaf_key_pem = self._leaf_key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption())
        self._ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def fingerprint(self) -> str:
        return self.cert.fingerprint(hashes.SHA256()).hex(":")

    def permits(self, host: str) -> bool:
        """`host` is an intercepted host: named, or under a `.suffix` constraint (from a `*.` entry)."""
        return any(host.endswith(p) if p.startswith(".") else host == p for p in self.hosts)

    def mint(self, host: str) -> x509.Certificate:
        """A leaf certificate for `host` (which the name constraints must permit)."""
        if not self.permits(host):
            raise CAError(f"the forward-proxy CA does not sign {host!r}: it is not in forward_proxy.intercept")
        return self._leaf(host)

    def _leaf(self, host: str) -> x509.Certificate:
        now = _now()
        return (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
                .issuer_name(self.cert.subject).public_key(self._leaf_key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=_LEAF_DAYS))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self._ski),
                               critical=False)
                .sign(self.key, hashes.SHA256()))

    def server_context(self, host: str) -> ssl.SSLContext:
        """A TLS server context presenting a fresh leaf for `host`, ALPN http/1.1 only."""
        leaf = self.mint(host)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])
        chain = leaf.public_bytes(serialization.Encoding.PEM) + self._leaf_key_pem
        # the ssl module loads certificates from files only: a private temp file in the CA's own directory
        fd, name = tempfile.mkstemp(prefix=".leaf-", dir=self.files.directory)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(chain)
            ctx.load_cert_chain(name)
        finally:
            os.unlink(name)
        return ctx


class LeafCache:
    """Server contexts per host, the most recently used kept (at most `size`); re-minted when near expiry."""

    def __init__(self, ca: LocalCA, size: int) -> None:
        self.ca = ca
        self.size = size
        self._contexts: OrderedDict[str, tuple[ssl.SSLContext, float]] = OrderedDict()
        self.minted = 0

    def context(self, host: str) -> ssl.SSLContext:
        now = _now().timestamp()
        hit = self._contexts.get(host)
        if hit is not None and hit[1] > now:
            self._contexts.move_to_end(host)
            return hit[0]
        ctx = self.ca.server_context(host)
        self.minted += 1
        self._contexts[host] = (ctx, now + (_LEAF_DAYS - 1) * 86400)
        self._contexts.move_to_end(host)
        while len(self._contexts) > self.size:
            self._contexts.popitem(last=False)
        return ctx

    def __len__(self) -> int:
        return len(self._contexts)


def ca_files(data_dir: Path) -> CAFiles:
    return CAFiles(data_dir.absolute() / CA_DIR)


def load_or_create(data_dir: Path, hosts: Sequence[str], reissue: bool = True) -> LocalCA:
    """The data directory's CA, made if missing and (with `reissue`) re-issued if its constraints are not exactly
    `hosts`; `ca.pem` and `ca-bundle.pem` written beside it. Without `reissue` a valid certificate there is kept
    whatever its hosts (`ca export`, `install`: the running proxy's list is its config's, not theirs)."""
    files = ca_files(data_dir)
    wanted = tuple(sorted({_constraint(h) for h in hosts}))
    try:
        files.directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        with _locked(files.directory / ".lock"):  # `serve --workers N`, `ca export`: one makes it, all use it
            return _load_or_create(files, hosts, wanted, reissue)
    except OSError as exc:
        raise CAError(f"{files.directory}: cannot keep the forward-proxy CA there: {exc.strerror or exc} (check "
                      "the data directory's owner and permissions)") from None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # (releases the lock)


def _load_or_create(files: CAFiles, hosts: Sequence[str], wanted: tuple[str, ...], reissue: bool) -> LocalCA:
    """(load_or_create, under the lock)"""
    key = _load_key(files.key)
    if key is None:
        key = ec.generate_private_key(ec.SECP256R1())
        _write(files.key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()), 0o600)
        log.info("made the forward-proxy CA key %s (mode 0600; it never leaves this directory)", files.key)
    os.chmod(files.key, 0o600)
    cert = _load_cert(files.cert)
    if cert is None or cert.public_key() != key.public_key() or (reissue and permitted_hosts(cert) != wanted) \
            or cert.not_valid_after_utc < _now() + datetime.timedelta(days=30):
        if cert is not None:
            log.warning("re-issued the forward-proxy CA certificate %s for the hosts %s (it was for %s): clients "
                        "must trust the new one (re-run `tollhouse install --forward-proxy`, or hand out "
                        "`tollhouse ca export`)", files.cert, ", ".join(wanted),
                        ", ".join(permitted_hosts(cert)) or "no hosts")
        cert = _issue_ca(key, hosts)
        _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    ca = LocalCA(files, key, cert)
    bundle = system_roots().rstrip(b"\n") + b"\n" + ca.pem
    if _read(files.bundle) != bundle:
        _write(files.bundle, bundle, 0o644)
    return ca


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey | None:
    data = _read(path)
    if data is None:
        return None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError:
        raise CAError(f"{path}: not a PEM private key; move it away to have a new CA made") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CAError(f"{path}: not the EC key Tollhouse makes; move it away to have a new CA made")
    return key


def _load_cert(path: Path) -> x509.Certificate | None:
    data = _read(path)
    if data is None:
        return None
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        return None
