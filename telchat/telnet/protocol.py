"""The telnet layer: telnetlib3 does option negotiation; we read raw chunks and hand them on.

No chat state lives here. Each connection gets a Session; this module only moves bytes
between the socket and it, and makes sure every way a connection can end reaches
`Session.finish` exactly once.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Literal, Protocol, cast

import structlog
import telnetlib3
from telnetlib3.fingerprinting import _is_maybe_mud
from telnetlib3.telopt import DO, DONT, ECHO, EOR, GMCP, IAC, MSDP, MSSP, WILL, WONT, name_command

from telchat.obs.logs import get_logger
from telchat.rules import charsets
from telchat.rules.plain import sparse
from telchat.telnet.admission import Address
from telchat.telnet.guard import ConnectionGuard, Guards
from telchat.telnet.internals import (
    SETTLED,
    ChunkReader,
    Corked,
    LeanTelnetWriter,
    OnFirstUse,
    WriterEvents,
    compact,
    shared_defaults,
)

log = get_logger(__name__)

# The way a connection came in: the telnet listener, the TLS one, the web page's WebSocket
# (telnet over it: telchat/web/), or SSH. Each reaches the same ChatTelnetServer.
Door = Literal["telnet", "tls", "web", "ssh"]
# Doors whose input is the client's own bytes: a line there before any telnet answer is a raw
# client's (the SSH door types `login <user>` itself, ahead of its shim's telnet answers).
RAW_DOORS: frozenset[Door] = frozenset({"telnet", "tls"})
# What a malformed subnegotiation is charged to the telnet budget beyond its bytes, in bytes:
# raising and catching its error costs about as much as parsing that many command bytes.
MALFORMED_COST = 64


# What telnetlib3's protocol __init__ (as `protocol_factory` configures it) sets the same for
# every connection, and mostly never changes: `compact` drops each connection's copy. (Its
# negotiation's futures and timer, too, once negotiation is over: `settle`.)
PROTOCOL_DEFAULTS = {
    "_check_later": None,
    "_waiter_connected": SETTLED,
    "waiter_encoding": SETTLED,
    "_compression": None,
    "_connection_lost": False,
    "_echo_negotiated": False,
    "_encoding_errors": "replace",
    "_environ_requested": False,
    "_limit": None,
    "_mccp2_compressor": None,
    "_mccp2_enabled": False,
    "_mccp2_orig_write": None,
    "_mccp2_pending": False,
    "_paused": False,
    "_reader_factory": telnetlib3.TelnetReader,
    "_reader_factory_encoding": ChunkReader,
    "_timer": None,
    "_ttype_count": 1,
    "_writer_factory": telnetlib3.TelnetWriter,
    "_writer_factory_encoding": LeanTelnetWriter,
    "default_encoding": "utf8",
    "door": "telnet",
    "force_binary": True,
    "line_mode": True,
    "never_send_ga": False,
}


class TerminalHooks(Protocol):
    """What a connection tells the terminal over it (clients/terminal.py), and asks it."""

    def timing_mark(self) -> None: ...

    def options_changed(self) -> None: ...

    def resized(self, cols: int) -> None: ...

    def echoes(self) -> bool: ...

    def command(self, cmd: bytes) -> None: ...


@shared_defaults(PROTOCOL_DEFAULTS)
class ChatTelnetServer(telnetlib3.TelnetServer, WriterEvents):
    #: Attributes every instance holds the same (`shared_defaults`, `protocol_factory`).
    shared: Mapping[str, object]
    conn_id = 0
    # Set for clients that never spoke telnet: their bytes (0xFF included) are all text.
    passthrough = False
    _late_checked = False
    #: The terminal over this connection, told what its writer tells (`WriterEvents`).
    hooks: TerminalHooks | None = None
    _malformed_logged = False
    #: The server's connection limits (set by `protocol_factory`), and this connection's.
    guards: Guards | None = None
    guard: ConnectionGuard | None = None
    #: Which door the connection came in by (set by `protocol_factory`).
    door: Door = "telnet"
    #: Set when the connection was counted in at accept already (TLS: before its handshake).
    admitted: Address | None = None
    #: The registered nick its door already proved the user owns (SSH authentication):
    #: the session logs in to it without asking the password.
    proven_nick: str | None = None
    #: A connection carried over a server upgrade: its record (see `carry`); never renegotiated.
    carried: dict[str, Any] | None = None
    #: Where every byte to the client goes (set in connection_made).
    sink: TransportSink
    #: The client's `host:port`, worked out once in connection_made (logs and limits read it often).
    peer = "-"
    # asyncio's FlowControlMixin gives each connection an empty deque (760 bytes) for drain()
    # waiters; nothing here calls drain(), so normally it is never made.
    _drain_waiters = OnFirstUse(deque)

    #: While its writer is being wired up in connection_made (see `_Handlers`).
    wiring = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(reader_factory_encoding=ChunkReader, writer_factory_encoding=LeanTelnetWriter, **kwargs)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        carried = self.carried
        if carried is not None:
            self.conn_id = int(carried["conn_id"])
        self.peer = peer = peer_of(transport)
        if self.guards is not None:
            if carried is None:
                self.conn_id = self.guards.telemetry.next_conn_id()
            else:
                self.admitted = self.guards.carry_in(transport, peer)
            self.guard = self.guards.admit(self, cast(asyncio.Transport, transport), peer, self.admitted)
            if self.guard is None:
                # Refused before any negotiation: telnetlib3 never started, so has nothing to tear down.
                self._closing = True
                return
        self.sink = TransportSink(cast(asyncio.WriteTransport, transport))
        # telnetlib3 registers its handlers on the writer it makes here, the same for every
        # connection: the writer's tables learn them from the first (internals._Handlers).
        self.wiring = True
        try:
            super().connection_made(transport)
        finally:
            del self.wiring
        assert self.writer is not None
        # Line mode never uses simulated SLC; without this telnetlib3 scans input per byte.
        self.writer.slc_simulated = False
        if self.guard is not None:
            self.guard.start()
        if carried is None:
            log.info("connect", conn_id=self.conn_id, peer=peer, transport=self.door)
        else:
            self._take_up(carried)

    def _take_up(self, carried: dict[str, Any]) -> None:
        """Negotiated by the server's previous image: clients do not expect a second
        negotiation, so take up its outcome and start the session at once. Now, not in
        begin_negotiation a turn later: uvloop may read the socket first, and what the
        client sent after the old image stopped must come after what that image carried,
        and never be taken for a new client's first words (`_end_negotiation`)."""
        try:
            _restore(self, carried["telnet"])
        except Exception:
            log.exception("adopt_failed", conn_id=self.conn_id)
            if self._transport is not None:
                self._transport.close()
            return
        self._waiter_connected.set_result(None)

    def begin_negotiation(self) -> None:
        # A carried connection was negotiated by the previous image (`_take_up`).
        if self.carried is None:
            super().begin_negotiation()

    # WriterEvents: what its writer tells it.

    def telnet_sent(self, buf: bytes) -> None:
        self.sink.wrote(buf)

    def timing_mark(self) -> None:
        if self.hooks is not None:
            self.hooks.timing_mark()

    def options_changed(self) -> None:
        if self.hooks is not None:
            self.hooks.options_changed()

    def echoes(self) -> bool:
        return self.hooks is None or self.hooks.echoes()

    def command(self, cmd: bytes) -> None:
        if self.hooks is not None:
            self.hooks.command(cmd)

    def malformed(self, option: bytes, error: Exception) -> None:
        if self.guard is not None:
            self.guard.charge(MALFORMED_COST)
        if not self._malformed_logged:
            self._malformed_logged = True
            log.warning(
                "malformed_subnegotiation",
                conn_id=self.conn_id,
                peer=self.peer,
                option=name_command(option) if option else "-",
                error=repr(error),
                note="logged once per connection",
            )

    def _corked(self) -> Corked:
        """A negotiation step's telnet commands, written at once (one send, not one each)."""
        return Corked(cast(LeanTelnetWriter, self.writer))

    def begin_advanced_negotiation(self) -> None:
        with self._corked():
            super().begin_advanced_negotiation()
            assert self.writer is not None
            # Offered to everyone who speaks telnet: MUD clients accept, terminals refuse.
            for option in (EOR, GMCP, MSSP):
                self.writer.iac(WILL, option)

    def data_received(self, data: bytes) -> None:
        if self.guard is None:
            self.receive(data)
        else:
            self.guard.received(data)

    def receive(self, data: bytes) -> None:
        """Take in bytes the guard lets through (or, unguarded, all of them)."""
        if self.passthrough:
            if self._late_checked or not _late_negotiation(data):
                self._late_checked = True
                assert self.reader is not None
                self.reader.feed_data(data)
                return
            self.passthrough = False
        if self._waiter_connected.done():
            if IAC not in data and self._in_band():
                self._last_received = datetime.datetime.now()  # `idle`: the liveness watchdog's clock
                self._rx_bytes += len(data)
                assert self.reader is not None
                self.reader.feed_data(data)
            else:
                super().data_received(data)
            return
        with self._corked():  # the answers to one chunk of negotiation go out in one write
            super().data_received(data)
        if (
            b"\n" in data
            and self.door in RAW_DOORS
            and not self._waiter_connected.done()
            and client_class(self) == "raw"
        ):
            self._end_negotiation()

    def _in_band(self) -> bool:
        """Whether a chunk without IAC is all text, as telnetlib3 would find byte by byte: not
        inside a command or subnegotiation begun in an earlier chunk, nor compressed (no
        MCCP3), nor the first (its TLS check). Such a chunk (every line, normally) skips
        telnetlib3's per-chunk work: its effects then are the byte count and the idle clock,
        kept here."""
        writer = self.writer
        return (
            writer is not None
            and not (writer.iac_received or writer.cmd_received)
            and self._tls_checked
            and self._mccp3_decompressor is None
            and not writer.slc_simulated
        )

    def _end_negotiation(self) -> None:
        """A client that sent a line without a word of telnet is not going to answer:
        start its session now rather than at --connect-maxwait (telnetlib3's timeout path)."""
        if self._check_later is not None:
            self._check_later.cancel()
            if self._check_later in self._tasks:
                self._tasks.remove(self._check_later)
            self._check_later = None
        if not self.waiter_encoding.done():
            self.waiter_encoding.set_result(False)  # as telnetlib3's final check decides
        self._waiter_connected.set_result(None)

    def _check_negotiation_timer(self) -> None:
        # Under uvloop the check that begin_negotiation queued can still run after
        # connection_lost cancelled it (and the waiter); telnetlib3 would then raise
        # InvalidStateError setting the cancelled waiter. Nothing is left to decide.
        if self._waiter_connected.done():
            return
        with self._corked():
            super()._check_negotiation_timer()
        if self._waiter_connected.done():
            self._check_later = None  # the timer that just ran (its context, too)

    def settle(self) -> None:
        """Negotiation is over: what it left of itself, done, goes (one shared stand-in for
        its futures, none for its timer)."""
        if self._waiter_connected.done() and self.waiter_encoding.done():
            self._waiter_connected = self.waiter_encoding = SETTLED
            self._tasks.clear()
        self._check_later = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.guard is not None:
            self.guard.closed()
        super().connection_lost(exc)

    def on_request_charset(self) -> list[str]:
        return ["UTF-8", "CP1251", "KOI8-R", "ISO-8859-1"]

    def on_naws(self, rows: int, cols: int) -> None:
        super().on_naws(rows, cols)
        if self.hooks is not None:
            self.hooks.resized(cols)


