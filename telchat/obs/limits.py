"""Reporting a limit that fired: one structured `limit` event and one counter, always both.

Kinds (docs/RELIABILITY.md describes each): line_length, unterminated_input, flood, sendq,
subnegotiation, telnet_flood, compression, max_connections, conns_per_ip, conn_rate;
docs/OPERATIONS.md adds login_failures and banned_address (accounts and moderation).
"""

from __future__ import annotations

from typing import Any

from telchat.obs.counters import COUNTERS
from telchat.obs.logs import get_logger

log = get_logger(__name__)

LIMITS_COUNTER = "limits"


def hit(kind: str, *, level: str = "warning", **fields: Any) -> None:
    COUNTERS.inc(LIMITS_COUNTER, kind=kind)
    getattr(log, level)("limit", kind=kind, **fields)
