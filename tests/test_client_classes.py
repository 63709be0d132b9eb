"""Each client class over real sockets: raw TCP, telnet terminals, MUD clients; charsets."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from telchat.app import App
from telchat.clients.gmcp import PLAYERS_INTERVAL
from telchat.clients.probes import NOT_HTTP
from telchat.clients.terminal import HERE
from telchat.telnet.liveness import KEEPALIVE_IDLE
from tests.clients import (
    BINARY,
    DO,
    DONT,
    ECHO,
    EOR,
    EOR_OPT,
    GA,
    GMCP,
    IAC,
    MSSP,
    NAWS,
    SB,
    SE,
    SGA,
    TM,
    TTYPE,
    WILL,
    WONT,
    MudClient,
    RawClient,
    TelnetClient,
    TermClient,
)
from tests.conftest import Connect, user
from tests.procs import ServerProcess

NEW_ENVIRON, CHARSET = 39, 42
HINT = "*** Your text is not UTF-8 but looks like {charset}: type set charset {charset} to fix it"
WELCOME = b"*** Welcome to telchat. Type help for commands.\r\n"


class NcClient:
    """Bytes as `nc` sends and shows them: no telnet at all, not even IAC un-doubling."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> NcClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        # The server's opening DO TTYPE is noise to nc; everything after it is text.
        assert (await client.line()).endswith(WELCOME)
        return client

    async def line(self) -> bytes:
        return await asyncio.wait_for(self.reader.readuntil(b"\r\n"), 3)

    async def until(self, prefix: bytes) -> bytes:
        while not (line := await self.line()).startswith(prefix):
            pass
        return line

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_all(self) -> bytes:
        return await asyncio.wait_for(self.reader.read(), 3)

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def nc(port: int) -> AsyncIterator[list[NcClient]]:
    opened: list[NcClient] = []
    yield opened
    for client in opened:
        client.close()


async def nc_connect(opened: list[NcClient], port: int) -> NcClient:
    client = await NcClient.connect(port)
    opened.append(client)
    return client


# raw TCP


async def test_raw_client_gets_line_mode_and_lf_only_lines_work(connect: Connect, app: App) -> None:
    raw = await connect("raw")
    assert isinstance(raw, RawClient)
    await raw.send_bytes(b"login lf\njoin one\nonly LF here\n")
    assert await raw.read_until("#one:lf>") == [
        "*** User change nick anonymous --> lf",
        "*** #one history",
        "*** User lf joined room #one",
        "#one:lf> only LF here",
    ]
    assert (WILL, ECHO) not in raw.commands
    assert all(cmd not in (EOR, 249) for cmd, _ in raw.commands)


async def test_nc_client_is_greeted_within_half_a_second(nc: list[NcClient], port: int) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    await nc_connect(nc, port)
    assert loop.time() - started < 0.5


async def test_password_prompt_says_what_is_true_for_the_client(
    nc: list[NcClient], port: int, connect: Connect
) -> None:
    owner = await connect()
    await owner.login("frank")
    await owner.send("register correct-horse")
    await owner.read_until("*** Nick frank is now registered")
    await owner.send("nick other")
    # nc cannot be asked to stop echoing: the prompt must not claim typing is hidden.
    raw = await nc_connect(nc, port)
    await raw.send(b"login frank\n")
    assert await raw.line() == b"*** Password for frank (your client shows what you type; an empty line cancels):\r\n"
    terminal = await connect()
    await terminal.send("login frank")
    await terminal.expect("*** Password for frank (typing is hidden; an empty line cancels):")