def carry(protocol: ChatTelnetServer) -> dict[str, Any]:
    """The connection's negotiated telnet state and unread input, as plain data (bytes as
    latin-1 text), for the server's next image (`ChatTelnetServer.carried`); what is empty
    (no input or output held, a flag off) left out."""
    writer = protocol.writer
    reader = protocol.reader
    assert writer is not None and reader is not None
    unsent, lost = protocol.sink.unsent()
    state = {
        "local": _options(writer.local_option),
        "remote": _options(writer.remote_option),
        "pending": _options(writer.pending_option),
        # TERM, cols, rows, charset, LANG and the rest that the client told us.
        "extra": {k: v for k, v in protocol._extra.items() if type(v) in _PLAIN},
        "passthrough": protocol.passthrough,
        "late_checked": protocol._late_checked,
        "advanced": protocol._advanced,
        "unread": bytes(reader._buffer).decode("latin-1"),
        # Output the old image's transport still held: the new one writes it first.
        "unsent": unsent.decode("latin-1"),
        "lost": lost,
        "unprocessed": protocol.guard.unprocessed().decode("latin-1") if protocol.guard is not None else "",
    }
    return sparse(state, *_OPTIONAL)


# The values of a connection's extra information that are plain data (others are objects).
_PLAIN = frozenset({str, int, float, bool})
_OPTIONAL = ("passthrough", "late_checked", "advanced", "unread", "unsent", "lost", "unprocessed")


