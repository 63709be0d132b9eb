"""The telnet layer: telnetlib3 does option negotiation; we read raw chunks and hand them on.

No chat state lives here. Each connection gets a Session; this module only moves bytes
between the socket and it, and makes sure every way a connection can end reaches
`Session.finish` exactly once.
"""

from __future__ import annotations

import asyncio
import codecs
import itertools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, cast

import structlog
import telnetlib3
from telnetlib3.fingerprinting import _is_maybe_mud
from telnetlib3.stream_reader import TelnetReader, TelnetReaderUnicode

from telchat.logs import get_logger
from telchat.telnetguard import ConnectionGuard, Guards

log = get_logger("telchat.protocol")

READ_CHUNK = 65536
SUPPORTED_CHARSETS = ("utf-8", "cp1251", "koi8-r", "latin-1")

_conn_ids = itertools.count(1)


class ChunkReader(TelnetReaderUnicode):
    """telnetlib3's reader, plus raw-chunk reads: we split and decode lines ourselves."""

    async def read_chunk(self, n: int = READ_CHUNK) -> bytes:
        return await TelnetReader.read(self, n)


class ChatTelnetServer(telnetlib3.TelnetServer):
    conn_id = 0
    #: The server's connection limits, set on a per-server subclass by `guarded`.
    guards: Guards | None = None
    guard: ConnectionGuard | None = None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(reader_factory_encoding=ChunkReader, **kwargs)

    @classmethod
    def guarded(cls, guards: Guards) -> type[ChatTelnetServer]:
        # telnetlib3 wants a class to instantiate, so the limits ride on a subclass.
        return type(cls.__name__, (cls,), {"guards": guards})

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn_id = next(_conn_ids)
        if self.guards is not None:
            self.guard = self.guards.admit(self, cast(asyncio.Transport, transport), peer_of(transport))
            if self.guard is None:
                # Refused before any negotiation: telnetlib3 never started, so has nothing to tear down.
                self._closing = True
                return
        super().connection_made(transport)
        assert self.writer is not None
        # Line mode never uses simulated SLC; without this telnetlib3 scans input per byte.
        self.writer.slc_simulated = False
        if self.guard is not None:
            self.guard.start()
        log.info("connect", conn_id=self.conn_id, peer=peer_of(transport))

    def data_received(self, data: bytes) -> None:
        if self.guard is None:
            super().data_received(data)
        else:
            self.guard.received(data, super().data_received)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.guard is not None:
            self.guard.closed()
        super().connection_lost(exc)


def peer_of(transport: asyncio.BaseTransport | None) -> str:
    if transport is None:
        return "-"
    peer = transport.get_extra_info("peername")
    if not peer:
        return "-"
    return f"{peer[0]}:{peer[1]}"


class TransportSink:
    """The Outbox's way out: a transport, written only while it is open."""

    __slots__ = ("_transport",)

    def __init__(self, transport: asyncio.WriteTransport) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        if not self._transport.is_closing():
            self._transport.write(data)

    def buffered(self) -> int:
        return self._transport.get_write_buffer_size()


def negotiated_charset(protocol: telnetlib3.TelnetServer) -> str:
    try:
        name = codecs.lookup(str(protocol.encoding(incoming=True))).name
    except LookupError:
        return "utf-8"
    aliases = {"iso8859-1": "latin-1", "ascii": "utf-8"}
    name = aliases.get(name, name)
    return name if name in SUPPORTED_CHARSETS else "utf-8"


def client_class(protocol: telnetlib3.TelnetServer) -> str:
    if not protocol.negotiation_should_advance():
        return "raw"
    if protocol.writer is not None and _is_maybe_mud(protocol.writer):
        return "mud"
    return "telnet"


def log_negotiation(protocol: telnetlib3.TelnetServer, charset: str) -> None:
    log.info(
        "negotiated",
        client_class=client_class(protocol),
        term=protocol.get_extra_info("TERM") or protocol.get_extra_info("term"),
        cols=protocol.get_extra_info("cols"),
        rows=protocol.get_extra_info("rows"),
        charset=charset,
        duration=round(protocol.duration, 3),
    )


SessionRunner = Callable[[ChunkReader, ChatTelnetServer, asyncio.Transport], Awaitable[None]]
Shell = Callable[[Any, Any], Coroutine[Any, Any, None]]


def make_shell(run: SessionRunner) -> Shell:
    """Adapt telnetlib3's (reader, writer) shell callback to our session runner."""

    async def shell(reader: Any, writer: Any) -> None:
        protocol = writer.protocol
        transport = writer.transport
        if protocol is None or transport is None:  # the client left during negotiation
            return
        structlog.contextvars.bind_contextvars(conn_id=protocol.conn_id, peer=peer_of(transport))
        await run(reader, protocol, transport)

    return shell


async def pump(reader: ChunkReader, feed: Callable[[bytes], Awaitable[None]], stop: Callable[[], bool]) -> str:
    """Read chunks into `feed` until EOF, a connection error, or `stop()`; return why it ended."""
    try:
        while not stop():
            data = await reader.read_chunk()
            if not data:
                return "eof"
            await feed(data)
    except (ConnectionError, OSError) as exc:
        log.info("connection_error", error=repr(exc))
        return "error"
    return "closed"