async def test_cp1251_nc_client_round_trip_through_utf8_peer(nc: list[NcClient], port: int, connect: Connect) -> None:
    vasya = await nc_connect(nc, port)
    await vasya.send(b"set charset windows-1251\n")
    assert await vasya.line() == b"*** Charset is now cp1251\r\n"
    await vasya.send("login вася\njoin чай\n".encode("cp1251"))
    await vasya.until("*** User вася joined".encode("cp1251"))
    utf8 = await user(connect, "petya", "чай")
    await vasya.until(b"*** User petya joined")
    # 'я' is 0xFF in cp1251: nc sends it bare, and it must not be taken for telnet's IAC.
    await vasya.send("я люблю чай, ъ\n".encode("cp1251"))
    assert await utf8.read_line() == "#чай:вася> я люблю чай, ъ"
    await utf8.send("яблоко и 中文")
    assert await vasya.until("#чай:petya>".encode("cp1251")) == "#чай:petya> яблоко и ??\r\n".encode("cp1251")


async def test_koi8r_telnet_client_negotiates_and_round_trips(port: int, connect: Connect, app: App) -> None:
    # telnetlib3's client announces its charset (NEW_ENVIRON LANG, CHARSET) and doubles 0xFF.
    ivan = await TelnetClient.connect(port, encoding="koi8-r")
    try:
        assert {s.user.charset for s in app.sessions} == {"koi8-r"}
        ivan.writer.write("login иван\r\njoin one\r\n")
        await ivan.read_until("*** User иван joined")
        utf8 = await user(connect, "olga", "one")
        await ivan.read_until("*** User olga joined")
        ivan.writer.write("Объём Ъ\r\n")  # 'Ъ' is 0xFF in koi8-r
        assert await utf8.read_line() == "#one:иван> Объём Ъ"
        await utf8.send("СЪЕЗД ½")
        assert (await ivan.read_until("#one:olga>"))[-1] == "#one:olga> СЪЕЗД ?"
    finally:
        await ivan.close()


async def test_set_charset_errors(connect: Connect) -> None:
    client = await connect()
    await client.send("set charset ebcdic")
    await client.expect("*** Unknown charset ebcdic; choose from utf-8, cp1251, koi8-r, latin-1")
    await client.send("/set colour red")
    await client.expect("*** Unknown setting 'colour': choose from charset, timestamps, bell, highlight, catchup, tz")
    await client.send("/set charset")
    await client.expect("*** Usage: set [charset <name> | timestamps|bell|highlight|catchup on|off | tz <zone>]")
    await client.send("set charset KOI8-R")
    await client.expect("*** Charset is now koi8-r")


# probes


async def test_http_request_gets_one_line_and_a_close(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 3)
    writer.close()
    lines = data.split(b"\r\n")
    assert lines.count(NOT_HTTP.encode()) == 1
    assert data.endswith(NOT_HTTP.encode() + b"\r\n")
    assert b"have a nice day" not in data


async def test_http_like_line_later_is_just_a_message(connect: Connect) -> None:
    client = await user(connect, "web", "one")
    await client.send("GET / HTTP/1.1")
    await client.expect("#one:web> GET / HTTP/1.1")


async def test_plaintext_mssp_request(connect: Connect) -> None:
    await user(connect, "someone", "one")
    crawler = await connect()
    await crawler.send("MSSP-REQUEST")
    lines = await crawler.read_until("MSSP-REPLY-END")
    assert lines[0] == "MSSP-REPLY-START"
    table = dict(line.split("\t", 1) for line in lines[1:-1])
    assert table["NAME"] == "telchat"
    assert table["PLAYERS"] == "1"
    assert table["CODEBASE"].startswith("telchat ")
    assert int(table["UPTIME"]) > 1_600_000_000
    assert {"CRAWL DELAY", "GMCP", "UTF-8", "PORT", "ROOMS"} <= table.keys()


# MUD clients


