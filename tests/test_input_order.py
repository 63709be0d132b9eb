"""Input handled as it arrives (Session.take) and input that waits (the reading task) stay in
the order they were typed: messages, commands, and lines that arrive while a command waits."""

from __future__ import annotations

import asyncio

import pytest

from telchat.app import App
from telchat.rules.flood import PASTE_LINES
from tests.clients import TermClient
from tests.conftest import Connect, room_with, user, with_config
from tests.health import assert_healthy


async def test_messages_and_commands_in_one_packet_keep_their_order(connect: Connect, app: App) -> None:
    bob, eve = await room_with(connect, "bob", "eve")
    await eve.send_bytes(b"one\r\ntwo\r\nwho\r\nthree\r\n")
    await eve.expect("#room:eve> one", "#room:eve> two", "*** Users in #room: bob, eve", "#room:eve> three")
    await bob.expect("#room:eve> one", "#room:eve> two", "#room:eve> three")
    await assert_healthy(app, bob, eve)


async def test_a_line_split_across_packets_is_one_line(connect: Connect, app: App) -> None:
    bob, eve = await room_with(connect, "bob", "eve")
    for part in (b"hel", b"lo wor", b"ld\r", b"\nnext\r\n"):
        await eve.send_bytes(part)
        await asyncio.sleep(0.02)
    await bob.expect("#room:eve> hello world", "#room:eve> next")
    await assert_healthy(app, bob, eve)


@pytest.mark.parametrize("config", [with_config(argon2_time_cost=3, argon2_memory_kib=65536)])
async def test_a_message_typed_while_a_command_waits_comes_after_it(connect: Connect, app: App) -> None:
    """`register` waits for its password hash (a thread, a tenth of a second here); a message
    that arrives meanwhile, in a packet of its own, is said after the command's answer."""
    bob, eve = await room_with(connect, "bob", "eve")
    await eve.send_bytes(b"register s3cret-pw\r\n")
    await asyncio.sleep(0.02)
    await eve.send_bytes(b"hello\r\n")
    await eve.expect("*** Nick eve is now registered to you; next time type login eve <password>", "#room:eve> hello")
    await bob.expect("#room:eve> hello")
    await assert_healthy(app, bob, eve)


@pytest.mark.parametrize("config", [with_config(flood_burst=1, flood_rate=1)])
async def test_typing_is_echoed_while_a_paste_is_paced(port: int, connect: Connect, app: App) -> None:
    """Fakelag paces committed lines only: what a character-mode user types next is echoed at
    once, while the lines they pasted still wait their turn."""
    bob = await user(connect, "bob", "room")
    term = await TermClient.connect(port)
    try:
        await term.send("login term")
        await term.read_until("login term")  # the echo, cleared, then the notice
        await term.send("join room")
        await term.read_until("*** User term joined room #room")
        await bob.drain()
        paste = [f"pasted {i}" for i in range(PASTE_LINES + 4)]
        await term.send_bytes(b"".join(line.encode() + b"\r\n" for line in paste))
        await bob.read_until(f"#room:term> {paste[PASTE_LINES - 1]}")  # the paste's first lines: one token
        await term.drain(0.2)
        term.buffer = b""
        await term.send_bytes(b"typing")
        await term._fill(2)
        assert term.buffer.endswith(b"typing")
        # The echo came while the rest of the paste still waited.
        assert f"#room:term> {paste[-1]}" not in await bob.drain(0.1)
        assert (await bob.read_until(f"#room:term> {paste[-1]}"))[-1] == f"#room:term> {paste[-1]}"
    finally:
        await term.close()
    await assert_healthy(app, bob)
