"""Adversarial input over real sockets: nothing reaches another terminal but text, nothing
breaks a session or the server, and memory stays bounded. Every test ends by checking the
server's health (tests/health.py)."""

from __future__ import annotations

import asyncio
import socket

import pytest

import telchat.session.commands
from telchat.app import App
from tests.attack import Attacker
from tests.clients import LineClient, RawClient, TelnetClient, assert_inert, read_through
from tests.conftest import Connect, room_with, user, with_config
from tests.health import Memory, assert_healthy, session_of

MiB = 1 << 20
GOODBYE = b"*** have a nice day ***\r\n"

ATTACKS = [
    # CSI: clear screen, colours, alternate screen, cursor moves, queries the terminal answers
    b"\x1b[2J\x1b[H",
    b"\x1b[31mred\x1b[0m",
    b"\x1b[?1049h",
    b"\x1b[6n",
    b"\x1b[21t",
    b"\x1b[1;1H\x1b[K",
    # OSC: title, clipboard (OSC 52), hyperlink, with BEL and with ST terminators
    b"\x1b]0;pwned\x07",
    b"\x1b]52;c;ZXZpbA==\x07",
    b"\x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\",
    b"\x1b]2;title\x1b\\",
    # DCS (DECRQSS, sixel), SOS, PM, APC
    b"\x1bP1$qm\x1b\\",
    b"\x1bPq#0;2;0;0;0#0~~@@vv\x1b\\",
    b"\x1bXsos\x1b\\",
    b"\x1b^pm\x1b\\",
    b"\x1b_apc\x1b\\",
    # other ESC sequences: charset switch, reset, keypad, save cursor
    b"\x1b(0lqqk\x1b(B",
    b"\x1bc",
    b"\x1b=\x1b>",
    b"\x1b7\x1b8",
    # C1 controls as UTF-8 (U+009B is CSI, U+009D OSC, U+0090 DCS, U+009C ST)
    "\u009b2J".encode(),
    "\u009d0;t\u009c".encode(),
    "\u0090q\u009c".encode(),
    "\u0085\u008d\u008e".encode(),
    # raw 8-bit C1 bytes: invalid UTF-8, so they must not survive as controls either
    b"\x9b2J\x9d0;t\x9c",
    # C0: BEL, BS, VT, FF, SO/SI (charset shift), NUL, DEL, ESC alone
    b"\x07\x08\x0b\x0c\x0e\x0f\x00\x7f\x1b",
    # bidi overrides, embeddings, isolates, marks (Trojan Source)
    "\u202eevil\u202c\u202a\u202b\u202d".encode(),
    "\u2066\u2067\u2068iso\u2069".encode(),
    "\u200e\u200f\u061c".encode(),
    # zero-width and other invisible format characters, tag characters
    "zero\u200b\u200c\u2060\ufeff\u00ad\u180ewidth".encode(),
    "\U000e0041\U000e0042tags\U000e007f".encode(),
    # line and paragraph separators
    "one\u2028two\u2029three".encode(),
    # truncated sequences at the end of the line
    b"\x1b[",
    b"\x1b]52;c;ZXZp",
]


async def received(client: LineClient, until: str) -> bytes:
    lines = await client.read_until(until)
    return "".join(line + "\r\n" for line in lines).encode()


async def test_escape_injection_of_every_kind_reaches_nobody(connect: Connect, app: App) -> None:
    bob = await user(connect, "bob", "room")
    tom = await connect("telnet")
    await tom.login("tom")
    await tom.join("room", "tom")
    eve = await user(connect, "eve", "room")
    for victim in (bob, tom):
        await victim.drain()
    seen = {bob: b"", tom: b""}
    for i, attack in enumerate(ATTACKS):
        for line in (b"/say ok%d " % i + attack, b"/me ok%d " % i + attack, b"/msg bob ok%d " % i + attack):
            await eve.send_bytes(line + b"\r\n")
        for victim in (bob, tom):
            seen[victim] += await received(victim, f"#room:* eve ok{i}")
        seen[bob] += await received(bob, f"*eve*> ok{i}")
    await eve.send_bytes("/quit \x1b[2J\x1b]0;bye\x07\u202egone\r\n".encode())
    for victim in (bob, tom):
        seen[victim] += await received(victim, "*** User eve quit")
        assert_inert(seen[victim])
    assert b"#room:eve> ok1 red\r\n" in seen[bob]
    assert b"#room:eve> ok8 click\r\n" in seen[bob]
    assert b"#room:eve> ok25 evil\r\n" in seen[bob]
    assert b"*** User eve quit (gone)\r\n" in seen[bob]
    await assert_healthy(app, bob, tom)


