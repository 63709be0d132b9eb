"""What the kernel may hold for a connection: its send buffer, capped.

Left alone, Linux grows a socket's send buffer up to `tcp_wmem`'s maximum (4 MiB by
default) for a peer that reads slowly, and the sendq counts only what Python holds: one
stalled reader could pin megabytes of kernel memory, ten thousand of them the machine's.
`--max-sndbuf` fixes the buffer instead (Linux doubles the figure for its bookkeeping and
stops autotuning it), so a connection's unread output is at most the sendq plus that.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket


def cap_send_buffer(transport: asyncio.BaseTransport, size: int) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
