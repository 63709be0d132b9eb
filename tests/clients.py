"""Test clients that talk to a real server over real sockets.

RawClient refuses every telnet option (as a strict-but-minimal client would) and strips
IAC sequences from what it reads; TelnetClient is telnetlib3's own client, negotiating.
Both expose the same line API, so a test can run against either.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import unicodedata
from typing import Any

import telnetlib3

IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240
TIMEOUT = 3.0


class LineClient:
    """Line-oriented reading over some byte source; subclasses supply `_recv`."""

    def __init__(self) -> None:
        self.buffer = b""
        self.closed = False

    async def _recv(self) -> bytes:
        raise NotImplementedError

    async def send(self, text: str) -> None:
        await self.send_bytes(text.encode() + b"\r\n")

    async def send_bytes(self, data: bytes) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def _fill(self, timeout: float) -> bool:
        try:
            data = await asyncio.wait_for(self._recv(), timeout)
        except TimeoutError:
            return False
        if not data:
            self.closed = True
            return False
        self.buffer += data
        return True

    async def read_line_bytes(self, timeout: float = TIMEOUT) -> bytes:
        """One line including its CRLF, exactly as sent (telnet commands removed)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while b"\r\n" not in self.buffer:
            remaining = deadline - loop.time()
            if remaining <= 0 or not await self._fill(remaining):
                if self.closed and b"\r\n" not in self.buffer:
                    raise EOFError(f"connection closed; unread: {self.buffer!r}")
                if b"\r\n" not in self.buffer:
                    raise TimeoutError(f"no line within {timeout}s; unread: {self.buffer!r}")
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line + b"\r\n"

    async def read_line(self, timeout: float = TIMEOUT, encoding: str = "utf-8") -> str:
        return (await self.read_line_bytes(timeout)).decode(encoding)[:-2]

    async def expect(self, *lines: str) -> None:
        for want in lines:
            got = await self.read_line()
            assert got == want, f"expected {want!r}, got {got!r}"

    async def read_until(self, prefix: str, timeout: float = TIMEOUT) -> list[str]:
        """Lines up to and including the first one starting with `prefix`."""
        seen: list[str] = []
        while True:
            line = await self.read_line(timeout)
            seen.append(line)
            if line.startswith(prefix):
                return seen

    async def drain(self, quiet: float = 0.15) -> list[str]:
        """Every line that arrives until the connection is quiet for `quiet` seconds."""
        lines: list[str] = []
        while True:
            try:
                lines.append(await self.read_line(quiet))
            except (TimeoutError, EOFError):
                return lines

    async def wait_closed(self, timeout: float = TIMEOUT) -> bytes:
        """Read until the server closes the connection; return what came before."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError("server did not close the connection")
            await self._fill(remaining)
        return self.buffer

    async def login(self, nick: str) -> None:
        await self.send(f"login {nick}")
        await self.read_until(f"*** User change nick anonymous --> {nick}")

    async def join(self, room: str, nick: str) -> list[str]:
        await self.send(f"join {room}")
        return await self.read_until(f"*** User {nick} joined room #{room.lstrip('#')}")


class RawClient(LineClient):
    """A TCP client that answers every DO with WONT and every WILL with DONT."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__()
        self.reader = reader
        self.writer = writer
        self._pending = b""
        self.commands: list[tuple[int, int]] = []

    @classmethod
    async def connect(cls, port: int, greet: bool = True) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        if greet:
            await client.expect("*** Welcome to telchat. Type help for commands.")
        return client

    async def _recv(self) -> bytes:
        # Loop past chunks that held only telnet commands: an empty result would mean EOF.
        while True:
            data = await self.reader.read(65536)
            if not data:
                return b""
            text = self._strip_telnet(self._pending + data)
            if text:
                return text

    def _strip_telnet(self, data: bytes) -> bytes:
        out = bytearray()
        i = 0
        self._pending = b""
        while i < len(data):
            byte = data[i]
            if byte != IAC:
                out.append(byte)
                i += 1
                continue
            if i + 1 >= len(data):
                self._pending = data[i:]
                break
            cmd = data[i + 1]
            if cmd == IAC:
                out.append(IAC)
                i += 2
            elif cmd in (DO, DONT, WILL, WONT):
                if i + 2 >= len(data):
                    self._pending = data[i:]
                    break
                self._refuse(cmd, data[i + 2])
                i += 3
            elif cmd == SB:
                end = data.find(bytes([IAC, SE]), i)
                if end < 0:
                    self._pending = data[i:]
                    break
                self._subnegotiation(data[i + 2 : end].replace(bytes([IAC, IAC]), bytes([IAC])))
                i = end + 2
            else:
                self.commands.append((cmd, 0))
                i += 2
        return bytes(out)

    def _subnegotiation(self, payload: bytes) -> None:
        """IAC SB <payload> IAC SE from the server; ignored here."""

    def _refuse(self, cmd: int, opt: int) -> None:
        self.commands.append((cmd, opt))
        if cmd == DO:
            self.writer.write(bytes([IAC, WONT, opt]))
        elif cmd == WILL:
            self.writer.write(bytes([IAC, DONT, opt]))

    async def send_bytes(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


class TelnetClient(LineClient):
    """telnetlib3's client: negotiates like a real telnet program."""

    def __init__(self, reader: Any, writer: Any) -> None:
        super().__init__()
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, greet: bool = True, **kwargs: Any) -> TelnetClient:
        kwargs.setdefault("encoding", False)
        reader, writer = await telnetlib3.open_connection(
            "127.0.0.1", port, connect_minwait=0.0, connect_maxwait=0.5, **kwargs
        )
        client = cls(reader, writer)
        if greet:
            await client.expect("*** Welcome to telchat. Type help for commands.")
        return client

    async def _recv(self) -> bytes:
        data = await self.reader.read(65536)
        return data if isinstance(data, bytes) else data.encode()

    async def send_bytes(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()


GMCP, MSSP, TTYPE, EOR_OPT, TM, ECHO, SGA, NAWS, BINARY = 201, 70, 24, 25, 6, 1, 3, 31, 0
EOR, GA = 239, 249


class OptionClient(RawClient):
    """A client that accepts some telnet options and refuses the rest, as real programs do.

    It reports `TERMINAL` for TTYPE and `SIZE` for NAWS, and keeps every GMCP message
    (package, data) and MSSP variable table it is sent.
    """

    TERMINAL = b"XTERM"
    SIZE = (132, 43)
    ACCEPT_DO = frozenset({TTYPE, TM, NAWS})  # server's DO x: we answer WILL x
    ACCEPT_WILL = frozenset({BINARY})  # server's WILL x: we answer DO x

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.gmcp: list[tuple[str, Any]] = []
        self.mssp: list[dict[str, str]] = []

    def _refuse(self, cmd: int, opt: int) -> None:
        if cmd == DO and opt in self.ACCEPT_DO:
            self.commands.append((cmd, opt))
            self.writer.write(bytes([IAC, WILL, opt]))
            if opt == NAWS:
                cols, rows = self.SIZE
                self.writer.write(bytes([IAC, SB, NAWS, 0, cols, 0, rows, IAC, SE]))
        elif cmd == WILL and opt in self.ACCEPT_WILL:
            self.commands.append((cmd, opt))
            self.writer.write(bytes([IAC, DO, opt]))
        else:
            super()._refuse(cmd, opt)

    def _subnegotiation(self, payload: bytes) -> None:
        option, body = payload[0], payload[1:]
        if option == TTYPE:
            self.writer.write(bytes([IAC, SB, TTYPE, 0]) + self.TERMINAL + bytes([IAC, SE]))
        elif option == GMCP:
            package, _, data = body.decode().partition(" ")
            self.gmcp.append((package, json.loads(data) if data else None))
        elif option == MSSP:
            pairs = [item.split(b"\x02", 1) for item in body.split(b"\x01") if item]
            self.mssp.append({key.decode(): value.decode() for key, value in pairs})


class TermClient(OptionClient):
    """A telnet terminal as inetutils telnet is: lets the server echo and suppress go-ahead."""

    ACCEPT_WILL = frozenset({BINARY, ECHO, SGA})


class MudClient(OptionClient):
    """A MUD client as Mudlet is: TTYPE "MUDLET", accepts GMCP, MSSP and EOR, never server echo."""

    TERMINAL = b"MUDLET"
    ACCEPT_WILL = frozenset({BINARY, GMCP, MSSP, EOR_OPT})

    def send_gmcp(self, package: str, data: Any = None) -> None:
        payload = package.encode() + (b" " + json.dumps(data).encode() if data is not None else b"")
        self.writer.write(bytes([IAC, SB, GMCP]) + payload + bytes([IAC, SE]))

    async def gmcp_message(self, package: str, timeout: float = TIMEOUT) -> Any:
        """The data of the next unread GMCP message named `package` (reading text as needed)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for index, (name, data) in enumerate(self.gmcp):
                if name == package:
                    del self.gmcp[: index + 1]
                    return data
            if loop.time() > deadline:
                raise TimeoutError(f"no GMCP {package}; got {self.gmcp}")
            await self._fill(0.05)


async def registered_member(port: int, nick: str, password: str, room: str) -> RawClient:
    """A RawClient logged in as `nick`, registered with `password`, in `room`."""
    client = await RawClient.connect(port)
    await client.login(nick)
    await client.send(f"register {password}")
    await client.read_until(f"*** Nick {nick} is now registered")
    await client.join(room, nick)
    return client


async def logged_session(port: int, room: str) -> RawClient:
    """Two users doing what produces each everyday log event: logins, a join, a message, a
    private message, an overlong line, a leave, and ann's quit. Returns bob, still connected."""
    bob = await RawClient.connect(port)
    ann = await RawClient.connect(port)
    await bob.login("bob")
    await ann.login("ann")
    await bob.join(room, "bob")
    await bob.send("hello")
    await bob.read_until(f"#{room}:bob> hello")
    await bob.send("/msg ann psst")
    await ann.read_until("*bob*> psst")
    await bob.send("x" * 2000)
    await bob.read_until("*** Line too long")
    await bob.send("left")
    await bob.read_until("*** User bob left")
    await ann.send("quit")
    await ann.wait_closed()
    return bob


def unread(port: int, says: bytes) -> socket.socket:
    """A client that sends `says` and never reads, with a tiny receive buffer: what the
    server writes it backs up in the server's own buffers after a few KB."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(says)
    return sock


async def read_through(client: LineClient, lasts: set[str], timeout: float = 20) -> list[str]:
    """Lines up to and including the last of `lasts` to arrive."""
    lines: list[str] = []
    missing = set(lasts)
    while missing:
        lines.append(await client.read_line(timeout))
        missing.discard(lines[-1])
    return lines


def assert_inert(data: bytes) -> None:
    """`data` (what a client received) holds text and CRLFs, nothing a terminal acts on."""
    text = data.decode("utf-8")
    assert "\r" not in text.replace("\r\n", "") and "\n" not in text.replace("\r\n", "")
    for ch in text.replace("\r\n", ""):
        category = unicodedata.category(ch)
        assert category not in ("Cc", "Cs", "Zl", "Zp", "Co"), f"{ch!r} in {text!r}"
        assert category != "Cf" or ch == "\u200d", f"{ch!r} in {text!r}"
