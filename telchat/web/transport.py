"""A WebSocket that looks like a socket to the telnet layer.

The browser speaks telnet (the `telnet.mudstandards.org` subprotocol: every message is a
piece of the telnet byte stream), so a `ChatTelnetServer` runs over it unchanged. It only
needs an `asyncio.Transport`: this one turns writes into binary messages and pausing into
not reading messages, and reports the client's real address.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import web


class WebSocketTransport(asyncio.Transport):
    """Writes are queued and sent by one task, one message per batch: a loop turn's output
    (the Flusher writes each client once a turn) is one WebSocket message."""

    def __init__(self, ws: web.WebSocketResponse, tcp: asyncio.Transport, peer: tuple[str, int]) -> None:
        super().__init__()
        self._ws = ws
        self._tcp = tcp
        self._peer = peer
        self._out = bytearray()
        self._wake = asyncio.Event()
        # Set while messages may be read: reading allowed, or the connection is going.
        self._go = asyncio.Event()
        self._go.set()
        self._closing = False
        self._protocol: asyncio.BaseProtocol | None = None
        self._sender = asyncio.create_task(self._send())

    # What the telnet layer calls.

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._closing:
            self._out += data
            self._wake.set()

    def get_write_buffer_size(self) -> int:
        # Queued here, plus what the socket under the WebSocket has not sent yet.
        return len(self._out) + self._tcp.get_write_buffer_size()

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Send what is queued, then close the WebSocket."""
        self._closing = True
        self._wake.set()
        self._go.set()

    def abort(self) -> None:
        self._closing = True
        self._out.clear()
        self._sender.cancel()
        self._go.set()
        self._tcp.abort()

    def pause_reading(self) -> None:
        if not self._closing:
            self._go.clear()

    def resume_reading(self) -> None:
        self._go.set()

    def is_reading(self) -> bool:
        return self._go.is_set()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        # The socket is the real one (TCP keepalive, hang-up checks and resets work on it);
        # the peer is the browser's address, which behind a proxy is not the socket's.
        if name == "peername":
            return self._peer
        return self._tcp.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    # What the WebSocket handler calls.

    async def readable(self) -> bool:
        """Wait until a message may be read; False once the connection is closing."""
        await self._go.wait()
        return not self._closing

    async def closed(self) -> None:
        """Wait until everything queued is sent and the WebSocket is closed."""
        with contextlib.suppress(asyncio.CancelledError):
            await self._sender

    async def _send(self) -> None:
        ws = self._ws
        try:
            while not (self._closing and not self._out):
                await self._wake.wait()
                self._wake.clear()
                if self._out:
                    data = bytes(self._out)
                    self._out.clear()
                    await ws.send_bytes(data)  # waits while the socket's buffer is full
            await ws.close()
        except (ConnectionError, RuntimeError):
            # The browser is gone (aiohttp raises either as the socket closes under it).
            self._closing = True
            self._go.set()
            self._tcp.abort()
