"""Telnet-level abuse: subnegotiation floods, IAC floods, amplified replies, MCCP3 bombs."""

from __future__ import annotations

import asyncio
import socket
import struct
import zlib

import pytest

from telchat.app import App
from tests.attack import Attacker
from tests.clients import DO, IAC, SB, SE, WILL, RawClient, TermClient, assert_inert
from tests.conftest import Connect, user, with_config
from tests.health import Memory, assert_healthy, session_of
from tests.procs import ServerProcess
from tests.test_redis_faults import eventually

MiB = 1 << 20
NOP, TTYPE, MCCP3, NAWS = 241, 24, 87, 31
SB_TTYPE = bytes([IAC, SB, TTYPE])


async def raw_user(app: App, nick: str) -> RawClient:
    client = await RawClient.connect(app.port)
    await client.login(nick)
    await client.join("room", nick)
    return client


async def test_subnegotiation_is_capped(connect: Connect, app: App) -> None:
    before = app.telemetry.counters.value("limits", kind="subnegotiation")
    bob = await user(connect, "bob", "room")
    eve = Attacker.joined(app.port, "eve")
    await bob.read_until("*** User eve joined")
    flood = SB_TTYPE + b"x" * MiB
    with Memory() as memory:
        # telnetlib3 alone would keep up to 1 MiB of this, one deque entry (8+ bytes) per byte.
        rest = await eve.send_and_read_all(flood)
        assert rest.endswith(b"*** Telnet subnegotiation over 8192 bytes; disconnecting.\r\n")
        assert await bob.read_line() == "*** User eve quit (connection closed)"
        assert memory.peak < MiB
    assert app.telemetry.counters.value("limits", kind="subnegotiation") == before + 1
    assert app.telemetry.counters.value("disconnects", reason="subnegotiation") >= 1
    await assert_healthy(app, bob)


async def test_unterminated_subnegotiation_under_the_cap_harms_nobody(connect: Connect, app: App) -> None:
    bob = await user(connect, "bob", "room")
    eve = await raw_user(app, "eve")
    await bob.drain()
    # Never ended: everything after it is subnegotiation to telnet, so she says nothing more.
    await eve.send_bytes(SB_TTYPE + b"\x00xterm")
    await eve.send("hello?")
    await bob.send("hi all")
    await bob.expect("#room:bob> hi all")
    assert await eve.read_line() == "#room:bob> hi all"
    assert await bob.drain() == []
    await eve.close()
    assert await bob.read_line() == "*** User eve quit (connection closed)"
    await assert_healthy(app, bob)


