"""Continuity's edges: waiting messages that met a dying connection, a full mention box,
and one account with several sessions in `rooms`, `join` and `leave`."""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import replace

from telchat.app import App
from telchat.config import Config
from tests.clients import LineClient, RawClient
from tests.conftest import Connect, running, user
from tests.test_continuity import PASSWORD, STAMPED, back, gone, registered


async def test_a_waiting_message_shown_to_a_dead_connection_waits_again(app: App, connect: Connect) -> None:
    await gone(await registered(app.port, "frank"))
    bob = await user(connect, "bob")
    await bob.send("/msg frank are you there")
    await bob.expect("*** frank is offline; they will get your message when they log in.")
    # frank logs in and his connection is reset at once: the message reaches no screen.
    _, writer = await asyncio.open_connection("127.0.0.1", app.port)
    writer.write(f"login frank {PASSWORD}\r\n".encode())
    await writer.drain()
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
    await asyncio.sleep(0.2)  # the reset session ends
    frank, _ = await back(app.port, "frank", "*** User change nick anonymous --> frank")
    await frank.send("who")
    shown = [STAMPED.sub(r"\2", line) for line in await frank.read_until("*** Users online")]
    assert shown.count("*bob*> are you there") == 1
    # And only once: the next login finds nothing waiting.
    await gone(frank)
    frank, _ = await back(app.port, "frank", "*** User change nick anonymous --> frank")
    await frank.send("who")
    assert await frank.read_until("*** Users online") == ["*** Users online: bob, frank"]


async def test_a_full_mention_box_counts_what_it_dropped(config: Config) -> None:
    async with running(replace(config, mail_max=2, mail_per_sender=2)) as app:
        await gone(await registered(app.port, "frank", "room"))
        bob = await user(lambda: RawClient.connect(app.port), "bob", "room")
        for i in range(4):
            await bob.send(f"frank: ping {i}")
        await bob.read_until("#room:bob> frank: ping 3")
        await asyncio.sleep(0.2)  # the mentions are kept after the line went out
        frank, lines = await back(app.port, "frank", "*** User frank joined room #room")
        assert lines[1] == (
            "*** You were mentioned 4 times while you were offline; type mentions to see them"
            " (2 were not kept: at most 2 wait)."
        )
        await frank.send("mentions")
        assert [STAMPED.sub(r"\2", await frank.read_line()) for _ in range(3)] == [
            "#room:bob> frank: ping 0",
            "#room:bob> frank: ping 1",
            "*** 2 more mentions were not kept: at most 2 wait.",
        ]
        await frank.send("mentions")
        await frank.expect("*** No mentions are waiting.")


async def two_sessions_and_ann(app: App, connect: Connect) -> tuple[RawClient, RawClient, LineClient]:
    """frank's laptop and phone, and ann, all in #room."""
    laptop = await registered(app.port, "frank", "room")
    phone, _ = await back(app.port, "frank", "*** User frank joined room #room")
    ann = await user(connect, "ann", "room")
    await laptop.read_until("*** User ann joined")
    return laptop, phone, ann


async def test_rooms_counts_an_account_once(app: App, connect: Connect) -> None:
    _, phone, ann = await two_sessions_and_ann(app, connect)
    await ann.send("rooms")
    assert await ann.read_until("*** Rooms") == ["*** Rooms: #room (2)"]
    await phone.send("who")
    assert (await phone.read_until("*** Users in"))[-1] == "*** Users in #room: ann, frank"


async def test_sessions_of_an_account_join_and_leave_together(app: App, connect: Connect) -> None:
    laptop, phone, ann = await two_sessions_and_ann(app, connect)
    await ann.send("join other")
    await ann.read_until("*** User ann joined room #other")
    await ann.send("join room")
    await ann.expect("*** Current room is now #room")
    await laptop.drain()
    # A join in one session is a join of the account: every session is in, and told.
    await phone.send("join other")
    assert (await phone.read_until("*** User frank joined room #other"))[-1] == "*** User frank joined room #other"
    assert (await laptop.read_until("*** User frank joined room #other"))[-1] == "*** User frank joined room #other"
    assert await ann.read_until("*** User frank joined") == ["*** User frank joined room #other"]
    await laptop.send("hi from the laptop")  # its current room stayed #room
    await ann.expect("#room:frank> hi from the laptop")
    # A leave in one session is a leave of the account: the room sees it once.
    await laptop.send("leave other")
    for screen in (laptop, phone):
        assert (await screen.read_until("*** User frank left"))[-1] == "*** User frank left room #other"
    assert await ann.read_until("*** User frank left") == ["*** User frank left room #other"]
    await ann.send("join other")
    await ann.expect("*** Current room is now #other")
    await ann.send("anyone?")
    await ann.expect("#other:ann> anyone?")
    await ann.send("join room")
    await ann.expect("*** Current room is now #room")
    await ann.send("back in room")
    for screen in (laptop, phone):
        # Neither session got the line said in #other after the leave.
        lines = await screen.read_until("#room:ann> back in room")
        assert [line for line in lines if line.startswith("#other:")] == []
    await ann.send("who other")
    assert (await ann.read_until("*** Users in"))[-1] == "*** Users in #other: ann"