def open_socket(protocol: ChatTelnetServer) -> socket.socket | None:
    """The connection's socket (as its transport shows it), unless it is closing (or never
    got going) or came by another door than plain telnet: the kernel's socket alone does not
    carry a TLS or SSH session, or a WebSocket."""
    transport = protocol._transport
    if transport is None or protocol._closing or transport.is_closing() or protocol.writer is None:
        return None
    if protocol.door != "telnet":
        return None
    sock: socket.socket | None = transport.get_extra_info("socket")
    return sock


def _options(table: dict[bytes, bool]) -> dict[str, bool]:
    return {key.hex(): value for key, value in table.items()}


def _restore(protocol: ChatTelnetServer, state: dict[str, Any]) -> None:
    writer = protocol.writer
    reader = protocol.reader
    assert writer is not None and reader is not None
    for table, name in (
        (writer.local_option, "local"),
        (writer.remote_option, "remote"),
        (writer.pending_option, "pending"),
    ):
        # Past telnetlib3's item assignment, which formats a debug line per option: its
        # one side effect, the change callback, runs once below.
        dict.update(table, {bytes.fromhex(key): value for key, value in state[name].items()})
    writer._check_waiters()
    protocol._extra.update(state["extra"])
    protocol.passthrough = bool(state.get("passthrough"))
    protocol._late_checked = bool(state.get("late_checked"))
    protocol._advanced = bool(state.get("advanced"))
    unsent = str(state.get("unsent", "")).encode("latin-1")
    if unsent:
        protocol.sink.write(unsent)
    unread = str(state.get("unread", "")).encode("latin-1")
    if unread:
        reader.feed_data(unread)
    unprocessed = str(state.get("unprocessed", "")).encode("latin-1")
    if unprocessed:
        protocol.data_received(unprocessed)


