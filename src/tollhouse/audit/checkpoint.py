"""Signed checkpoints of the audit chain's head, so that removing the newest entries shows.

The hash chain reveals an entry edited, removed, reordered or inserted before the last one, but a chain with
its newest entries deleted is still a valid chain. So the control plane periodically signs "entry #seq has hash
H" with an Ed25519 key only it holds (`audit_signing_key.pem` in the data dir, mode 0600; the public half is
exported as `audit_signing_key.pub`). A checkpoint that covers an entry no longer there, or one whose hash
differs, is proof of tampering for anyone holding the public key. Entries after the last checkpoint are not
covered: checkpoint often (every N entries, every T seconds, at shutdown).
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tollhouse.audit.chain import AuditEntry
from tollhouse.events.model import iso_ts
from tollhouse.events.records import Checkpoint

log = logging.getLogger("tollhouse.audit")

KEY_FILE = "audit_signing_key.pem"
PUBLIC_KEY_FILE = "audit_signing_key.pub"
_DOMAIN = b"tollhouse audit checkpoint v1\n"


class SigningKeyError(Exception):
    """A signing or public key file that cannot be read or is not an Ed25519 key; the message names the file."""


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short fingerprint of a public key: the first 16 hex digits of SHA-256 of its raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def signing_key_path(data_dir: Path, configured: str = "") -> Path:
    """`audit.signing_key_file` (DATA_DIR may appear in it), else the data dir's own key file."""
    return Path(configured.replace("DATA_DIR", str(data_dir))) if configured else data_dir / KEY_FILE


def public_key_path(key_path: Path) -> Path:
    return key_path.with_suffix(".pub")


def load_or_create_signing_key(data_dir: Path, configured: str = "") -> Ed25519PrivateKey:
    """The signing key, generated on first use; (re)writes the exported public key next to it (`.pub`).
    Gateways sharing one store share one key file (configured), so each can verify the others' checkpoints."""
    path = signing_key_path(data_dir, configured)
    if not path.exists():
        _create_private_key(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SigningKeyError(f"cannot read the audit signing key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} is not an Ed25519 private key")
    if path.stat().st_mode & 0o077:
        log.warning("the audit signing key %s is readable by others; it should be mode 0600", path)
    public = public_key_path(path)
    pem = _public_pem(key.public_key())
    if not public.exists() or public.read_bytes() != pem:
        public.write_bytes(pem)
        public.chmod(0o644)
    return key


def _create_private_key(path: Path) -> None:
    """Write a new key to a private temporary file, then link it into place: a concurrent starter that wins
    keeps its key, and nobody ever reads a half-written file."""
    pem = Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption())
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        os.link(tmp, path)
        log.info("generated the audit signing key %s (public key in %s)", path, public_key_path(path).name)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise SigningKeyError(f"cannot read the audit public key {path}: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{path} is not an Ed25519 public key")
    return key


def _message(seq: int, hash: str, ts_ms: int) -> bytes:
    return _DOMAIN + f"{seq}\n{hash}\n{ts_ms}".encode()


def sign_checkpoint(key: Ed25519PrivateKey, seq: int, hash: str, ts_ms: int) -> Checkpoint:
    """A signed statement that audit entry #seq has hash `hash`, made at `ts_ms`."""
    signature = key.sign(_message(seq, hash, ts_ms)).hex()
    return Checkpoint(seq=seq, ts_ms=ts_ms, hash=hash, key_id=key_id(key.public_key()), signature=signature)


def _signature_ok(cp: Checkpoint, public_key: Ed25519PublicKey) -> bool:
    try:
        public_key.verify(bytes.fromhex(cp.signature), _message(cp.seq, cp.hash, cp.ts_ms))
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_checkpoints(entries: Sequence[AuditEntry], checkpoints: Iterable[Checkpoint],
                       public_key: Ed25519PublicKey) -> str | None:
    """None when every checkpoint is genuine and matches the entries; else the first problem, in seq order.

    Run after the chain check (`first_problem`): that one finds edits inside the chain, this one a cut tail.
    """
    hashes = {e.seq: e.hash for e in entries}
    last = max(hashes, default=0)
    kid = key_id(public_key)
    for cp in sorted(checkpoints, key=lambda c: c.seq):
        signed = f"checkpoint signed at {iso_ts(cp.ts_ms)}"
        if not _signature_ok(cp, public_key):
            whose = "" if cp.key_id == kid else f" (it names key {cp.key_id}; this key is {kid})"
            return f"{signed} for #{cp.seq}: the signature does not verify{whose}: forged or edited"
        if cp.seq > last:
            cut = f"entries after #{last} were removed" if last else "every entry was removed"
            return f"{cut}: {signed} covers #{cp.seq}"
        if cp.seq not in hashes:
            return f"entry #{cp.seq} is missing: {signed} covers it"
        if hashes[cp.seq] != cp.hash:
            return (f"entry #{cp.seq} does not match the {signed} (hash {hashes[cp.seq][:16]}..., signed "
                    f"{cp.hash[:16]}...): the chain up to #{cp.seq} was rewritten")
    return None
