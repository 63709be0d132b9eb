"""The load generator's clients for scripts/bench.py: telnet-refusing line readers that send
numbered, timestamped messages and check every one they receive.

A message's text is `~SENDER SEQ SENT_NS PADDING`; SENT_NS is `time.perf_counter_ns()` in
this process just before the write, so a delivery's latency is its arrival time (taken once
per received chunk) minus SENT_NS. Each receiver tracks, per sender, the next sequence
number it expects: anything else is a gap (a later arrival fills it: reordered), or a repeat
(duplicate). Whatever is still missing at the end is loss.

Parsing every delivery in Python costs the generator more than relaying it costs a server, so
at high fan-out only a sample of receivers (`Member.checked`) parse each line; the others
count message markers in C (`bytes.count`), which still shows loss, and extra deliveries,
exactly, just not which message or how late (a sender counts its own marker apart, to keep
its window).
"""

from __future__ import annotations

import asyncio
import re
import socket
from array import array
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from time import perf_counter_ns
from typing import Any, cast

import aiohttp

GREETING = b"*** Welcome to telchat. Type help for commands."
MARK = b"> ~"
IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240
# One telnet command, or the unfinished start of one at the end of the data.
TELNET_COMMAND = re.compile(rb"\xff(?:\xff|[\xfb-\xfe].?|\xfa.*?(?:\xff\xf0|\Z)|[^\xfa-\xff]|\Z)", re.DOTALL)
MAX_PARTIAL_LINE = 65536
# Connect, greeting, login and join of one client, together.
CONNECT_TIMEOUT = 10.0
# Linux's IP_BIND_ADDRESS_NO_PORT: pick the source port at connect(), per destination.
BIND_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


@dataclass
class Recorder:
    """Everything the generator measures during one server's run, shared by its clients."""

    delivered: int = 0
    # Socket reads: deliveries per read shows how well a server batches its writes.
    reads: int = 0
    other_lines: int = 0
    closed_by_server: int = 0
    # Latencies (ns) of messages sent within [window_start, window_end).
    window_start: int = 0
    window_end: int = 0
    latencies: array[int] = field(default_factory=lambda: array("q"))
    greetings: list[int] = field(default_factory=list)
    # TCP connect times (ns): socket connect() to its completion.
    connects: list[int] = field(default_factory=list)
    sending: bool = False
    # Open loop: senders refill their window as their own messages come back.
    open_loop: bool = False
    clients: list[Client] = field(default_factory=list)

    def close_all(self) -> None:
        for client in self.clients:
            client.close()
        self.clients.clear()


@dataclass(frozen=True)
class Member:
    """One client to set up: who it is, where it sits, whether it sends (sender >= 0)."""

    nick: str
    room: str
    sender: int = -1
    # Parse and check every delivery; otherwise only count them while traffic runs.
    checked: bool = True