def _late_negotiation(data: bytes) -> bool:
    """A telnet client whose answers came after we gave up waiting: parse it as telnet after all."""
    return len(data) >= 3 and data[0] == IAC[0] and data[1] in (DO[0], DONT[0], WILL[0], WONT[0])


def protocol_factory(
    shell: Shell, connect_maxwait: float, guards: Guards | None = None, door: Door = "telnet"
) -> Callable[[], ChatTelnetServer]:
    """telnetlib3's server protocol, configured for a chat server rather than its defaults.

    The listener itself is asyncio's: telnetlib3.create_server cannot set SO_REUSEPORT
    (--workers), and its Server wrapper rescans every client on each accept and keeps the
    last 1000 closed connections (with whatever their readers buffered) alive.
    """

    # What every connection of this listener holds the same: class attributes of its own
    # class, which `compact` then drops from each connection's attribute dict.
    listener = {"shell": shell, "connect_maxwait": connect_maxwait, "guards": guards, "door": door}
    cls = type("ChatTelnetServer", (ChatTelnetServer,), {**listener, "shared": {**ChatTelnetServer.shared, **listener}})

    def factory() -> ChatTelnetServer:
        protocol: ChatTelnetServer = cls(
            shell=shell,
            encoding="utf8",
            # 'strict' (telnetlib3's default) kills the session on one bad byte either way.
            encoding_errors="replace",
            force_binary=True,
            line_mode=True,
            connect_maxwait=connect_maxwait,
            timeout=0,  # no idle kick: lurkers are welcome
        )
        return protocol

    return factory


def peer_of(transport: asyncio.BaseTransport | None) -> str:
    if transport is None:
        return "-"
    return peer_text(transport.get_extra_info("peername"))


def peer_text(peername: Any) -> str:
    """A socket's peer address (as `getpeername` gives it) as host:port, or "-"."""
    if not peername:
        return "-"
    return f"{peername[0]}:{peername[1]}"


class TransportSink:
    """The connection's way out: its transport, written only while it is open, keeping a copy
    of the bytes the transport holds unsent (a slow reader's backlog) for a server upgrade to
    carry over: the transport's buffer dies with the process image, the socket does not."""

    __slots__ = ("_transport", "_unsent")

    def __init__(self, transport: asyncio.WriteTransport) -> None:
        self._transport = transport
        # The last bytes written, at least as many as the transport holds; None while it holds none.
        self._unsent: bytearray | None = None

    def write(self, data: bytes) -> int:
        transport = self._transport
        if transport.is_closing():
            return transport.get_write_buffer_size()
        transport.write(data)
        return self.wrote(data)

    def wrote(self, data: bytes) -> int:
        """Note `data`, just written to the transport (by `write` or the telnet writer's
        commands); return the bytes it holds unsent. A transport sends from the front of its
        buffer, so what it holds is always the last that many bytes written."""
        held = self._transport.get_write_buffer_size()
        unsent = self._unsent
        if not held:
            self._unsent = None
        elif unsent is None:
            self._unsent = bytearray(data[-held:])
        else:
            unsent += data
            del unsent[: max(0, len(unsent) - held)]
        return held

    def buffered(self) -> int:
        return self._transport.get_write_buffer_size()

    def unsent(self) -> tuple[bytes, int]:
        """What the transport holds unsent, and how many bytes of it were written past this
        sink (none are: every write goes through `write` or `wrote`)."""
        held = self._transport.get_write_buffer_size()
        kept = bytes(self._unsent or b"")[-held:] if held else b""
        return kept, held - len(kept)