async def test_mud_client_gets_line_mode_gmcp_mssp_and_eor(port: int, connect: Connect) -> None:
    tina = await MudClient.connect(port)
    try:
        assert (WILL, ECHO) not in tina.commands
        assert await tina.gmcp_message("Core.Hello") == {"name": "telchat", "version": "0.1.0"}
        assert await tina.gmcp_message("Comm.Channel.List") == []
        assert tina.mssp and tina.mssp[0]["NAME"] == "telchat"
        # EOR agreed, but the greeting is a complete line, not a prompt: no mark after it.
        assert (WILL, EOR_OPT) in tina.commands
        assert (EOR, 0) not in tina.commands

        await tina.login("tina")
        await tina.join("one", "tina")
        assert await tina.gmcp_message("Comm.Channel.List") == [{"name": "one", "caption": "#one"}]
        assert await tina.gmcp_message("Comm.Channel.Players") == [{"name": "tina", "channels": ["one"]}]

        bob = await user(connect, "bob", "one")
        assert await tina.gmcp_message("Comm.Channel.Players") == [
            {"name": "bob", "channels": ["one"]},
            {"name": "tina", "channels": ["one"]},
        ]
        await bob.send("hello tina")
        text = {"channel": "one", "talker": "bob", "text": "#one:bob> hello tina"}
        assert await tina.gmcp_message("Comm.Channel.Text") == text
        await bob.send("/msg tina psst")
        assert await tina.gmcp_message("Comm.Channel.Text") == {
            "channel": "tell bob",
            "talker": "bob",
            "text": "*bob*> psst",
        }

        tina.send_gmcp("Comm.Channel.Players")
        assert len(await tina.gmcp_message("Comm.Channel.Players")) == 2
        await bob.send("left")
        assert await tina.gmcp_message("Comm.Channel.Players") == [{"name": "tina", "channels": ["one"]}]
    finally:
        await tina.close()


# telnet terminals in character mode (the tmux tests drive real ones)


async def test_telnet_terminal_gets_echo_and_redraw_once_per_flush(port: int, connect: Connect) -> None:
    term = await TermClient.connect(port)
    try:
        assert (WILL, ECHO) in term.commands
        # What was typed is echoed; Enter clears it, and the server's answer takes its place.
        await term.send("login term")
        assert await term.read_line() == "login term\r\x1b[K*** User change nick anonymous --> term"
        await term.send("join one")
        await term.read_until("*** User term joined room #one")
        # While something is typed, the current room is shown before it.
        await term.send_bytes(b"half")
        assert await term.drain() == []
        assert term.buffer == b"[#one] half"
        bob = await user(connect, "bob", "one")
        await term.drain()
        assert term.buffer == b"\r\x1b[K[#one] half\r\x1b[11C"
        term.buffer = b""
        await bob.send("one line")
        # Each flush: clear the input line, print, redraw the input with the cursor after it.
        assert await term.read_line() == "\r\x1b[K#one:bob> one line"
        if not term.buffer:
            await term._fill(1)
        assert term.buffer == b"\r\x1b[K[#one] half\r\x1b[11C"
    finally:
        await term.close()


async def typing_term(port: int, typed: bytes) -> TermClient:
    """A character-mode terminal logged in as `term`, with `typed` on its input line."""
    term = await TermClient.connect(port)
    await term.send("login term")
    assert (await term.read_line()).endswith("*** User change nick anonymous --> term")
    await term.send_bytes(typed)
    await term.drain()
    return term


async def test_telnet_interrupt_drops_the_line_and_are_you_there_is_answered(port: int) -> None:
    """inetutils' `send ip` (IAC IP) is Ctrl-C to the line editor; `send ayt` (IAC AYT)
    gets a line back, as RFC 854 asks: some visible evidence that the server is up."""
    ip, ayt = 244, 246
    term = await typing_term(port, b"hal")
    try:
        await term.send_bytes(bytes([IAC, ip]))
        await term.send("who")
        assert (await term.read_line()).endswith("*** Users online: term")
        await term.send_bytes(bytes([IAC, ayt]))
        assert (await term.read_line()).endswith(HERE)
    finally:
        await term.close()


