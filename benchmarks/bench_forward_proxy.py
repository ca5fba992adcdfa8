#!/usr/bin/env python3
"""Forward-proxy mode (issue 21): what interception costs, how fast TLS sessions start, what a tunnel carries.

One `tollhouse serve` (uvloop) with `forward_proxy` on, in front of `tollhouse mock-provider`:
1. Added latency of an intercepted call vs the base-URL path: the same chat completion (gpt-4o-mini, 5 tokens)
   sent sequentially, interleaved call by call, (a) to http://gateway/openai/v1/... on a keep-alive connection,
   (b) to https://api.openai.com/v1/... through HTTPS_PROXY on a keep-alive TLS connection (one CONNECT, one
   handshake), (c) as (b) with a new CONNECT and TLS handshake per call (a client that does not pool).
2. TLS handshakes per second: end to end (CONNECT + handshake + close, sequential, leaf cached), and in process
   (a memory-BIO handshake with the cached server context vs a leaf minted and loaded for every handshake).
3. Tunnel throughput: bytes from and to a local TCP server directly vs through a CONNECT tunnel.

    python benchmarks/bench_forward_proxy.py [--calls 400] [--megabytes 256] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench_gateway import HOST, free_port, gateway_config, start_gateway, start_mock, stop_service
from tollhouse.forward.ca import LeafCache, load_or_create

Json = dict[str, Any]
BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}],
                   "max_tokens": 5}).encode()
HEADERS = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}


def pct(values: list[float]) -> Json:
    values = sorted(values)

    def at(p: float) -> float:
        return round(values[min(len(values) - 1, int(p * len(values)))] * 1000, 3)

    return {"p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99),
            "mean_ms": round(statistics.fmean(values) * 1000, 3), "n": len(values)}


def _call(conn: http.client.HTTPConnection, path: str) -> float:
    started = time.perf_counter()
    conn.request("POST", path, BODY, HEADERS)
    resp = conn.getresponse()
    resp.read()
    if resp.status != 200:
        raise RuntimeError(f"{path}: {resp.status}")
    return time.perf_counter() - started


def latency(gw_port: int, proxy_port: int, ca: str, calls: int) -> Json:
    ctx = ssl.create_default_context(cafile=ca)
    base = http.client.HTTPConnection(HOST, gw_port, timeout=30)
    pooled = http.client.HTTPSConnection(HOST, proxy_port, timeout=30, context=ctx)
    pooled.set_tunnel("api.openai.com", 443)
    out: dict[str, list[float]] = {"base_url": [], "intercepted_keepalive": [], "intercepted_new_connection": []}
    for _ in range(20):  # warm-up
        _call(base, "/openai/v1/chat/completions")
        _call(pooled, "/v1/chat/completions")
    for _ in range(calls):
        out["base_url"].append(_call(base, "/openai/v1/chat/completions"))
        out["intercepted_keepalive"].append(_call(pooled, "/v1/chat/completions"))
        fresh = http.client.HTTPSConnection(HOST, proxy_port, timeout=30, context=ctx)
        fresh.set_tunnel("api.openai.com", 443)
        out["intercepted_new_connection"].append(_call(fresh, "/v1/chat/completions"))
        fresh.close()
    base.close()
    pooled.close()
    summary = {k: pct(v) for k, v in out.items()}
    for k in ("intercepted_keepalive", "intercepted_new_connection"):
        summary[k]["added_p50_ms"] = round(summary[k]["p50_ms"] - summary["base_url"]["p50_ms"], 3)
        summary[k]["added_mean_ms"] = round(summary[k]["mean_ms"] - summary["base_url"]["mean_ms"], 3)
    return summary


def handshakes_e2e(proxy_port: int, ca: str, n: int) -> Json:
    ctx = ssl.create_default_context(cafile=ca)
    started = time.perf_counter()
    for _ in range(n):
        sock = socket.create_connection((HOST, proxy_port))
        sock.sendall(b"CONNECT api.openai.com:443 HTTP/1.1\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        tls = ctx.wrap_socket(sock, server_hostname="api.openai.com")
        tls.close()
    elapsed = time.perf_counter() - started
    return {"handshakes": n, "per_s": round(n / elapsed, 1), "ms_each": round(elapsed / n * 1000, 3)}


def _memory_handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="api.openai.com")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done_c = done_s = False
    while not (done_c and done_s):
        for obj, done, out, peer_in in ((client, done_c, c_out, s_in), (server, done_s, s_out, c_in)):
            if not done:
                try:
                    obj.do_handshake()
                    if obj is client:
                        done_c = True
                    else:
                        done_s = True
                except ssl.SSLWantReadError:
                    pass
            data = out.read()
            if data:
                peer_in.write(data)


def handshakes_in_process(n: int) -> Json:
    with tempfile.TemporaryDirectory() as tmp:
        ca = load_or_create(Path(tmp), ["api.openai.com"])
        client_ctx = ssl.create_default_context(cafile=str(ca.files.cert))
        cache = LeafCache(ca, 16)
        results: Json = {}
        for label, server_ctx in (("leaf_cached", lambda: cache.context("api.openai.com")),
                                  ("leaf_minted_each_time", lambda: ca.server_context("api.openai.com"))):
            _memory_handshake(server_ctx(), client_ctx)
            started = time.perf_counter()
            for _ in range(n):
                _memory_handshake(server_ctx(), client_ctx)
            elapsed = time.perf_counter() - started
            results[label] = {"per_s": round(n / elapsed, 1), "ms_each": round(elapsed / n * 1000, 3)}
        started = time.perf_counter()
        for _ in range(n):
            ca.server_context("api.openai.com")
        results["mint_only_ms"] = round((time.perf_counter() - started) / n * 1000, 3)
        return results


class ByteServer:
    """'down N\\n': sends N bytes; 'up N\\n': reads N bytes, answers 'ok\\n'."""

    def __init__(self) -> None:
        self.sock = socket.create_server((HOST, 0))
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            line = b""
            while not line.endswith(b"\n"):
                line += conn.recv(1)
            verb, size = line.split()
            n = int(size)
            block = b"x" * (1 << 20)
            if verb == b"down":
                while n > 0:
                    conn.sendall(block[:min(n, len(block))])
                    n -= min(n, len(block))
            else:
                while n > 0:
                    n -= len(conn.recv(1 << 20))
                conn.sendall(b"ok\n")


def _open(port: int, proxy_port: int | None) -> socket.socket:
    if proxy_port is None:
        return socket.create_connection((HOST, port))
    sock = socket.create_connection((HOST, proxy_port))
    sock.sendall(f"CONNECT {HOST}:{port} HTTP/1.1\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.decode())
    return sock


def throughput(server: ByteServer, proxy_port: int | None, size: int) -> Json:
    out: Json = {}
    with _open(server.port, proxy_port) as sock:
        sock.sendall(f"down {size}\n".encode())
        started, got = time.perf_counter(), 0
        while got < size:
            got += len(sock.recv(1 << 20))
        out["download_MBps"] = round(size / (time.perf_counter() - started) / 1e6, 1)
    with _open(server.port, proxy_port) as sock:
        block = b"y" * (1 << 20)
        started = time.perf_counter()
        sock.sendall(f"up {size}\n".encode())
        sent = 0
        while sent < size:
            sock.sendall(block)
            sent += len(block)
        assert sock.recv(3) == b"ok\n"
        out["upload_MBps"] = round(size / (time.perf_counter() - started) / 1e6, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--handshakes", type=int, default=300)
    parser.add_argument("--megabytes", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        mock_port, gw_port, proxy_port = free_port(), free_port(), free_port()
        mock = start_mock(mock_port, work)
        gw = start_gateway(gw_port, gateway_config(mock_port, {"forward_proxy": {"port": proxy_port}}), work)
        try:
            ca = str(work / "gateway-data" / "forward-proxy" / "ca.pem")
            results: Json = {"latency": latency(gw_port, proxy_port, ca, args.calls),
                             "handshakes_end_to_end": handshakes_e2e(proxy_port, ca, args.handshakes)}
            server = ByteServer()
            size = args.megabytes << 20
            throughput(server, None, 8 << 20)  # warm-up
            results["tunnel"] = {"direct": throughput(server, None, size),
                                 "through_tunnel": throughput(server, proxy_port, size), "megabytes": args.megabytes}
        finally:
            stop_service(gw)
            stop_service(mock)
    results["handshakes_in_process"] = handshakes_in_process(args.handshakes)
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "forward-proxy.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "forward-proxy.md").write_text(render(results, args))
    print(render(results, args))


def render(r: Json, args: argparse.Namespace) -> str:
    lat, m = r["latency"], r["machine"]
    lines = [
        "# Forward-proxy mode: added latency, TLS handshakes, tunnel throughput", "",
        f"`python benchmarks/bench_forward_proxy.py --calls {args.calls} --handshakes {args.handshakes} "
        f"--megabytes {args.megabytes}` on {m['cpus']} CPUs shared with other work (1-minute load average "
        f"{m['load_before']} before, {m['load_after']} after), Python {m['python']}. One `tollhouse serve` (uvloop) "
        "with `forward_proxy` on, in front of `tollhouse mock-provider`; client and servers on the same machine.", "",
        "## Added latency of an intercepted call (sequential, interleaved call by call)", "",
        "| path | p50 ms | p90 ms | p99 ms | mean ms | added p50 ms | added mean ms |", "|---|---|---|---|---|---|---|",
    ]
    for key, label in (("base_url", "base URL (http://gateway/openai/v1, keep-alive)"),
                       ("intercepted_keepalive", "intercepted (HTTPS_PROXY, TLS keep-alive)"),
                       ("intercepted_new_connection", "intercepted, new CONNECT + TLS handshake per call")):
        v = lat[key]
        lines.append(f"| {label} | {v['p50_ms']} | {v['p90_ms']} | {v['p99_ms']} | {v['mean_ms']} | "
                     f"{v.get('added_p50_ms', '')} | {v.get('added_mean_ms', '')} |")
    e2e, inproc, t = r["handshakes_end_to_end"], r["handshakes_in_process"], r["tunnel"]
    lines += [
        "", "## TLS handshakes", "",
        f"- End to end (CONNECT, 200, TLS handshake with a cached leaf, close; sequential): **{e2e['per_s']}/s** "
        f"({e2e['ms_each']} ms each).",
        "- In process (memory BIO, client and server in one thread): leaf cached "
        f"**{inproc['leaf_cached']['per_s']}/s** "
        f"({inproc['leaf_cached']['ms_each']} ms); leaf minted and loaded for every handshake "
        f"**{inproc['leaf_minted_each_time']['per_s']}/s** ({inproc['leaf_minted_each_time']['ms_each']} ms); minting "
        f"alone (sign + load into a context) {inproc['mint_only_ms']} ms.",
        "", f"## Tunnel throughput ({t['megabytes']} MiB each way, one connection)", "",
        "| | download MB/s | upload MB/s |", "|---|---|---|",
        f"| direct | {t['direct']['download_MBps']} | {t['direct']['upload_MBps']} |",
        f"| through the CONNECT tunnel | {t['through_tunnel']['download_MBps']} | "
        f"{t['through_tunnel']['upload_MBps']} |", "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