async def test_escapes_in_nicks_and_rooms_are_stripped_before_the_rules(connect: Connect, app: App) -> None:
    bob = await user(connect, "bob", "lobby")
    eve = await connect()
    await eve.send_bytes(b"login \x1b[31meve\x1b[0m\r\n")
    assert_inert(await received(eve, "*** User change nick anonymous --> eve"))
    await eve.send_bytes(b"join \x1b]0;x\x07lob\xe2\x80\x8bby\r\n")
    await eve.read_until("*** User eve joined room #lobby")
    assert_inert(await received(bob, "*** User eve joined room #lobby"))
    await assert_healthy(app, bob, eve)


IMPERSONATIONS = [
    "b\u200bob",  # zero-width space
    "\u202ebob",  # right-to-left override
    "bob\u2066",  # isolate
    "b\u00adob",  # soft hyphen
    "\ufeffbob",  # byte order mark
    "bo\u200db",  # zero-width joiner
    "ｂｏｂ",  # fullwidth
    "BOB",  # case
    "b\u043eb",  # Cyrillic o among Latin letters
    "\u0431\u043e\u0431",  # all-Cyrillic lookalike ("боб" reads differently, but "bob"... is taken)
]


@pytest.mark.parametrize("attempt", IMPERSONATIONS)
async def test_nick_impersonation_is_refused(connect: Connect, app: App, attempt: str) -> None:
    bob = await user(connect, "bob")
    eve = await connect()
    await eve.send(f"login {attempt}")
    reply = await eve.read_line()
    if reply.startswith("*** User change nick"):
        # Only a nick that reads differently may pass: it must not look like bob.
        nick = reply.rsplit(" ", 1)[1]
        assert nick.casefold() != "bob" and all(ch.isalpha() for ch in nick), reply
    else:
        assert reply.startswith(("*** Nick ", "*** Invalid nick")), reply
    assert set(app.chat.nicks) >= {"bob"}
    assert app.chat.nicks["bob"].conn_id == bob_conn(app, "bob")
    await assert_healthy(app, bob, eve)


def bob_conn(app: App, nick: str) -> int:
    return next(s.user.conn_id for s in app.sessions if s.user.nick == nick)


@pytest.mark.parametrize("filler", ["\u3164", "\u115f", "\uffa0"])
async def test_invisible_letters_make_no_nick_or_room(connect: Connect, filler: str) -> None:
    eve = await connect()
    await eve.send(f"login {filler}")
    assert (await eve.read_line()).startswith("*** Invalid nick")
    await eve.send(f"login bob{filler}")
    assert (await eve.read_line()).startswith("*** Invalid nick")
    await eve.send(f"join lobby{filler}")
    assert (await eve.read_line()).startswith("*** Invalid room name")


async def test_invalid_utf8_and_0xff_bytes(connect: Connect, app: App) -> None:
    bob, eve = await room_with(connect, "bob", "eve")
    junk = [
        b"\xc3\x28 bad pair",
        b"\xed\xa0\x80 surrogate",
        b"\xf8\x88\x80\x80\x80 five bytes",
        b"\xc0\xaf overlong",
        b"\xff\xff escaped 0xff",
        b"\xfe\xfe\xfe",
        b"\xf0\x9f\x98 truncated emoji",
    ]
    for line in junk:
        await eve.send_bytes(line + b"\r\n")
    await eve.send("after")
    got = await received(bob, "#room:eve> after")
    assert_inert(got)
    assert got.count(b"#room:eve> ") == len(junk) + 1
    assert "\ufffd( bad pair".encode() in got
    await assert_healthy(app, bob, eve)


