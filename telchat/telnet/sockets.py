"""What the kernel may hold for a connection: its send buffer, capped.

Left alone, Linux grows a socket's send buffer up to `tcp_wmem`'s maximum (4 MiB by
default) for a peer that reads slowly, and the sendq counts only what Python holds: one
stalled reader could pin megabytes of kernel memory, ten thousand of them the machine's.
`--max-sndbuf` fixes the buffer instead (Linux doubles the figure for its bookkeeping and
stops autotuning it), so a connection's unread output is at most the sendq plus that.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable
from typing import Any

from telchat.telnet.liveness import enable_keepalive


def tune_listener(sockets: Iterable[Any], max_sndbuf: int) -> None:
    """Set what every connection's socket needs on a door's listening `sockets`, once: its
    send buffer capped, and TCP keepalive. An accepted socket starts with its listener's
    options (Linux and the BSDs), so no connection pays five setsockopt calls for them, and
    one carried over an upgrade keeps them."""
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, max_sndbuf)
        enable_keepalive(sock)