async def test_a_terminals_last_words_leave_no_half_typed_line_after_them(port: int, app: App) -> None:
    """A session told goodbye (an upgrade's farewell to a TLS, SSH or web user, a kick) gets
    its notice with the input line cleared, not drawn again after it: nothing reads it."""
    term = await typing_term(port, b"half")
    try:
        [session] = [s for s in app.sessions if s.user.nick == "term"]
        session.quit("server upgrade", reason="upgrade", farewell="*** Goodbye for now.")
        closing = await term.wait_closed()
        assert closing.endswith(b"\r\x1b[K*** Goodbye for now.\r\n"), closing
    finally:
        await term.close()


# liveness


async def test_keepalive_on_every_socket(app: App, connect: Connect) -> None:
    await connect("raw")
    await connect("telnet")
    for transport in app.sessions.values():
        sock = transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == KEEPALIVE_IDLE
        # Its send buffer capped too (Linux doubles the figure set, for its bookkeeping).
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * app.config.max_sndbuf


async def test_negotiated_event_names_class_term_size_charset() -> None:
    server = ServerProcess()
    try:
        raw = await NcClient.connect(server.port)  # never answers negotiation: raw
        tel = await TermClient.connect(server.port)
        mudc = await MudClient.connect(server.port)
        events = {
            e["client_class"]: e
            for e in (server.wait_for(lambda r, c=c: r.get("client_class") == c, c) for c in ("raw", "telnet", "mud"))
        }
        assert events["telnet"]["mode"] == "character"
        assert events["telnet"]["term"].lower() == "xterm"
        assert (events["telnet"]["cols"], events["telnet"]["rows"]) == (132, 43)
        assert events["telnet"]["charset"] == "utf-8"
        assert events["mud"]["mode"] == "line"
        assert events["raw"]["mode"] == "line"
        for client in (tel, mudc):
            await client.close()
        raw.close()
    finally:
        server.kill()


class PlainMudClient(MudClient):
    """A MUD client that does not know EOR: it gets the older GA after output instead."""

    ACCEPT_WILL = MudClient.ACCEPT_WILL - {EOR_OPT}


_marked = itertools.count()


async def _marks_after_output(client: MudClient, port: int) -> set[int]:
    """The end-of-output marks (EOR, GA) that came with a prompt, after none came with the
    answer to a command: a mark after a complete line is a blank line in TinTin++."""
    nick = f"marked{next(_marked)}"
    client.commands.clear()
    await client.send("who")
    await client.expect("*** Users online: nobody logged in (+1 anonymous)")
    assert {cmd for cmd, _ in client.commands if cmd in (EOR, GA)} == set()
    # A registered nick's password prompt, cancelled with an empty line.
    owner = await RawClient.connect(port)
    await owner.login(nick)
    await owner.send("register hunter2hunter2")
    await owner.read_until(f"*** Nick {nick} is now registered")
    await owner.close()
    client.commands.clear()
    await client.send(f"login {nick}")
    await client.read_until(f"*** Password for {nick}")
    marks = {cmd for cmd, _ in client.commands if cmd in (EOR, GA)}
    await client.send("")
    await client.expect("*** Login cancelled")
    return marks


async def test_mud_client_without_eor_gets_go_ahead(port: int) -> None:
    client = await PlainMudClient.connect(port)
    try:
        assert await _marks_after_output(client, port) == {GA}
    finally:
        await client.close()


async def test_window_resize_redraws_the_input_line(port: int) -> None:
    term = await TermClient.connect(port)
    try:
        await term.send_bytes(b"x" * 50)
        await term.drain()
        term.buffer = b""
        await term.send_bytes(bytes([IAC, SB, NAWS, 0, 20, 0, 10, IAC, SE]))
        await term._fill(1)
        # 20 columns: the terminal wrapped the 50-cell line onto 3 rows, cursor on the last:
        # those are erased, and the line scrolls so that the cursor stays on screen.
        assert term.buffer == b"\r\x1b[2A\x1b[J" + b"\r\x1b[K" + b"x" * 18 + b"\r\x1b[18C"
        term.buffer = b""
        await term.send_bytes(bytes([IAC, SB, NAWS, 0, 100, 0, 10, IAC, SE]))
        await term._fill(1)
        assert term.buffer == b"\r\x1b[K" + b"x" * 50 + b"\r\x1b[50C", "widening is redrawn too"
    finally:
        await term.close()