@pytest.mark.parametrize(
    "flood",
    [
        bytes([IAC, NOP]) * (MiB // 2),
        bytes([IAC, WILL, 31]) * (MiB // 3),  # WILL NAWS, over and over
        bytes([IAC, SB, 31, 0, 80, 0, 24, IAC, SE]) * (MiB // 9),  # whole NAWS subnegotiations
    ],
    ids=["nop", "will", "naws"],
)
async def test_iac_floods_are_slowed_and_others_talk_on(connect: Connect, app: App, flood: bytes) -> None:
    before = app.telemetry.counters.value("limits", kind="telnet_flood")
    bob = await user(connect, "bob", "room")
    ann = await user(connect, "ann", "room")
    eve = Attacker.joined(app.port, "eve")
    await bob.read_until("*** User eve joined")
    with Memory() as memory:
        eve.flood(flood)
        eve_session = await session_of(app, "eve")
        # The slowdown begins once her budget's burst is spent: soon, or later on a busy machine.
        await eventually(lambda: app.telemetry.counters.value("limits", kind="telnet_flood") > before, 30)
        for i in range(20):
            await ann.send(f"ann {i}")
            await asyncio.sleep(0.01)
        lines = await bob.read_until("#room:ann> ann 19")
        assert lines[-20:] == [f"#room:ann> ann {i}" for i in range(20)]
        assert eve_session._gate is not None and eve_session._gate.paused
        assert memory.peak < 2 * MiB
    del eve_session  # it would keep her connection's objects alive for the count below
    assert app.telemetry.counters.value("limits", kind="telnet_flood") == before + 1
    await eve.reset()
    await assert_healthy(app, bob, ann)


async def test_a_flood_of_0xff_data_bytes_is_input_like_any_other(connect: Connect, app: App) -> None:
    bob = await user(connect, "bob", "room")
    eve = Attacker.joined(app.port, "eve")
    await bob.read_until("*** User eve joined")
    eve.sock.sendall(b"\xff\xff" * 100 + b"\r\n")  # IAC IAC is a 0xFF byte: invalid UTF-8
    assert await bob.read_line() == "#room:eve> " + "\ufffd" * 100
    flood = b"\xff\xff" * MiB
    with Memory() as memory:
        eve.flood(flood)
        assert await bob.read_line() == "*** User eve quit (input overflow)"
        assert memory.peak < MiB
    await eve.reset()
    await assert_healthy(app, bob)


@pytest.mark.parametrize("config", [with_config(sendq_bytes=16384, telnet_rate=0)])
async def test_amplified_replies_to_a_non_reader_hit_the_sendq(connect: Connect, port: int, app: App) -> None:
    bob = await user(connect, "bob", "room")
    eve = Attacker.joined(port, "eve", rcvbuf=4096)
    session = await session_of(app, "eve")
    app.sessions[session].get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    await bob.read_until("*** User eve joined")
    # telnetlib3 answers each DO of an unknown option with a WONT, never looking at its queue.
    eve.flood(bytes([IAC, DO, 0x99]) * 200_000)
    assert await bob.read_line() == "*** User eve quit (connection closed)"
    assert session.reason == "sendq"
    del session
    await eve.reset()
    await assert_healthy(app, bob)


async def test_compressed_input_is_refused_not_inflated(connect: Connect, app: App) -> None:
    before = app.telemetry.counters.value("limits", kind="compression")
    bob = await user(connect, "bob", "room")
    eve = Attacker.joined(app.port, "eve")
    await bob.read_until("*** User eve joined")
    packer = zlib.compressobj(9)
    bomb = packer.compress(b"a" * (64 * MiB)) + packer.flush(zlib.Z_SYNC_FLUSH)
    with Memory() as memory:
        eve.sock.sendall(bytes([IAC, WILL, MCCP3, IAC, SB, MCCP3, IAC, SE]))
        await asyncio.sleep(0.1)
        rest = await eve.send_and_read_all(bomb)
        assert rest.endswith(b"*** Compressed input (MCCP3) is not supported; disconnecting.\r\n")
        assert memory.peak < 4 * MiB
    assert await bob.read_line() == "*** User eve quit (connection closed)"
    assert app.telemetry.counters.value("limits", kind="compression") == before + 1
    await assert_healthy(app, bob)


async def test_telnet_commands_inside_text_never_reach_others(connect: Connect, app: App) -> None:
    bob = await user(connect, "bob", "room")
    eve = await raw_user(app, "eve")
    await bob.drain()
    await eve.send_bytes(b"a\xff\xf1b\xff\xfb\x01c" + SB_TTYPE + b"\x00vt100\xff\xf0d\xff\xffe\r\n")
    got = await bob.read_line_bytes()
    assert got == "#room:eve> abcd\ufffde\r\n".encode()
    assert_inert(got)
    await assert_healthy(app, bob, eve)


async def test_line_editing_keys_are_charged_to_the_telnet_budget(connect: Connect, app: App) -> None:
    """Issue 13, finding 1: a character-mode client's editing keys are paced like telnet
    commands, and each costs the editor a bounded amount of work (tests/test_lineedit.py)."""
    before = app.telemetry.counters.value("limits", kind="telnet_flood")
    bob = await user(connect, "bob", "room")
    eve = await TermClient.connect(app.port)
    await eve.send("login eve")
    await eve.send("join room")
    await bob.read_until("*** User eve joined")
    await eve.send("x" * 1000)
    await bob.read_until("#room:eve> xxx")
    eve_session = await session_of(app, "eve")
    guard = app.sessions[eve_session].get_protocol().guard
    await eve.send_bytes(b"\x10\x0e" * (MiB // 8))  # 256 KiB of Ctrl-P / Ctrl-N: history steps
    await bob.send("still talking")
    assert await bob.read_line() == "#room:bob> still talking"
    # Worked through 4 KiB a loop turn, and paced: a read's worth still waits (the rest unread).
    assert len(guard._pending) - guard._offset > 0
    assert eve_session._gate is not None and eve_session._gate.paused
    assert app.telemetry.counters.value("limits", kind="telnet_flood") == before + 1
    del eve_session, guard  # they would keep her connection's objects alive for the count below
    # Vanish with a RST, which the server notices while it is not reading her.
    eve.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await eve.close()
    await assert_healthy(app, bob)


async def test_malformed_subnegotiations_are_logged_once_with_ids_and_charged() -> None:
    """Issue 13, finding 7: 3-byte NAWS, over and over."""
    server = ServerProcess()
    try:
        bob = await RawClient.connect(server.port)
        await bob.login("bob")
        await bob.join("room", "bob")
        eve = await TermClient.connect(server.port)
        await eve.send("login eve")
        await eve.send("join room")
        await bob.read_until("*** User eve joined")
        await eve.send_bytes(bytes([IAC, SB, NAWS, 0, 80, 0, IAC, SE]) * 20_000)
        await bob.send("still talking")
        assert await bob.read_line() == "#room:bob> still talking"
        server.wait_for(lambda r: r["event"] == "limit" and r["kind"] == "telnet_flood", "telnet_flood")
        await eve.close()
        await bob.close()
        server.stop()
    finally:
        server.kill()
    malformed = [r for r in server.events if r["event"] == "malformed_subnegotiation"]
    assert len(malformed) == 1
    assert malformed[0]["option"] == "NAWS" and malformed[0]["conn_id"] > 0 and malformed[0]["peer"] != "-"
    assert not [r for r in server.events if r.get("logger", "").startswith("telnetlib3")], "no traceback lines"