async def test_ten_mib_without_newline(connect: Connect, port: int, app: App) -> None:
    bob = await user(connect, "bob", "room")
    payload = b"A" * (10 * MiB)
    with Memory() as memory:
        eve = Attacker.joined(port, "eve")
        await bob.read_until("*** User eve joined room #room")
        said = await eve.send_and_read_all(payload)  # the server hangs up after 8 KiB
        assert said.endswith(b"*** Input of over 8192 bytes without a newline; disconnecting.\r\n" + GOODBYE)
        assert await bob.read_line() == "*** User eve quit (input overflow)"
        await eve.reset()
        assert memory.peak < 2 * MiB
        await assert_healthy(app, bob)
        assert memory.grown < MiB // 2


@pytest.mark.parametrize("kind", ["raw", "telnet"])
async def test_lines_byte_at_a_time(connect: Connect, app: App, kind: str) -> None:
    bob = await user(connect, "bob", "room")
    slow = await connect(kind)
    for byte in "login ann\r\njoin room\r\nпривет, по байту\r\n".encode():
        await slow.send_bytes(bytes([byte]))
    assert "#room:ann> привет, по байту" in await bob.read_until("#room:ann> ")
    await assert_healthy(app, bob, slow)


async def test_thousand_lines_in_one_write(connect: Connect, app: App) -> None:
    bob, ann = await room_with(connect, "bob", "ann")
    await ann.send_bytes(b"".join(b"line %d\r\n" % i for i in range(1000)))
    lines = await bob.read_until("#room:ann> line 999")
    assert lines == [f"#room:ann> line {i}" for i in range(1000)]
    await assert_healthy(app, bob, ann)


async def test_half_closed_client_has_its_lines_delivered(connect: Connect, app: App) -> None:
    bob = await user(connect, "bob", "room")
    ann = await connect()
    assert isinstance(ann, RawClient)
    await ann.send_bytes(b"login ann\r\njoin room\r\nfirst\r\nlast words\r\n")
    ann.writer.write_eof()
    lines = await bob.read_until("*** User ann quit")
    assert lines[-3:] == ["#room:ann> first", "#room:ann> last words", "*** User ann quit (connection closed)"]
    await ann.close()
    await assert_healthy(app, bob)


async def test_connect_and_vanish_storm(connect: Connect, port: int, app: App) -> None:
    bob = await user(connect, "bob", "room")

    async def vanish(i: int) -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        if i % 3 == 0:
            writer.transport.abort()  # RST, maybe before the server even looked
            return
        if i % 3 == 1:
            await asyncio.sleep(0.3)  # until the greeting, or mid-negotiation
            writer.write(b"login v%d\r\njoin room\r\n" % i)
        writer.close()

    with Memory() as memory:
        for _ in range(3):
            await asyncio.gather(*(vanish(i) for i in range(60)))
        await bob.drain(0.5)
        await assert_healthy(app, bob)
        assert memory.grown < MiB // 2


async def test_reset_mid_line_and_mid_negotiation(connect: Connect, port: int, app: App) -> None:
    bob = await user(connect, "bob", "room")
    for payload in (b"\xff\xfa\x18", b"login x\r\njoin room\r\nhalf a li", b"\xff"):
        ghost = Attacker(port)
        ghost.sock.sendall(payload)
        await asyncio.sleep(0.05)
        await ghost.reset()
    await assert_healthy(app, bob)