def negotiated_charset(protocol: telnetlib3.TelnetServer) -> str:
    """The client's charset: NEW_ENVIRON LANG or CHARSET when it told us one we support."""
    lang = protocol.get_extra_info("LANG") or ""
    charset = protocol.get_extra_info("charset") or ""
    return charsets.from_lang(lang) or charsets.resolve(charset) or "utf-8"


# What a client is, decided once negotiation ends (clients/terminal.py treats each its way).
ClientClass = Literal["raw", "telnet", "mud"]


def client_class(protocol: telnetlib3.TelnetServer) -> ClientClass:
    writer = protocol.writer
    # Raw: never answered a single option. A client that refuses everything (WONT/DONT)
    # still speaks telnet, doubles its 0xFF bytes, and must be parsed as telnet.
    if writer is None or not (writer.remote_option or writer.local_option):
        return "raw"
    if writer is not None and (_is_maybe_mud(writer) or _accepted_mud_option(writer)):
        return "mud"
    return "telnet"


def input_hider(protocol: telnetlib3.TelnetServer) -> Callable[[bool], None]:
    """Ask a telnet client to stop echoing what its user types (WILL ECHO: we would echo,
    and echo nothing) or to echo again (WONT ECHO). Raw TCP clients get no telnet bytes."""

    def hide(hidden: bool) -> None:
        writer = protocol.writer
        if writer is not None and not writer.is_closing() and client_class(protocol) != "raw":
            writer.iac(WILL if hidden else WONT, ECHO)

    return hide


def _accepted_mud_option(writer: Any) -> bool:
    """Whether the client took up one of our MUD protocol offers (only MUD clients do)."""
    return any(writer.local_option.enabled(option) for option in (GMCP, MSDP, MSSP))


def log_negotiation(protocol: telnetlib3.TelnetServer, charset: str, klass: ClientClass, mode: str) -> None:
    log.info(
        "negotiated",
        client_class=klass,
        mode=mode,
        term=protocol.get_extra_info("TERM") or protocol.get_extra_info("term"),
        cols=protocol.get_extra_info("cols"),
        rows=protocol.get_extra_info("rows"),
        charset=charset,
        duration=round(protocol.duration, 3),
    )


#: telnetlib3's shell callback, (reader, writer), run as each connection's reading task
#: once negotiation is over: the session runner itself (`shell_started` first), with no
#: adapter coroutine between them, whose frame every connection would hold while it lasts.
Shell = Callable[[Any, Any], Coroutine[Any, Any, None]]


def shell_started(writer: Any) -> tuple[ChatTelnetServer, asyncio.Transport] | None:
    """A shell's start: the connection's protocol and transport, compacted and bound to the
    log context; None if the client left during negotiation."""
    protocol = writer.protocol
    transport = writer.transport
    if protocol is None or transport is None:
        return None
    structlog.contextvars.bind_contextvars(conn_id=protocol.conn_id, peer=protocol.peer, transport=protocol.door)
    # Negotiation is over: what telnetlib3 set up for it and left as it was, the class holds.
    protocol.settle()
    compact(protocol)
    compact(writer)
    return protocol, transport


class Input(Protocol):
    """What reads a connection's in-band bytes: the Session."""

    @property
    def closing(self) -> bool: ...

    def take(self, data: bytes, nudge: Callable[[], None]) -> bool:
        """Handle `data` now, in data_received, or return False to have it read later;
        `nudge` wakes the pump for lines it accepted but left to `catch_up`."""

    async def feed(self, data: bytes) -> None:
        """Handle `data`, read by the pump; may wait."""

    async def catch_up(self) -> None:
        """Handle what `take` accepted but left for the pump."""


Ended = Literal["eof", "error", "closed"]


async def pump(reader: ChunkReader, session: Input, wake: Callable[[], None]) -> Ended | None:
    """Read chunks into `session` until EOF, a connection error, or it closes; return why
    it ended. The session takes what it can as it arrives, in data_received, meanwhile.
    None: nothing is left to read for now, and the reader calls `wake` when there is
    (`ChunkReader.park`): the caller's task ends, and `wake` starts another."""
    reader.take = session.take
    parked = False
    try:
        while not session.closing:
            if reader.park(wake):
                parked = True
                return None
            data = await reader.read_chunk()
            if data is None:
                await session.catch_up()
            elif not data:
                return "eof"
            else:
                await session.feed(data)
    except (ConnectionError, OSError) as exc:
        log.info("connection_error", error=repr(exc))
        return "error"
    finally:
        if not parked:
            reader.take = None
    return "closed"