class Client(asyncio.Protocol):
    def __init__(self, rec: Recorder, member: Member, started: int, window: int = 0, pad: bytes = b"") -> None:
        self.rec = rec
        self.member = member
        self.started = started
        self.sender = member.sender
        self.window = window
        self.pad = pad
        self.seq = 0
        self.in_flight = 0
        self.messages = 0
        self.duplicates = 0
        self.reordered = 0
        self.counting = False
        self._carry = b""
        self._own_mark = MARK
        self.transport: asyncio.Transport | None = None
        self.closing = False
        self._buf = b""
        self._telnet_tail = b""
        self._next: dict[int, int] = {}
        self._gaps: dict[int, set[int]] = {}
        self._expect: bytes | None = GREETING
        self._arrived: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports do not subclass asyncio's.
        self.transport = cast(asyncio.Transport, transport)
        self.rec.clients.append(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closing:
            self.rec.closed_by_server += 1
        if not self._arrived.done():
            self._arrived.set_exception(ConnectionError(f"closed while waiting for {self._expect!r}"))

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    async def command(self, line: str, reply: str) -> None:
        """Send `line`, then wait until the server says `reply` to us."""
        self._expect = reply.encode()
        self._arrived = asyncio.get_running_loop().create_future()
        self.write_line(line.encode())
        await self.reply()

    async def reply(self) -> None:
        """Wait for the line this client expects next (at first, the greeting)."""
        await self._arrived

    def write_line(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data + b"\r\n")

    # sending

    def send_message(self) -> None:
        assert self.transport is not None
        self.transport.write(b"~%d %d %d %s\r\n" % (self.sender, self.seq, perf_counter_ns(), self.pad))
        self.seq += 1
        self.in_flight += 1

    def refill(self) -> None:
        while self.in_flight < self.window and self.rec.sending:
            self.send_message()

    # receiving

    def count_only(self) -> None:
        """From now on only count deliveries (call before any message is on its way)."""
        self.counting = True
        self._own_mark = MARK + b"%d " % self.sender
        self._carry = self._buf[-len(self._own_mark) + 1 :]

    def data_received(self, data: bytes) -> None:
        now = perf_counter_ns()
        self.rec.reads += 1
        if self._telnet_tail or b"\xff" in data:
            data = self._strip_telnet(self._telnet_tail + data)
        if self.counting:
            self._count(data)
            return
        lines = (self._buf + data).split(b"\r\n") if self._buf else data.split(b"\r\n")
        self._buf = lines.pop()
        if len(self._buf) > MAX_PARTIAL_LINE:
            raise RuntimeError(f"server sent {len(self._buf)} bytes without a line end")
        rec = self.rec
        start, end, latencies = rec.window_start, rec.window_end, rec.latencies
        expected = self._next
        own = self.sender
        messages = 0
        for line in lines:
            at = line.find(MARK)
            if at < 0:
                self._control(line, now)
                continue
            messages += 1
            fields = line[at + 3 :].split(b" ", 3)
            sender, seq, sent = int(fields[0]), int(fields[1]), int(fields[2])
            if expected.get(sender, 0) == seq:
                expected[sender] = seq + 1
            else:
                self._out_of_order(sender, seq)
            if start <= sent < end:
                latencies.append(now - sent)
            if sender == own:
                self.in_flight -= 1
        self.messages += messages
        rec.delivered += messages
        if own >= 0 and rec.open_loop:
            self.refill()

    def _count(self, data: bytes) -> None:
        messages = data.count(MARK) + straddling(self._carry, data, MARK)
        self.messages += messages
        self.rec.delivered += messages
        if self.sender >= 0:
            self.in_flight -= data.count(self._own_mark) + straddling(self._carry, data, self._own_mark)
            if self.rec.open_loop:
                self.refill()
        keep = len(self._own_mark) - 1
        self._carry = data[-keep:] if len(data) >= keep else (self._carry + data)[-keep:]

    def _out_of_order(self, sender: int, seq: int) -> None:
        expected = self._next.get(sender, 0)
        if seq > expected:
            self._gaps.setdefault(sender, set()).update(range(expected, seq))
            self._next[sender] = seq + 1
            return
        gaps = self._gaps.get(sender)
        if gaps is not None and seq in gaps:
            gaps.discard(seq)
            self.reordered += 1
        else:
            self.duplicates += 1

    def _control(self, line: bytes, now: int) -> None:
        if line != self._expect:
            self.rec.other_lines += 1
            return
        if line == GREETING:
            self.rec.greetings.append(now - self.started)
        self._expect = None
        if not self._arrived.done():
            self._arrived.set_result(None)

    def _strip_telnet(self, data: bytes) -> bytes:
        """Drop telnet commands, refusing every option the server asks for or offers."""
        self._telnet_tail = b""
        return TELNET_COMMAND.sub(self._answer, data)

    def _answer(self, match: re.Match[bytes]) -> bytes:
        command = match.group()
        unfinished = len(command) == 1 or (command[1] in (DO, DONT, WILL, WONT) and len(command) == 2)
        unfinished = unfinished or (command[1] == SB and not command.endswith(b"\xff\xf0"))
        if unfinished and match.end() == len(match.string):
            self._telnet_tail = command
            return b""
        if command[1] == IAC:
            return b"\xff"
        if command[1] in (DO, WILL) and self.transport is not None:
            self.transport.write(bytes((IAC, WONT if command[1] == DO else DONT, command[2])))
        return b""


def straddling(before: bytes, data: bytes, needle: bytes) -> int:
    """How many `needle`s start in `before` and end in `data` (without copying `data`)."""
    overlap = len(needle) - 1
    return (before[-overlap:] + data[:overlap]).count(needle) if overlap else 0


@dataclass(frozen=True)
class Dial:
    """How clients connect: to where, from which loopback addresses, how many at once."""

    address: tuple[str, int]
    sources: Sequence[str] = ("127.0.0.1",)
    concurrency: int = 50
    # Open loop: messages each sender keeps in flight; and the padding that sizes a message.
    window: int = 0
    pad: bytes = b""
    # Through the web door instead: telnet over a WebSocket (telchat --web-port), as its page speaks it.
    websocket: bool = False


class WebSocketLink(asyncio.Transport):
    """A Client's transport over an aiohttp WebSocket: each loop turn's writes go as one
    binary message, each message received is handed to the Client as socket data would be."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse, client: Client) -> None:
        super().__init__()
        self._session, self._ws, self._client = session, ws, client
        self._out = bytearray()
        self._closing = False
        self._tasks: set[asyncio.Future[None]] = set()
        self._reader = self._spawn(self._read())

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out += data

    def _flush(self) -> None:
        data, self._out = bytes(self._out), bytearray()
        if not self._closing:
            # aiohttp writes the frame in the task's first step: tasks keep the write order.
            self._spawn(self._ws.send_bytes(data))

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Future[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _read(self) -> None:
        try:
            async for message in self._ws:
                if message.type is aiohttp.WSMsgType.BINARY:
                    self._client.data_received(message.data)
        finally:
            self._client.connection_lost(None)
            await self._session.close()

    def is_closing(self) -> bool:
        return self._closing

    def abort(self) -> None:
        self._closing = True
        self._spawn(self._ws.close())

    close = abort


async def connect_websocket(rec: Recorder, member: Member, dial: Dial, source: str) -> Client:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(source, 0), limit=0))
    started = perf_counter_ns()
    try:
        host, port = dial.address
        ws = await session.ws_connect(f"http://{host}:{port}/telnet", protocols=("telnet.mudstandards.org",))
    except BaseException:
        await session.close()
        raise
    client = Client(rec, member, started, dial.window, dial.pad)
    client.connection_made(WebSocketLink(session, ws, client))
    return client


async def connect(rec: Recorder, member: Member, dial: Dial, source: str) -> Client:
    """Connect from `source`, wait for the greeting, log in and join; return the client."""
    if dial.websocket:
        return await _log_in(await connect_websocket(rec, member, dial, source), member)
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, BIND_NO_PORT, 1)
        sock.bind((source, 0))
        sock.setblocking(False)
        started = perf_counter_ns()
        await loop.sock_connect(sock, dial.address)
        rec.connects.append(perf_counter_ns() - started)
        _, client = await loop.create_connection(
            lambda: Client(rec, member, started, dial.window, dial.pad),
            sock=sock,
        )
    except BaseException:
        sock.close()
        raise
    return await _log_in(client, member)


async def _log_in(client: Client, member: Member) -> Client:
    try:
        await client.reply()
        if member.nick:
            await client.command(f"login {member.nick}", f"*** User change nick anonymous --> {member.nick}")
        if member.room:
            await client.command(f"join {member.room}", f"*** User {member.nick} joined room #{member.room}")
    except BaseException:
        client.close()
        raise
    return client


async def connect_all(rec: Recorder, members: Sequence[Member], dial: Dial) -> tuple[list[Client], list[str]]:
    """Set up every member, `dial.concurrency` at a time; return the clients and the errors."""
    gate = asyncio.Semaphore(dial.concurrency)

    async def one(index: int, member: Member) -> Client:
        async with gate, asyncio.timeout(CONNECT_TIMEOUT):
            return await connect(rec, member, dial, dial.sources[index % len(dial.sources)])

    results = await asyncio.gather(*(one(i, m) for i, m in enumerate(members)), return_exceptions=True)
    clients = [r for r in results if isinstance(r, Client)]
    errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    return clients, errors
