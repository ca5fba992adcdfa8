"""How long a real `codex exec` takes through the forward proxy, this tree against another commit's, in one run.

Codex's built-in openai provider (no base URL, HTTPS_PROXY and the proxy's CA bundle) opens a Responses WebSocket to
api.openai.com first. Only an HTTP 426 makes it switch to HTTPS at once; any other failure costs it five attempts
with back-off. The two gateways run side by side in front of one `tollhouse mock-provider`, and the runs alternate
between them. Prints each run's seconds, the medians, and the events each gateway recorded per run.

    PYTHONPATH=src python benchmarks/codex_forward_proxy.py --base-src <worktree of the other commit>/src [--runs 5]

Needs the Codex CLI that scripts/test installs (.cache/npm-tools) or `--codex PATH`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_gateway import (
    ADMIN_TOKEN,
    HOST,
    Service,
    free_port,
    gateway_config,
    http_get,
    start_gateway,
    start_mock,
    stop_service,
)

ROOT = Path(__file__).resolve().parent.parent
CODEX = ROOT / ".cache" / "npm-tools" / "node_modules" / ".bin" / "codex"


def proxy_of(port: int) -> tuple[int, str]:
    """The forward proxy's port and CA bundle, from the gateway's /healthz."""
    status, body = http_get(f"http://{HOST}:{port}/healthz")
    info = json.loads(body)["forward_proxy"]
    assert status == 200, body
    return int(info["port"]), str(info["ca_bundle"])


def run_codex(codex: Path, proxy_port: int, ca_bundle: str, home: Path) -> float:
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_text('model = "gpt-4o-mini"\n')  # the built-in openai provider
    proxy = f"http://{HOST}:{proxy_port}"
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "CODEX_HOME": str(codex_home),
           "OPENAI_API_KEY": "sk-bench", "HTTPS_PROXY": proxy, "https_proxy": proxy, "SSL_CERT_FILE": ca_bundle,
           "NO_PROXY": "", "no_proxy": ""}
    started = time.perf_counter()
    done = subprocess.run([str(codex), "exec", "--skip-git-repo-check", "-C", str(home), "Say hello"], env=env,
                          cwd=home, capture_output=True, timeout=120, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0 or b"lorem ipsum" not in done.stdout + done.stderr:
        raise RuntimeError(f"codex failed ({done.returncode}): {(done.stdout + done.stderr)[-2000:]!r}")
    return elapsed


def events_of(port: int) -> list[dict[str, object]]:
    status, body = http_get(f"http://{HOST}:{port}/api/v1/events?limit=1000",
                            {"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert status == 200, body
    found: list[dict[str, object]] = json.loads(body)["events"]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-src", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--codex", type=Path, default=CODEX)
    args = parser.parse_args()
    if not args.codex.exists():
        sys.exit(f"{args.codex} is missing: scripts/test installs the Codex CLI there, or pass --codex PATH")
    with tempfile.TemporaryDirectory(prefix="tollhouse-codex-") as tmp:
        work = Path(tmp)
        mock_port = free_port()
        services: list[Service] = [start_mock(mock_port, work)]
        try:
            gateways: dict[str, tuple[int, int, str]] = {}
            for name, src in (("new", None), ("base", args.base_src)):
                port = free_port()
                config = gateway_config(mock_port, {"identity": {"default_user": "alice"},
                                                    "forward_proxy": {"port": free_port()}})
                services.append(start_gateway(port, config, work, name, src=src))
                gateways[name] = (port, *proxy_of(port))
            times: dict[str, list[float]] = {name: [] for name in gateways}
            for i in range(args.runs):
                for name, (_, proxy_port, bundle) in gateways.items():
                    seconds = run_codex(args.codex, proxy_port, bundle, work / f"home-{name}-{i}")
                    times[name].append(seconds)
                    print(f"run {i + 1} {name:4} {seconds:6.2f} s", flush=True)
            print(f"codex exec through the forward proxy, {args.runs} runs each, alternating")
            for name, (port, _, _) in gateways.items():
                events = events_of(port)
                statuses: dict[str, int] = {}
                for e in events:
                    statuses[str(e["status"])] = statuses.get(str(e["status"]), 0) + 1
                print(f"  {name:4} median {statistics.median(times[name]):6.2f} s  min {min(times[name]):6.2f} s  "
                      f"max {max(times[name]):6.2f} s  events per run {len(events) / args.runs:.1f} "
                      f"(by status: {statuses})")
            ratio = statistics.median(times["new"]) / statistics.median(times["base"])
            print(f"new/base median {ratio:.3f}")
        finally:
            for service in reversed(services):
                stop_service(service)


if __name__ == "__main__":
    main()
