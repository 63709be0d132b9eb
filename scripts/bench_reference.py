"""The benchmark's yardstick: telchat's line protocol on bare asyncio, as fast as plain Python goes.

No telnet, no logging, no store, no sanitising: greeting, `login NICK`, `join ROOM` (history
header, the last lines said there, joined notice to the room) and plain lines relayed to
every member of the current room as `#room:nick> text`. Simple but not naive: it works in
bytes, formats each line once, and queues output per connection, writing each connection
once per event-loop turn (what any careful hand-written asyncio server does: a turn that
relays 30 lines costs each member one send() rather than 30). A member whose output backs
up past the send-queue limit is cut off, as telchat does.

    python scripts/bench_reference.py --port 0   # prints {"event": "listening", "port": N}

With `--telnet` the same chat runs behind telnetlib3's server protocol, configured as telchat
configures it (UTF-8, binary, its negotiation and --connect-maxwait): the floor of the
chosen stack, what a connection costs before telchat adds anything of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
from collections import deque
from collections.abc import Callable
from typing import cast

GREETING = b"*** Welcome to telchat. Type help for commands.\r\n"
LOGIN_FIRST = b"*** Please login first: login <nick>\r\n"
NO_ROOM = b"*** You are not in a room. Type join <room> first.\r\n"
SENDQ_LIMIT = 131072
HISTORY_REPLAY = 20
HISTORY_KEEP = 1000
MAX_PENDING = 8192
ANNOUNCE_ALL_UP_TO = 100  # telchat.chat.rooms.ANNOUNCE_ALL_UP_TO


class Room:
    __slots__ = ("history", "members", "name")

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.members: dict[Conn, None] = {}
        self.history: deque[bytes] = deque(maxlen=HISTORY_KEEP)

    def send(self, data: bytes) -> None:
        for member in self.members:
            member.write(data)


class Chat:
    def __init__(self, announce_nicks: str) -> None:
        self.announce_nicks = announce_nicks
        self.conns: dict[Conn, None] = {}
        self.nicks: dict[bytes, Conn] = {}
        self.rooms: dict[bytes, Room] = {}
        self.dirty: list[Conn] = []

    def mark(self, conn: Conn) -> None:
        """`conn` has output queued: write it at the end of this loop turn."""
        if not self.dirty:
            asyncio.get_running_loop().call_soon(self.flush)
        self.dirty.append(conn)

    def flush(self) -> None:
        dirty, self.dirty = self.dirty, []
        for conn in dirty:
            conn.flush()

    def audience(self, conn: Conn) -> dict[Conn, None]:
        """Who hears `conn` change nick: everyone, or its rooms' members and itself (auto:
        everyone while at most ANNOUNCE_ALL_UP_TO are connected, as telchat's default)."""
        if self.announce_nicks == "all" or (self.announce_nicks == "auto" and len(self.conns) <= ANNOUNCE_ALL_UP_TO):
            return self.conns
        audience = {conn: None}
        for room in conn.rooms:
            audience.update(room.members)
        return audience

    def room(self, name: bytes) -> Room:
        room = self.rooms.get(name.lower())
        if room is None:
            room = self.rooms[name.lower()] = Room(name)
        return room