async def test_mud_client_that_turns_eor_off_gets_go_ahead_from_then_on(port: int) -> None:
    """The end-of-output mark follows the options as they change after the connection starts."""
    client = await MudClient.connect(port)
    try:
        assert await _marks_after_output(client, port) == {EOR}
        await client.send_bytes(bytes([IAC, DONT, EOR_OPT]))
        assert await _marks_after_output(client, port) == {GA}
    finally:
        await client.close()


# telnet options


async def test_server_accepts_exactly_the_options_it_implements(app: App) -> None:
    """A client that offers (WILL) and asks for (DO) every option but TIMING-MARK learns
    exactly which the server implements; everything else is refused in so many words, so a
    client such as C-Kermit, which waits for an agreed COM-PORT-CONTROL, is not left hanging."""
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    try:
        options = [opt for opt in range(256) if opt not in (TM, IAC)]
        writer.write(b"".join(bytes([IAC, verb, opt]) for opt in options for verb in (WILL, DO)))
        data = b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while loop.time() < deadline:
            with contextlib.suppress(TimeoutError):
                data += await asyncio.wait_for(reader.read(65536), 0.1)
        (transport,) = app.sessions.values()
        state = transport.get_protocol().writer
        client_does = {names.get(o[0], o[0]) for o, on in state.remote_option.items() if on}
        server_does = {names.get(o[0], o[0]) for o, on in state.local_option.items() if on}
        refused = {(m[1][0], m[2][0]) for m in re.finditer(rb"\xff([\xfc\xfe])(.)", data, re.DOTALL)}
    finally:
        writer.close()
    assert client_does == {"BINARY", "SGA", "TTYPE", "NAWS", "NEW-ENVIRON", "CHARSET", "GMCP"}
    assert server_does == {"BINARY", "ECHO", "SGA", "EOR", "CHARSET", "GMCP", "MSSP"}
    assert {opt for verb, opt in refused if verb == DONT} >= {44, 34, 5} | set(range(60, 69))
    assert {opt for verb, opt in refused if verb == WONT} >= {44, 34, 5} | set(range(60, 69))


names = {BINARY: "BINARY", SGA: "SGA", TTYPE: "TTYPE", NAWS: "NAWS", NEW_ENVIRON: "NEW-ENVIRON", CHARSET: "CHARSET"}
names |= {GMCP: "GMCP", ECHO: "ECHO", EOR_OPT: "EOR", MSSP: "MSSP"}


# line mode


async def test_line_mode_editing_keys_are_applied_not_stripped(connect: Connect) -> None:
    """telnetlib3-client and the like send what the user typed, editing keys included."""
    bob = await user(connect, "bob", "one")
    ann = await user(connect, "ann", "one")
    await bob.drain()
    for typed, meant in [
        (b"abcx\x7fd", "abcd"),
        (b"abcx\x08d", "abcd"),
        (b"garbage\x15hello", "hello"),
        (b"hello big  \x17world", "hello world"),
        ("привет\x7fт".encode(), "привет"),
    ]:
        await ann.send_bytes(typed + b"\r\n")
        assert await bob.read_line() == f"#one:ann> {meant}"