@pytest.mark.parametrize("config", [with_config(sendq_bytes=32768)])
async def test_reader_that_never_reads_is_cut_at_its_sendq(connect: Connect, port: int, app: App) -> None:
    before = app.telemetry.counters.value("limits", kind="sendq")
    sloth = Attacker.joined(port, "sloth", "busy", rcvbuf=4096)
    bob = await user(connect, "bob", "busy")
    # A slow link: without this, loopback's kernel buffers soak up megabytes first.
    transport = app.sessions[await session_of(app, "sloth")]
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    talkers = [await user(connect, f"t{i}", "busy") for i in range(3)]
    await bob.drain()
    for talker in talkers:
        await talker.drain()
    payload = "x" * 700
    readers = (bob, *talkers)
    received: dict[LineClient, list[str]] = {reader: [] for reader in readers}
    # At the pace the readers read (they share this test's loop with the server): they stay
    # within the sendq plus the kernel's capped send buffer; the sloth, reading nothing, does not.
    for start in range(0, 200, 20):
        for i in range(start, start + 20):
            for talker in talkers:
                await talker.send(f"{i} {payload}")
        lasts = {f"#busy:t{n}> {start + 19} {payload}" for n in range(3)}
        for reader in readers:
            received[reader] += await read_through(reader, lasts)
    for lines in received.values():
        got = [line for line in lines if line.startswith(("#busy", "*** User sloth"))]
        assert "*** User sloth quit (too slow to read)" in got
        for n in range(3):
            said = [line for line in got if line.startswith(f"#busy:t{n}> ")]
            assert said == [f"#busy:t{n}> {i} {payload}" for i in range(200)]
    assert app.telemetry.counters.value("limits", kind="sendq") == before + 1
    assert app.telemetry.counters.value("disconnects", reason="sendq") >= 1
    await sloth.reset()
    await assert_healthy(app, bob, *talkers)


async def test_an_exception_in_a_command_touches_nobody_else(
    connect: Connect, app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    bob, eve = await room_with(connect, "bob", "eve")
    real = telchat.session.commands.say

    # Plain messages go through `say`, whether handled as they arrive or by the reading task.
    def flaky(ctx: telchat.session.commands.Context, parsed: telchat.session.commands.Say) -> None:
        if "boom" in parsed.text:
            raise RuntimeError("bug")
        real(ctx, parsed)

    monkeypatch.setattr(telchat.session.commands, "say", flaky)
    await eve.send("boom")
    await eve.expect("*** Internal error; your line was not processed. Please try again.")
    await eve.send("fine")
    await eve.expect("#room:eve> fine")
    assert await bob.read_line() == "#room:eve> fine"
    await assert_healthy(app, bob, eve)


async def test_an_exception_outside_commands_ends_only_that_session(
    connect: Connect, app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    bob, eve = await room_with(connect, "bob", "eve")
    real = telchat.session.session.sanitize

    def broken(text: str) -> str:
        if "crash" in text:
            raise RuntimeError("bug")
        return real(text)

    monkeypatch.setattr(telchat.session.session, "sanitize", broken)
    await eve.send("crash")
    assert await bob.read_line() == "*** User eve quit (connection closed)"
    await eve.wait_closed()
    await bob.send("still here")
    await bob.expect("#room:bob> still here")
    await assert_healthy(app, bob)


class ExplodingSink:
    def write(self, data: bytes) -> int:
        raise RuntimeError("sink failed")

    def buffered(self) -> int:
        return 0


async def test_a_failing_recipient_does_not_cost_the_others_their_lines(connect: Connect, app: App) -> None:
    bob, eve, ann = await room_with(connect, "bob", "eve", "ann")
    # Flushed in join order: bob before the broken eve, ann after her.
    (await session_of(app, "eve")).user.outbox._sink = ExplodingSink()
    for i in range(3):
        await ann.send(f"hello {i}")
    for client in (bob, ann):
        assert await client.read_until("#room:ann> hello 2") == [f"#room:ann> hello {i}" for i in range(3)]
    await eve.close()
    await assert_healthy(app, bob, ann)


async def test_telnet_client_abuse_does_not_break_the_session(connect: Connect, app: App) -> None:
    bob = await user(connect, "bob", "room")
    tom = await TelnetClient.connect(app.port)
    await tom.login("tom")
    await tom.join("room", "tom")
    await tom.send_bytes(b"\xff\xf1\xff\xf6 hi \xff\xff there\r\n")  # NOP, AYT, escaped 0xFF
    assert_inert(await received(bob, "#room:tom> "))
    await tom.close()
    await assert_healthy(app, bob)
