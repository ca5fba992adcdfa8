"""The `limits:` section of the configuration as the wire server and client take it."""

from __future__ import annotations

from tollhouse.config import LimitsConfig
from tollhouse.wire.limits import ClientLimits, ServerLimits

__all__ = ["client_limits", "server_limits"]


def server_limits(cfg: LimitsConfig) -> ServerLimits:
    return ServerLimits(max_header_bytes=cfg.max_header_bytes, max_headers=cfg.max_headers,
                        head_timeout_s=cfg.head_timeout_s, body_timeout_s=cfg.body_timeout_s,
                        idle_timeout_s=cfg.idle_timeout_s, write_timeout_s=cfg.write_timeout_s,
                        max_connections=cfg.max_connections)


def client_limits(cfg: LimitsConfig) -> ClientLimits:
    return ClientLimits(max_header_bytes=cfg.max_header_bytes, max_headers=cfg.max_headers,
                        max_response_bytes=cfg.max_response_bytes, total_timeout_s=cfg.upstream_total_timeout_s,
                        stream_total_timeout_s=cfg.stream_total_timeout_s)