async def test_a_join_leave_flood_sends_gmcp_members_a_bounded_player_list(port: int, connect: Connect) -> None:
    """Issue 13, finding 15: each change used to send every GMCP member the whole list."""
    tina = await MudClient.connect(port)
    try:
        await tina.login("tina")
        await tina.join("big", "tina")
        for i in range(8):
            await user(connect, f"member{i}", "big")
        flooder = await user(connect, "flooder")
        await tina.gmcp_message("Comm.Channel.Players")
        loop = asyncio.get_running_loop()
        started = loop.time()
        await flooder.send_bytes(b"join big\r\nleft big\r\n" * 30 + b"join big\r\n")
        await flooder.read_until("*** User flooder joined room #big")
        await tina.read_until("*** User flooder joined room #big")
        # The last list names everyone, the flooder included.
        lists: list[Any] = []
        while not lists or len(lists[-1]) != 10:
            lists.append(await tina.gmcp_message("Comm.Channel.Players"))
        elapsed = loop.time() - started
        # 61 changes; at most one list a second (and one right away) reaches each member.
        most = 2 + elapsed / PLAYERS_INTERVAL
        assert len(lists) <= most
        assert sum(len(json.dumps(data)) for data in lists) <= most * len(json.dumps(lists[-1]))

    finally:
        await tina.close()


@pytest.mark.parametrize("charset", ["cp1251", "koi8-r"])
async def test_legacy_cyrillic_input_gets_one_charset_hint(
    nc: list[NcClient], port: int, connect: Connect, charset: str
) -> None:
    """Issue 14, item 9: a user who set no charset types cp1251 or koi8-r."""
    vasya = await nc_connect(nc, port)
    await vasya.send(b"login vasya\njoin one\n")
    await vasya.until(b"*** User vasya joined")
    await vasya.send("привет всем\n".encode(charset))
    assert await vasya.line() == (HINT.format(charset=charset) + "\r\n").encode()
    await vasya.until(b"#one:vasya> ")
    await vasya.send("как дела\n".encode(charset))
    assert (await vasya.line()).startswith(b"#one:vasya> "), "the hint comes once"
    await vasya.send(f"set charset {charset}\n".encode())
    assert await vasya.line() == f"*** Charset is now {charset}\r\n".encode()
    await vasya.send("теперь понятно\n".encode(charset))
    assert await vasya.line() == "#one:vasya> теперь понятно\r\n".encode(charset)


async def test_legacy_cyrillic_typed_a_key_at_a_time_gets_the_hint(port: int) -> None:
    term = await TermClient.connect(port)
    try:
        for byte in "привет".encode("cp1251"):
            await term.send_bytes(bytes([byte]))
        await term.send_bytes(b"\r")
        # (After the echo of what was typed, cleared by Enter.)
        assert (await term.read_line()).endswith("\r\x1b[K" + HINT.format(charset="cp1251"))
    finally:
        await term.close()


class DumbTerminal(TermClient):
    """inetutils telnet with TERM=dumb: takes BINARY both ways, and stays in line mode."""

    TERMINAL = b"DUMB"
    ACCEPT_DO = TermClient.ACCEPT_DO | {BINARY}


async def test_line_mode_terminal_leaves_binary(port: int) -> None:
    """Issue 14, item 4: in BINARY, inetutils telnet echoes Enter as a bare LF (a staircase)."""
    term = await DumbTerminal.connect(port)
    try:
        assert (WILL, ECHO) not in term.commands, "line mode"
        assert (DO, BINARY) in term.commands and (WILL, BINARY) in term.commands
        assert (WONT, BINARY) in term.commands and (DONT, BINARY) in term.commands
    finally:
        await term.close()


async def test_a_line_mode_terminal_switched_to_character_mode_echoes_for_itself(port: int) -> None:
    """inetutils telnet's `mode character` asks a line-mode session's server to echo (DO
    ECHO): agreed to, it would stop echoing, and no one would echo for it."""
    term = await DumbTerminal.connect(port)
    try:
        term.commands.clear()
        await term.send_bytes(bytes([IAC, DO, SGA, IAC, DO, ECHO]))
        await term._fill(0.5)
        assert (WONT, ECHO) in term.commands and (WILL, ECHO) not in term.commands
    finally:
        await term.close()


