"""The kinds of limit that fire, and the reasons a connection ends (Telemetry.limit reports them).

Kinds (docs/RELIABILITY.md describes each): line_length, unterminated_input, flood, sendq,
subnegotiation, telnet_flood, compression, max_connections, conns_per_ip, conn_rate;
docs/OPERATIONS.md adds login_failures and banned_address (accounts and moderation), and
web_origin and web_frame (the web door, telchat/web/).
"""

from __future__ import annotations

from typing import Literal

LIMITS_COUNTER = "limits"

LimitKind = Literal[
    "line_length",
    "unterminated_input",
    "flood",
    "sendq",
    "subnegotiation",
    "telnet_flood",
    "compression",
    "max_connections",
    "conns_per_ip",
    "conn_rate",
    "login_failures",
    "banned_address",
    "web_origin",
    "web_frame",
    "tls_handshake",
    "metrics_connections",
]

# Why a connection ended: the `reason` of its `disconnect` event and counter. The reading
# loop's own ends (eof, error, closed), the session's, and the limit that cut it, if one did.
EndReason = Literal[
    "eof",
    "error",
    "closed",
    "quit",
    "kicked",
    "readq",
    "sendq",
    "ping_timeout",
    "http",
    "shutdown",
    "upgrade",
    LimitKind,
]
