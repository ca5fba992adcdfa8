"""`tollhouse install --forward-proxy`: the machine's tools sent through the agent's CONNECT proxy.

Writes, under the install root:
- `etc/tollhouse/forward-proxy-ca.pem`: the CA's certificate (NODE_EXTRA_CA_CERTS: Node adds it to its roots);
- `etc/tollhouse/forward-proxy-ca-bundle.pem`: the system's roots plus ours (SSL_CERT_FILE, REQUESTS_CA_BUNDLE,
  CURL_CA_BUNDLE replace the trust store rather than add to it, so they get both);
- `etc/profile.d/tollhouse-forward-proxy.sh` (login shells) and `etc/tollhouse/forward-proxy.env` (KEY=VALUE, for
  systemd `EnvironmentFile=`, launchd or an MDM profile): HTTPS_PROXY, NO_PROXY and the CA variables.
The CA itself is made (or kept) in the agent's data directory, its key readable by the agent's user only.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tollhouse.config import ForwardProxyConfig
from tollhouse.forward.ca import CAError, load_or_create

DEFAULT_PORT = 8789
LOOPBACK = "127.0.0.1,localhost,::1"


@dataclass(frozen=True, slots=True)
class ProxyFiles:
    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "etc" / "tollhouse" / "forward-proxy-ca.pem"

    @property
    def bundle(self) -> Path:
        return self.root / "etc" / "tollhouse" / "forward-proxy-ca-bundle.pem"

    @property
    def profile(self) -> Path:
        return self.root / "etc" / "profile.d" / "tollhouse-forward-proxy.sh"

    @property
    def env_file(self) -> Path:
        return self.root / "etc" / "tollhouse" / "forward-proxy.env"

    def all(self) -> tuple[Path, ...]:
        return self.ca, self.bundle, self.profile, self.env_file


def tool_environment(files: ProxyFiles, port: int) -> dict[str, str]:
    """What a tool's environment needs to go through the proxy and trust its CA."""
    proxy = f"http://127.0.0.1:{port}"
    bundle = str(files.bundle)
    return {"HTTPS_PROXY": proxy, "https_proxy": proxy, "NO_PROXY": LOOPBACK, "no_proxy": LOOPBACK,
            "NODE_EXTRA_CA_CERTS": str(files.ca), "SSL_CERT_FILE": bundle, "REQUESTS_CA_BUNDLE": bundle,
            "CURL_CA_BUNDLE": bundle}


def _chown_to(user: str | None, paths: tuple[Path, ...]) -> list[str]:
    if not user or user == "root":
        return []
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        return [f"no account {user!r}: the forward-proxy CA key stays owned by root, and the agent cannot read "
                "it until the account exists and install is re-run"]
    for path in paths:
        os.chown(path, account.pw_uid, account.pw_gid)
    return []


Write = Callable[[Path, bytes, int], object]


def install_forward_proxy(root: Path, data_dir: Path, port: int, user: str | None, chown: bool,
                          write: Write) -> tuple[dict[str, str], list[str]]:
    """Make (or keep) the CA in `data_dir` and write the files above with `write(path, content, mode)`.
    Returns the tools' environment and notes. Raises CAError."""
    ca = load_or_create(data_dir, ForwardProxyConfig().intercept, reissue=False)
    notes = _chown_to(user, (ca.files.directory, ca.files.key, ca.files.cert, ca.files.bundle)) if chown else []
    files = ProxyFiles(root)
    env = tool_environment(files, port)
    write(files.ca, ca.pem, 0o644)
    write(files.bundle, ca.files.bundle.read_bytes(), 0o644)
    write(files.profile, ("# Tollhouse forward proxy: AI tools go through the agent (tollhouse install "
                          "--forward-proxy)\n" + "".join(f"export {k}={v}\n" for k, v in env.items())).encode(), 0o644)
    write(files.env_file, "".join(f"{k}={v}\n" for k, v in env.items()).encode(), 0o644)
    notes.append(f"forward proxy on 127.0.0.1:{port}: new login shells get HTTPS_PROXY and the CA from "
                 f"{files.profile}; desktop apps and services need {files.env_file} in their environment "
                 "(launchd, systemd EnvironmentFile=, or your MDM)")
    return env, notes


__all__ = ["DEFAULT_PORT", "CAError", "ProxyFiles", "install_forward_proxy", "tool_environment"]
