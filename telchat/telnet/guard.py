"""Limits below the line layer: who may connect, and what a connection's telnet stream may cost.

telnetlib3 buffers a subnegotiation up to 1 MiB, one deque entry per byte; interprets every
byte of a telnet command in Python; answers some commands (DO of an unknown option,
TIMING-MARK) byte for byte without looking at the send queue; and inflates MCCP3 input
without any bound. So input reaches it in pieces, and between pieces the guard checks the
subnegotiation size, the send queue and MCCP3, and charges pieces that hold telnet commands
to a byte budget: past it, reading pauses (the same fakelag lines get, for telnet traffic).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from typing import Any

from telchat.chat.rooms import host_of
from telchat.config import Config
from telchat.obs.limits import LimitKind
from telchat.obs.telemetry import Telemetry
from telchat.rules.flood import Fakelag
from telchat.telnet.admission import Address, Admission, address_of
from telchat.telnet.gate import Hold, ReadGate

IAC = 0xFF
# Input holding telnet commands is handed to telnetlib3 this much at a time (one piece per
# loop turn), so a limit is overshot by at most one piece; plain text goes through whole.
PIECE = 4096
# The telnet byte budget holds this many seconds' worth at `telnet_rate`.
TELNET_BURST_SECONDS = 4
# While reading is held for the budget, whether the peer left is looked at this often.
PEER_CHECK = 1.0
# A client cut off with a notice gets this long to read it before the socket is dropped.
CLOSE_GRACE = 1.0

# The gate hold for "input received but not yet handed on".
PENDING: Hold = "pending"


class Guards:
    """The connection-level limits of one server."""

    def __init__(self, config: Config, telemetry: Telemetry) -> None:
        self.config = config
        self.telemetry = telemetry
        #: While set (a server upgrade's pause), no connection's input is handed on: each
        #: keeps what it reads, and then reads no more, until `hold_input(False)`.
        self.holding = False
        self.admission = Admission(
            max_connections=config.max_connections,
            max_per_address=config.max_conns_per_ip,
            rate_per_address=config.conn_rate_per_ip,
            burst_per_address=config.conn_burst_per_ip,
            limit_loopback=config.limit_loopback,
        )

    def admit(
        self, protocol: Any, transport: asyncio.Transport, peer: str, admitted: Address | None = None
    ) -> ConnectionGuard | None:
        """Guard an accepted connection, or refuse it with one line and close it (None).

        `admitted`: the connection was counted in already, at accept (TLS, see `count_in`)."""
        address = admitted
        if address is None:
            address = _address(transport, peer)
            refusal = self.admission.admit(address)
            if refusal is not None:
                self.telemetry.limit(refusal.kind, conn_id=protocol.conn_id, peer=peer, transport=protocol.door)
                transport.write(refusal.message.encode() + b"\r\n")
                transport.close()
                return None
        return ConnectionGuard(protocol, transport, self, peer, address)

    def count_in(self, transport: asyncio.BaseTransport, peer: str, listener: str) -> Address | None:
        """Count a connection in at accept, before anything is read from it; None (logged)
        when it is refused. The caller then owns one `release` of the address."""
        address = _address(transport, peer)
        refusal = self.admission.admit(address)
        if refusal is None:
            return address
        self.telemetry.limit(refusal.kind, peer=peer, listener=listener)
        return None

    def carry_in(self, transport: asyncio.BaseTransport | None, peer: str) -> Address:
        """Count in a connection carried over a server upgrade: admitted before, never refused
        (one still dormant, telnet/dormant.py, has no transport yet: its peer says)."""
        address = _address(transport, peer)
        self.admission.admit(address, carried=True)
        return address

    def release(self, address: Address) -> None:
        self.admission.release(address)

    def hold_input(self, held: bool, guards: Iterable[ConnectionGuard] = ()) -> None:
        """Hold every connection's input (`holding`) or let it go on: then each of `guards`
        hands on what it kept meanwhile. One flag, not a hold on each of thousands of sockets."""
        self.holding = held
        if not held:
            for guard in guards:
                guard.go_on()


def _address(transport: asyncio.BaseTransport | None, peer: str) -> Address:
    name = transport.get_extra_info("peername") if transport is not None else None
    return address_of(str(name[0]) if name else host_of(peer))


# Editing keys (control characters and escape sequences, Enter aside) for a line editor.
_CONTROLS = re.compile(b"[\x00-\x09\x0b\x0c\x0e-\x1f\x7f]")


class ConnectionGuard:
    #: The server edits this connection's input line (character mode): input holding editing
    #: keys goes in pieces, one a loop turn, like telnet commands, since each key is work.
    edited = False

    def __init__(
        self, protocol: Any, transport: asyncio.Transport, guards: Guards, peer: str, address: Address
    ) -> None:
        self._protocol = protocol
        self._guards = guards
        self._transport = transport
        self._peer = peer
        # Released once, when the connection closes.
        self._address: Address | None = address
        config = guards.config
        rate = config.telnet_rate
        self._budget = Fakelag(TELNET_BURST_SECONDS * rate, rate) if rate else None
        self._pending = b""
        self._offset = 0
        self._timer: asyncio.TimerHandle | None = None
        self._scheduled = False
        self.gate = ReadGate(transport, on_release=self._schedule)

    def start(self) -> None:
        """telnetlib3 is set up: let its reader pause us when its buffer is full."""
        self._protocol.reader.set_transport(self.gate.handle("backlog"))

    def received(self, data: bytes) -> None:
        """Input from the socket: handed to the protocol's `receive` as the limits allow."""
        if self.gate.closed or self.gate.cut:
            return
        self._pending = self._pending[self._offset :] + data if self._pending else data
        self._offset = 0
        self._work()

    def unprocessed(self) -> bytes:
        """Input received but not yet handed on (a server upgrade carries it over)."""
        return self._pending[self._offset :]

    def closed(self) -> None:
        self.gate.close()
        self._pending = b""
        if self._timer is not None:
            self._timer.cancel()
        if self._address is not None:
            self._guards.release(self._address)
            self._address = None

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._resume)

    def _resume(self) -> None:
        self._scheduled = False
        if self._pending and self.gate.peer_gone():
            # Input waits here only while this client is held back; its excess leaves with it.
            self._pending = b""
            self.gate.drop()
            return
        self._work()

    def _work(self) -> None:
        """Hand pending input to telnetlib3 while nothing holds reading, one costly piece a turn.

        While input is pending the socket is not read: what waits here is one receive's worth.
        """
        process = self._protocol.receive
        gate, guards = self.gate, self._guards
        while self._pending and not (gate.held(PENDING) or gate.closed or gate.cut or guards.holding):
            costly = self._protocol.writer.is_oob
            piece = self._next_piece(costly)
            costly = costly or IAC in piece
            process(piece)
            if self._over_limit():
                return
            if costly:
                self.charge(len(piece))
            if self._pending and (costly or (self.edited and _CONTROLS.search(piece) is not None)):
                # Everyone else gets a turn before the next piece of telnet commands (or of
                # editing keys, which the line editor charges itself).
                self._schedule()
                break
        if self._pending:
            self.gate.hold(PENDING)
        else:
            self.gate.release(PENDING)

    def go_on(self) -> None:
        """Input was held for every connection (`Guards.hold_input`): hand on what was kept."""
        if self._pending:
            self._schedule()

    def _next_piece(self, in_command: bool) -> bytes:
        data, start = self._pending, self._offset
        end = len(data)
        if end - start > PIECE and (
            in_command or data.find(IAC, start) >= 0 or (self.edited and _CONTROLS.search(data, start) is not None)
        ):
            end = start + PIECE
        if end == len(data):
            self._pending, self._offset = b"", 0
        else:
            self._offset = end
        return data[start:end] if start or end < len(data) else data

    def _over_limit(self) -> bool:
        sb_bytes = self._protocol.writer.subnegotiation_bytes()
        config = self._guards.config
        if sb_bytes > (most := config.max_subneg_bytes):
            self._cut("subnegotiation", f"*** Telnet subnegotiation over {most} bytes; disconnecting.")
        elif getattr(self._protocol, "_mccp3_decompressor", None) is not None:
            self._cut("compression", "*** Compressed input (MCCP3) is not supported; disconnecting.")
        elif self._transport.get_write_buffer_size() > config.sendq_bytes:
            self._cut("sendq", None)
        else:
            return False
        return True

    def _cut(self, kind: LimitKind, notice: str | None) -> None:
        self.gate.cut = kind
        self._pending = b""
        self._guards.telemetry.limit(
            kind,
            conn_id=self._protocol.conn_id,
            peer=self._peer,
            transport=self._protocol.door,
            subneg_bytes=self._protocol.writer.subnegotiation_bytes(),
            sendq=self._transport.get_write_buffer_size(),
        )
        if notice is None:
            self.gate.drop()
            return
        self._transport.write(notice.encode() + b"\r\n")
        self._transport.close()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(CLOSE_GRACE, self.gate.drop)

    def charge(self, cost: int) -> None:
        """Take `cost` bytes from the telnet budget: telnet commands, and work done on
        this connection's behalf that is as costly (line editing keys)."""
        if self._budget is None:
            return
        delay, begins = self._budget.take(cost)
        if begins:
            self._guards.telemetry.limit("telnet_flood", conn_id=self._protocol.conn_id, peer=self._peer)
        if delay > 0:
            self.gate.hold("telnet")
            self._wait_out(delay)

    def _wait_out(self, delay: float) -> None:
        """Keep reading held `delay` seconds (the debt so far: a later charge replaces an
        earlier wait), looking every so often for a peer that has left meanwhile."""
        if self._timer is not None:
            self._timer.cancel()
        step = min(delay, PEER_CHECK)
        self._timer = asyncio.get_running_loop().call_later(step, self._waited, delay - step)

    def _waited(self, left: float) -> None:
        self._timer = None
        if self.gate.peer_gone():
            self.gate.drop()
        elif left > 0:
            self._wait_out(left)
        else:
            self.gate.release("telnet")