class EarlyBinaryTerminal(TermClient):
    """inetutils telnet with TERM=xterm as it starts: asks for BINARY both ways at once."""

    ACCEPT_DO = TermClient.ACCEPT_DO | {BINARY}
    asked = False

    def _refuse(self, cmd: int, opt: int) -> None:
        if not self.asked:
            self.asked = True
            self.writer.write(bytes([IAC, WILL, BINARY, IAC, DO, BINARY]))
        super()._refuse(cmd, opt)


async def test_a_character_mode_terminal_keeps_binary(port: int) -> None:
    """Only a terminal that stays in (or goes back to) line mode is taken out of BINARY."""
    term = await EarlyBinaryTerminal.connect(port)
    try:
        await term._fill(0.5)
        assert (WILL, ECHO) in term.commands and (DO, BINARY) in term.commands
        assert (WONT, BINARY) not in term.commands and (DONT, BINARY) not in term.commands
    finally:
        await term.close()


async def test_a_character_mode_terminal_switched_to_line_mode_is_answered(port: int) -> None:
    """inetutils telnet's `mode line`: DONT SGA and DONT ECHO, each acknowledged with WONT,
    and the server's BINARY left, or the client echoes Enter as a bare line feed (a staircase)."""
    term = await TermClient.connect(port)
    try:
        assert (WILL, ECHO) in term.commands, "character mode"
        await term.send_bytes(bytes([IAC, WILL, BINARY, IAC, DO, BINARY]))  # 8-bit, as the user asked
        await term._fill(0.3)
        assert {(DO, BINARY), (WILL, BINARY)} <= set(term.commands)
        term.commands.clear()
        await term.send_bytes(bytes([IAC, DONT, SGA, IAC, DONT, ECHO]))
        await term._fill(0.5)
        assert {(WONT, SGA), (WONT, ECHO), (WONT, BINARY)} <= set(term.commands)
        term.commands.clear()
        await term.send_bytes(bytes([IAC, DONT, ECHO]))  # off already: no answer (no loops)
        await term._fill(0.3)
        assert (WONT, ECHO) not in term.commands
    finally:
        await term.close()


async def test_help_wraps_to_the_window_naws_reports(port: int) -> None:
    """Issue 14, item 12: help as a short list that fits the client's width, resized too."""
    term = await MudClient.connect(port)  # line mode: no echo in the way
    try:
        await term.send_bytes(bytes([IAC, SB, NAWS, 0, 40, 0, 10, IAC, SE]))
        await term.send("help")
        lines = await term.read_until("*** Type help <command>")
        assert len(lines) > 3 and all(len(line) <= 40 for line in lines[:-1])
    finally:
        await term.close()


async def test_a_command_split_over_chunks_is_not_taken_for_text(port: int) -> None:
    """A chunk without IAC skips telnetlib3's parser only when it is text: the middle of a
    subnegotiation (or a command) begun in the chunk before is not."""
    term = await MudClient.connect(port)
    listener = await RawClient.connect(port)
    try:
        for client, nick in ((listener, "lis"), (term, "splitter")):
            await client.login(nick)
            await client.join("split", nick)
        await listener.drain()
        for piece in (bytes([IAC, SB, NAWS]), b"\x00\x28\x00\x0a", bytes([IAC, SE]), bytes([IAC, WILL])):
            await term.send_bytes(piece)
            await asyncio.sleep(0.05)  # each its own chunk
        await term.send_bytes(bytes([200]) + b"after\r\n")  # the option byte of IAC WILL, then a line
        assert await listener.read_line() == "#split:splitter> after"
        await term.send("help")
        lines = await term.read_until("*** Type help <command>")
        assert all(len(line) <= 40 for line in lines[:-1]), "the split NAWS set 40 columns"
    finally:
        await term.close()
        await listener.close()