class Conn(asyncio.Protocol):
    def __init__(self, chat: Chat) -> None:
        self.chat = chat
        self.transport: asyncio.Transport | None = None
        self.nick = b"anonymous"
        self.logged_in = False
        self.rooms: list[Room] = []
        self.current: Room | None = None
        self.pending = b""
        self.out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports do not subclass asyncio's.
        self.transport = cast(asyncio.Transport, transport)
        self.chat.conns[self] = None
        self.write(GREETING)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.chat.conns.pop(self, None)
        if self.logged_in and self.chat.nicks.get(self.nick.lower()) is self:
            del self.chat.nicks[self.nick.lower()]
        for room in self.rooms:
            room.members.pop(self, None)
            room.send(b"*** User " + self.nick + b" quit (connection closed)\r\n")
            if not room.members:
                self.chat.rooms.pop(room.name.lower(), None)
        self.rooms = []

    def write(self, data: bytes) -> None:
        if not self.out:
            self.chat.mark(self)
        self.out.append(data)

    def flush(self) -> None:
        out, self.out = self.out, []
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(out[0] if len(out) == 1 else b"".join(out))
        if transport.get_write_buffer_size() > SENDQ_LIMIT:
            transport.abort()

    def data_received(self, data: bytes) -> None:
        lines = (self.pending + data).split(b"\n") if self.pending else data.split(b"\n")
        self.pending = lines.pop()
        if len(self.pending) > MAX_PENDING and self.transport is not None:
            self.transport.abort()
            return
        for line in lines:
            text = line.strip()
            if text:
                self.handle(text)

    def handle(self, text: bytes) -> None:
        word, _, arg = text.partition(b" ")
        command = word.lstrip(b"/").lower()
        if arg and command in (b"login", b"nick", b"join") and b" " not in arg.strip():
            if command == b"join":
                self.join(arg.strip().lstrip(b"#"))
            else:
                self.login(arg.strip())
        elif not self.logged_in:
            self.write(LOGIN_FIRST)
        elif self.current is None:
            self.write(NO_ROOM)
        else:
            self.say(self.current, text)

    def login(self, nick: bytes) -> None:
        key = nick.lower()
        owner = self.chat.nicks.get(key)
        if owner is not None and owner is not self:
            self.write(b"*** Nick " + nick + b" is already taken\r\n")
            return
        if self.logged_in:
            self.chat.nicks.pop(self.nick.lower(), None)
        self.chat.nicks[key] = self
        old, self.nick, self.logged_in = self.nick, nick, True
        line = b"*** User change nick " + old + b" --> " + nick + b"\r\n"
        for conn in self.chat.audience(self):
            conn.write(line)

    def join(self, name: bytes) -> None:
        room = self.chat.room(name)
        self.current = room
        if self in room.members:
            self.write(b"*** Current room is now #" + room.name + b"\r\n")
            return
        self.write(b"*** #" + room.name + b" history\r\n")
        self.write(b"".join(list(room.history)[-HISTORY_REPLAY:]))
        room.members[self] = None
        self.rooms.append(room)
        room.send(b"*** User " + self.nick + b" joined room #" + room.name + b"\r\n")

    def say(self, room: Room, text: bytes) -> None:
        line = b"#" + room.name + b":" + self.nick + b"> " + text + b"\r\n"
        room.history.append(line)
        room.send(line)


# telchat's default --connect-maxwait (telchat.config.Config.connect_maxwait).
CONNECT_MAXWAIT = 0.25


def telnet_factory(chat: Chat) -> Callable[[], asyncio.BaseProtocol]:
    """telnetlib3's server protocol whose shell feeds a Conn: the chat above, over telnet."""
    import telnetlib3

    async def shell(reader: telnetlib3.TelnetReaderUnicode, writer: telnetlib3.TelnetWriterUnicode) -> None:
        conn = Conn(chat)
        # The chat writes bytes: to the socket, past the writer's text encoding (the same bytes).
        conn.connection_made(cast(asyncio.BaseTransport, writer.transport))
        try:
            while data := await reader.read(65536):
                conn.data_received(data.encode())
        finally:
            conn.connection_lost(None)
            writer.close()

    def factory() -> asyncio.BaseProtocol:
        return telnetlib3.TelnetServer(
            shell=shell,
            encoding="utf8",
            encoding_errors="replace",
            force_binary=True,
            connect_maxwait=CONNECT_MAXWAIT,
            timeout=0,
        )

    return factory


async def serve(host: str, port: int, announce_nicks: str, telnet: bool, backlog: int) -> None:
    chat = Chat(announce_nicks)
    loop = asyncio.get_running_loop()
    factory = telnet_factory(chat) if telnet else lambda: Conn(chat)
    server = await loop.create_server(factory, host, port, backlog=backlog)
    bound = server.sockets[0].getsockname()[1]
    sys.stdout.write(json.dumps({"event": "listening", "host": host, "port": bound}) + "\n")
    sys.stdout.flush()
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--announce-nicks", choices=("all", "rooms", "auto"), default="all")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--telnet", action="store_true", help="behind telnetlib3's server protocol")
    parser.add_argument("--backlog", type=int, default=100, help="listen backlog (asyncio's default: 100)")
    args = parser.parse_args()
    coro = serve(args.host, args.port, args.announce_nicks, args.telnet, args.backlog)
    try:
        if args.loop == "uvloop":
            importlib.import_module("uvloop").run(coro)
        else:
            asyncio.run(coro)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
