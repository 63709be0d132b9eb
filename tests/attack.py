"""A blocking-socket attacker: floods from a thread, so its own buffers stay out of the
server's memory figures, and reads with plain recv, which still returns what arrived before
a reset (asyncio's reader drops it)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct


class Attacker:
    def __init__(self, port: int, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", port))
        # Refuse TTYPE at once: the attacker speaks telnet, so its IAC bytes are parsed as
        # telnet. (A client that never answers negotiation is raw: its bytes are all text.)
        self.sock.sendall(bytes([255, 252, 24]))
        self.sock.settimeout(10)
        self._flood: asyncio.Task[None] | None = None

    @classmethod
    def joined(cls, port: int, nick: str, room: str = "room", rcvbuf: int | None = None) -> Attacker:
        attacker = cls(port, rcvbuf)
        attacker.sock.sendall(f"login {nick}\r\njoin {room}\r\n".encode())
        return attacker

    def _send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(data)

    def flood(self, data: bytes) -> asyncio.Task[None]:
        """Send `data` in the background, for as long as the server takes it."""
        self._flood = asyncio.create_task(asyncio.to_thread(self._send, data))
        return self._flood

    async def send_and_read_all(self, data: bytes) -> bytes:
        """Send `data` (or what the server takes of it), then everything the server said."""
        await asyncio.to_thread(self._send, data)
        return await asyncio.to_thread(self._read_all)

    async def read_until(self, marker: bytes) -> bytes:
        return await asyncio.to_thread(self._read_until, marker)

    def _read_until(self, marker: bytes) -> bytes:
        received = b""
        while marker not in received:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"closed before {marker!r}; got {received!r}")
            received += chunk
        return received

    def _read_all(self) -> bytes:
        received = b""
        with contextlib.suppress(OSError):
            while chunk := self.sock.recv(65536):
                received += chunk
        return received

    async def reset(self) -> None:
        """Vanish with a RST; a plain close would queue its FIN behind unsent data."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a flooding thread blocked in send
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()
        if self._flood is not None:
            await self._flood
