"""Input limits, bad bytes and vanishing clients: the session and the room go on."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from telchat.app import App
from tests.clients import LineClient, RawClient
from tests.conftest import Connect, user, with_config


async def test_long_line_gets_notice_and_is_not_relayed(connect: Connect) -> None:
    bob = await user(connect, "bob", "one")
    ann = await user(connect, "ann", "one")
    await bob.drain()
    await ann.send("x" * 2000)
    await ann.expect("*** Line too long (2000 bytes, limit 1024); it was not sent.")
    await ann.send("short")
    await ann.expect("#one:ann> short")
    assert await bob.read_line() == "#one:ann> short"


async def test_line_at_limit_is_relayed(connect: Connect) -> None:
    bob = await user(connect, "bob", "one")
    await bob.send("y" * 1024)
    await bob.expect("#one:bob> " + "y" * 1024)


async def test_10k_without_newline_disconnects(connect: Connect) -> None:
    bob = await user(connect, "bob", "one")
    ann = await user(connect, "ann", "one")
    await bob.drain()
    await ann.send_bytes(b"z" * 10240)
    rest = await ann.wait_closed()
    assert b"*** Input of over 8192 bytes without a newline; disconnecting." in rest
    assert await bob.read_line() == "*** User ann quit (input overflow)"


async def test_10k_line_with_newline_also_disconnects(connect: Connect) -> None:
    ann = await user(connect, "ann", "one")
    await ann.send("z" * 10240)
    await ann.wait_closed()


async def test_undecodable_bytes_become_replacement_chars(connect: Connect) -> None:
    bob = await user(connect, "bob", "one")
    await bob.send_bytes(b"caf\xe9 \xc3\x28 ok\r\n")
    await bob.expect("#one:bob> caf\ufffd \ufffd( ok")
    await bob.send("still here")
    await bob.expect("#one:bob> still here")


async def test_control_sequences_never_reach_others(connect: Connect) -> None:
    bob = await user(connect, "bob", "one")
    ann = await user(connect, "ann", "one")
    await bob.drain()
    await ann.send_bytes(b"\x1b[2J\x1b]52;c;ZXZpbA==\x07hi\x07 \xe2\x80\xae there\r\n")
    assert await bob.read_line_bytes() == b"#one:ann> hi  there\r\n"


async def test_disconnect_cleans_membership(connect: Connect, app: App) -> None:
    bob = await user(connect, "bob", "one")
    ann = await user(connect, "ann", "one")
    await bob.drain()
    await ann.close()
    assert await bob.read_line() == "*** User ann quit (connection closed)"
    await bob.send("who")
    await bob.expect("*** Users in #one: bob")
    assert set(app.chat.nicks) == {"bob"}
    other = await connect()
    await other.login("ann")


async def test_reset_connection_cleans_membership(connect: Connect, port: int, app: App) -> None:
    bob = await user(connect, "bob", "one")
    sock = socket.create_connection(("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    ghost = RawClient(reader, writer)
    await ghost.expect("*** Welcome to telchat. Type help for commands.")
    await ghost.login("ghost")
    await ghost.join("one", "ghost")
    await bob.drain()
    # SO_LINGER 0: close() sends RST, the abrupt way a client can vanish.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
    assert await bob.read_line() == "*** User ghost quit (connection closed)"
    await bob.send("who")
    await bob.expect("*** Users in #one: bob")
    assert "ghost" not in app.chat.nicks


async def test_client_vanishing_mid_broadcast(connect: Connect, app: App) -> None:
    listeners = [await user(connect, f"u{i}", "busy") for i in range(5)]
    talker = await user(connect, "talker", "busy")
    for client in listeners:
        await client.drain()
    await talker.drain()
    await listeners[2].close()
    for i in range(200):
        await talker.send(f"line {i}")
    for client in (listeners[0], listeners[1], listeners[3], listeners[4], talker):
        lines = [line for line in await client.read_until("#busy:talker> line 199") if line.startswith("#busy")]
        assert lines == [f"#busy:talker> line {i}" for i in range(200)]
    assert "u2" not in app.chat.nicks


async def test_half_closed_client_is_cleaned_up(connect: Connect, app: App) -> None:
    bob = await user(connect, "bob", "one")
    ann = await connect()
    assert isinstance(ann, RawClient)
    await ann.login("ann")
    await ann.join("one", "ann")
    await bob.drain()
    ann.writer.write_eof()
    assert await bob.read_line() == "*** User ann quit (connection closed)"


@pytest.mark.parametrize("config", [with_config(sendq_bytes=65536)])
async def test_slow_reader_is_cut_off_and_others_get_everything(connect: Connect, port: int, app: App) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"login sloth\r\njoin busy\r\n")
    bob = await user(connect, "bob", "busy")
    talker = await user(connect, "talker", "busy")
    await bob.drain()
    await talker.drain()
    payload = "p" * 900
    got: dict[LineClient, list[str]] = {bob: [], talker: []}
    # 3.6 MB in all, at the pace the two readers read: they stay within the sendq plus
    # the kernel's (capped) send buffer, while the sloth, reading nothing, falls behind.
    for start in range(0, 4000, 50):
        for i in range(start, start + 50):
            await talker.send(f"{i} {payload}")
        for client, lines in got.items():
            lines += [
                line for line in await client.read_until(f"#busy:talker> {start + 49} ") if line.startswith("#busy")
            ]
    for lines in got.values():
        assert lines == [f"#busy:talker> {i} {payload}" for i in range(4000)]
    assert "sloth" not in app.chat.nicks
    sock.close()
