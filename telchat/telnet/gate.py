"""Read flow control for one connection: stop reading while anything says so.

Several parts of the server may want a connection's reading paused at once (fakelag while
a line waits its turn, telnetlib3's reader when its buffer is full, the telnet guard when
commands come too fast). Each holds the gate under its own name; the socket is read again
only when no hold is left. While nothing is read the kernel's buffers fill and the sender
blocks: backpressure instead of memory.

A paused socket reports no EOF, so whoever holds input back asks the kernel directly whether
the peer has hung up: a flooder that leaves takes its unprocessed excess with it, instead of
going on speaking its backlog for hours.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import struct
from collections.abc import Callable
from typing import Literal, get_args

from telchat.obs.limits import LimitKind

# Peer hung up, reset, or (Linux) shut down its sending side: seen without reading a byte.
_HANGUP = select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0)


# Who holds reading: fakelag (a line waits its turn with the input limit reached), telnetlib3's
# reader ("backlog": its buffer is full), and the telnet guard ("pending": input not yet
# handed on; "telnet": commands come faster than --telnet-rate).
Hold = Literal["flood", "backlog", "pending", "telnet"]
# The holds on a connection are bits of one int: an empty set per connection is 216 bytes.
_BIT: dict[Hold, int] = {name: 1 << i for i, name in enumerate(get_args(Hold))}


class ReadGate:
    __slots__ = ("_closed", "_holds", "_on_release", "_transport", "_wake", "cut")

    def __init__(self, transport: asyncio.Transport, on_release: Callable[[], None] | None = None) -> None:
        self._transport = transport
        # Called soon after any hold is released, paused or not: its owner may have input waiting.
        self._on_release = on_release
        self._holds = 0  # `_BIT`s
        self._closed = False
        # What sleepers wait on, made by the first sleep: an asyncio.Event per connection
        # would cost 1 KiB (its deque) that most connections never use.
        self._wake: asyncio.Future[None] | None = None
        #: Why the connection layer cut this connection, if it did.
        self.cut: LimitKind | None = None

    @property
    def paused(self) -> bool:
        return bool(self._holds)

    def held(self, besides: Hold) -> bool:
        """Is reading held for any reason other than `besides`?"""
        return bool(self._holds & ~_BIT[besides])

    @property
    def closed(self) -> bool:
        return self._closed

    def hold(self, name: Hold) -> None:
        if not self._holds and not self.closed:
            self._transport.pause_reading()
        self._holds |= _BIT[name]

    def release(self, name: Hold) -> None:
        bit = _BIT[name]
        if not self._holds & bit:
            return
        self._holds &= ~bit
        if self.closed:
            return
        if not self._holds:
            self._transport.resume_reading()
        if self._on_release is not None:
            asyncio.get_running_loop().call_soon(self._on_release)

    def close(self) -> None:
        """The connection is gone: wake every sleeper."""
        self._holds = 0
        self._closed = True
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def sleep(self, seconds: float, hold: Hold | None) -> bool:
        """Sleep, with reading held under `hold` unless it is None; False (early, if need be)
        when the peer is gone."""
        if self.peer_gone():
            return False
        if hold is not None:
            self.hold(hold)
        if self._wake is None:
            self._wake = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait((self._wake,), timeout=seconds)
        finally:
            if hold is not None:
                self.release(hold)
        return not self.peer_gone()

    def peer_gone(self) -> bool:
        if self.closed:
            return True
        sock = self._transport.get_extra_info("socket")
        if sock is None:
            return False
        poller = select.poll()
        poller.register(sock.fileno(), _HANGUP)
        return bool(poller.poll(0))

    def drop(self) -> None:
        """Close now, discarding what is queued, in the kernel too: a reset, not a FIN that
        would wait (for minutes) behind output the peer is not reading."""
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._transport.abort()

    def handle(self, name: Hold) -> Handle:
        """A stand-in transport for code that pauses and resumes reading by itself."""
        return Handle(self, name)


class Handle:
    """What telnetlib3's reader takes for its transport: its pauses become one named hold."""

    __slots__ = ("_gate", "_name")

    def __init__(self, gate: ReadGate, name: Hold) -> None:
        self._gate = gate
        self._name = name

    def pause_reading(self) -> None:
        self._gate.hold(self._name)

    def resume_reading(self) -> None:
        self._gate.release(self._name)
