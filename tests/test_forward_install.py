"""`tollhouse install --forward-proxy` and `tollhouse ca export`: the machine's tools sent through the proxy."""

from __future__ import annotations

import os
import ssl
import stat
import subprocess
import sys
from pathlib import Path

from cryptography import x509

from tollhouse.agent.install import InstallOptions, Layout, install, uninstall
from tollhouse.agent.managed_env import parse_env
from tollhouse.agent.runner import gateway_settings
from tollhouse.agent.settings import resolve
from tollhouse.config import parse_settings
from tollhouse.forward.ca import load_or_create, permitted_hosts, system_roots


def _install(prefix: Path, **kw: object) -> object:
    return install(InstallOptions(prefix=prefix, python="/opt/tollhouse/bin/python", forward_proxy=True,
                                  **kw), is_root=False)  # type: ignore[arg-type]


def test_install_forward_proxy_writes_the_environment_and_the_trust(tmp_path: Path) -> None:
    result = _install(tmp_path)
    root = tmp_path.resolve()
    managed = parse_env(Layout(tmp_path).managed_file.read_text())
    assert managed["TOLLHOUSE_FORWARD_PROXY_PORT"] == "8789"
    env = parse_env((root / "etc/tollhouse/forward-proxy.env").read_text())
    ca_pem, bundle = root / "etc/tollhouse/forward-proxy-ca.pem", root / "etc/tollhouse/forward-proxy-ca-bundle.pem"
    assert env == {"HTTPS_PROXY": "http://127.0.0.1:8789", "https_proxy": "http://127.0.0.1:8789",
                   "NO_PROXY": "127.0.0.1,localhost,::1", "no_proxy": "127.0.0.1,localhost,::1",
                   "NODE_EXTRA_CA_CERTS": str(ca_pem), "SSL_CERT_FILE": str(bundle),
                   "REQUESTS_CA_BUNDLE": str(bundle), "CURL_CA_BUNDLE": str(bundle)}
    profile = (root / "etc/profile.d/tollhouse-forward-proxy.sh").read_text()
    assert f"export NODE_EXTRA_CA_CERTS={ca_pem}\n" in profile
    # the bundle: the system's roots and ours; a context built from it trusts both
    system = system_roots().strip()
    assert bundle.read_bytes().strip().startswith(system) and bundle.read_bytes().endswith(ca_pem.read_bytes())
    ctx = ssl.create_default_context(cafile=str(bundle))
    subjects = [dict(x[0] for x in c["subject"]).get("commonName") for c in ctx.get_ca_certs()]
    assert "Tollhouse forward-proxy CA" in subjects and len(subjects) > 10
    # the key stays in the data dir, 0600; the certificate is constrained to the intercepted hosts
    key = root / "var/lib/tollhouse/forward-proxy/ca-key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(ca_pem.read_bytes())
    assert permitted_hosts(cert) == ("api.anthropic.com", "api.openai.com", "generativelanguage.googleapis.com")
    assert any(line.startswith("export HTTPS_PROXY=") for line in result.tool_exports())  # type: ignore[attr-defined]
    # idempotent: a second run changes nothing
    again = _install(tmp_path)
    assert {c.action for c in again.changes} <= {"unchanged", "kept"}  # type: ignore[attr-defined]
    # uninstall removes what it wrote; the data dir (with the CA key) is kept
    actions = {c.path: c.action for c in uninstall(tmp_path, purge=False, is_root=False)}
    assert actions[ca_pem] == "removed" and not (root / "etc/profile.d/tollhouse-forward-proxy.sh").exists()
    assert key.exists()


def test_the_agent_runs_the_proxy_the_managed_file_names(tmp_path: Path) -> None:
    effective = resolve({}, {"TOLLHOUSE_FORWARD_PROXY_PORT": "8799"}, None, "alice")
    settings = gateway_settings(parse_settings({}, "(test)"), effective)
    assert settings.forward_proxy.port == 8799 and settings.identity.default_user == "alice"
    assert gateway_settings(parse_settings({}, "(test)"), resolve({}, {}, None, "alice")).forward_proxy.port is None


def test_ca_export_prints_the_certificate_and_reissues_when_the_intercept_list_changes(tmp_path: Path) -> None:
    config = tmp_path / "tollhouse.yaml"
    config.write_text("forward_proxy: {port: 0}\n")
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-m", "tollhouse", "ca", "export", "-c", str(config), "--data-dir",
                          str(tmp_path / "data")], capture_output=True, env=env, timeout=60, check=True)
    cert = x509.load_pem_x509_certificate(out.stdout)
    assert out.stdout == (tmp_path / "data/forward-proxy/ca.pem").read_bytes()
    assert "api.openai.com" in permitted_hosts(cert)
    # ca export never re-issues the certificate a running proxy uses (its list is the proxy's config's)
    narrower = tmp_path / "narrower.yaml"
    narrower.write_text("forward_proxy: {port: 0, intercept: [api.openai.com]}\n")
    again = subprocess.run([sys.executable, "-m", "tollhouse", "ca", "export", "-c", str(narrower), "--data-dir",
                            str(tmp_path / "data")], capture_output=True, env=env, timeout=60, check=True)
    assert again.stdout == out.stdout
    ca = load_or_create(tmp_path / "data", ["api.openai.com", "*.openai.azure.com"])
    assert ca.hosts == (".openai.azure.com", "api.openai.com")
    assert ca.cert.public_key() == cert.public_key()  # same key, new constraints
    assert ca.permits("eastus.openai.azure.com") and not ca.permits("api.anthropic.com")
