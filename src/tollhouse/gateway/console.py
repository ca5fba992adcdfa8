"""The style the exemption workflow's pages share (until they move to the console's templates)."""

from __future__ import annotations

STYLE = """body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}
td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left}th{background:#f4f4f4}
.num{text-align:right;font-variant-numeric:tabular-nums}"""
