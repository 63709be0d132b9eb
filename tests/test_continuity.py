"""Continuity for registered users: rooms and missed lines at login, messages that wait."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from telchat.app import App
from telchat.config import Config
from tests.clients import RawClient
from tests.conftest import Connect, running, user
from tests.procs import ServerProcess
from tests.redis_server import RedisServer, login

PASSWORD = "s3cret-pw"
CHEAP_HASHES = ("--argon2-time-cost=1", "--argon2-memory-kib=8")
STAMPED = re.compile(r"^(\d{4}-\d\d-\d\d )?\d\d:\d\d (.*)$")


async def registered(port: int, nick: str, *rooms: str) -> RawClient:
    """A client that registered `nick` and joined `rooms`, in order."""
    client = await RawClient.connect(port)
    await client.login(nick)
    await client.send(f"register {PASSWORD}")
    await client.read_until(f"*** Nick {nick} is now registered")
    for room in rooms:
        await client.join(room, nick)
    return client


async def gone(client: RawClient) -> None:
    await client.send("quit")
    await client.wait_closed()


async def back(port: int, nick: str, last: str) -> tuple[RawClient, list[str]]:
    """`nick` logs in again with its password; the lines from its nick change through the
    first that ends with `last`."""
    client = await RawClient.connect(port)
    await client.send(f"login {nick} {PASSWORD}")
    lines = [(await client.read_until(f"*** User change nick anonymous --> {nick}"))[-1]]
    while not lines[-1].endswith(last):
        lines.append(await client.read_line())
    return client, lines


async def test_rooms_come_back_at_login(app: App, connect: Connect) -> None:
    frank = await registered(app.port, "frank", "a", "b", "c")
    await frank.send("join b")
    await frank.read_until("*** Current room is now #b")
    watcher = await user(connect, "ann", "a")
    await gone(frank)
    again, lines = await back(app.port, "frank", "*** User frank joined room #b")
    # Nothing was said: no catch-up, only the joins, the current room (b) last.
    assert lines == [
        "*** User change nick anonymous --> frank",
        "*** User frank joined room #a",
        "*** User frank joined room #c",
        "*** User frank joined room #b",
    ]
    assert (await watcher.read_until("*** User frank joined"))[-1] == "*** User frank joined room #a"
    await again.send("hello")
    await again.expect("#b:frank> hello")


async def test_missed_lines_then_the_cap(config: Config) -> None:
    async with running(replace(config, catchup_max=3)) as app:
        frank = await registered(app.port, "frank", "quiet", "room")
        bob = await user(lambda: RawClient.connect(app.port), "bob", "room")
        await bob.send("before")
        await frank.read_until("#room:bob> before")
        await gone(frank)
        await bob.read_until("*** User frank quit")
        for i in range(2):
            await bob.send(f"missed {i}")
        await bob.read_until("#room:bob> missed 1")
        again, lines = await back(app.port, "frank", "*** User frank joined room #room")
        assert lines == [
            "*** User change nick anonymous --> frank",
            "*** User frank joined room #quiet",
            "*** #room: 2 new lines since you left",
            "#room:bob> missed 0",
            "#room:bob> missed 1",
            "*** User frank joined room #room",
        ]
        await gone(again)
        await bob.read_until("*** User frank quit")
        for i in range(5):
            await bob.send(f"late {i}")
        await bob.read_until("#room:bob> late 4")
        _, lines = await back(app.port, "frank", "*** User frank joined room #room")
        assert lines[2:] == [
            "*** #room: 5 new lines since you left; the last 3 follow (history 5 shows them all)",
            "#room:bob> late 2",
            "#room:bob> late 3",
            "#room:bob> late 4",
            "*** User frank joined room #room",
        ]


async def test_catchup_off_gets_the_ordinary_replay(app: App, connect: Connect) -> None:
    bot = await registered(app.port, "bot", "room")
    await bot.send("set catchup off")
    await bot.expect("*** catchup is now off")
    talker = await user(connect, "ann", "room")
    await gone(bot)
    await talker.read_until("*** User bot quit")
    await talker.send("while away")
    await talker.read_until("#room:ann> while away")
    _, lines = await back(app.port, "bot", "*** User bot joined room #room")
    assert lines[1:] == ["*** #room history", "#room:ann> while away", "*** User bot joined room #room"]


async def test_a_waiting_message_is_shown_once(app: App, connect: Connect) -> None:
    await gone(await registered(app.port, "frank"))
    bob = await user(connect, "bob")
    await bob.send("/msg frank see you tomorrow")
    await bob.expect("*** frank is offline; they will get your message when they log in.")
    await bob.send("/msg nobody hello")
    await bob.expect("*** No such user: nobody")
    frank, lines = await back(app.port, "frank", "*bob*> see you tomorrow")
    assert lines[1] == "*** 1 message waited for you while you were offline:"
    stamped = STAMPED.match(lines[2])
    assert stamped is not None and stamped.group(2) == "*bob*> see you tomorrow"
    await gone(frank)
    frank, lines = await back(app.port, "frank", "*** User change nick anonymous --> frank")
    await frank.send("who")
    assert await frank.read_until("*** Users online") == ["*** Users online: bob, frank"]


async def test_waiting_messages_are_capped(config: Config) -> None:
    async with running(replace(config, mail_max=3, mail_per_sender=2)) as app:
        await gone(await registered(app.port, "frank"))
        bob = await user(lambda: RawClient.connect(app.port), "bob")
        ann = await user(lambda: RawClient.connect(app.port), "ann")
        await bob.read_until("*** User change nick anonymous --> ann")
        offline = "*** frank is offline; they will get your message when they log in."
        for i in range(2):
            await bob.send(f"/msg frank bob {i}")
            await bob.expect(offline)
        await bob.send("/msg frank bob 2")
        await bob.expect("*** You already have 2 messages waiting for frank; yours was not stored.")
        await ann.send("/msg frank ann 0")
        await ann.expect(offline)
        await ann.send("/msg frank ann 1")
        await ann.expect("*** frank already has 3 messages waiting; yours was not stored. Try again later.")
        _, lines = await back(app.port, "frank", "*ann*> ann 0")
        assert [STAMPED.sub(r"\2", line) for line in lines[1:]] == [
            "*** 3 messages waited for you while you were offline:",
            "*bob*> bob 0",
            "*bob*> bob 1",
            "*ann*> ann 0",
        ]


async def test_waiting_message_survives_a_restart_once(tmp_path: Path, config: Config) -> None:
    config = replace(config, store=f"sqlite:///{tmp_path / 'restart.db'}")
    async with running(config) as app:
        await gone(await registered(app.port, "frank", "room"))
        bob = await user(lambda: RawClient.connect(app.port), "bob", "room")
        await bob.send("/msg frank across the restart")
        await bob.expect("*** frank is offline; they will get your message when they log in.")
        await bob.send("said before the restart")
        await bob.read_until("#room:bob> said before the restart")
    async with running(config) as app:
        frank, lines = await back(app.port, "frank", "*** User frank joined room #room")
        assert [STAMPED.sub(r"\2", line) for line in lines[1:]] == [
            "*** 1 message waited for you while you were offline:",
            "*bob*> across the restart",
            "*** #room: 1 new line since you left",
            "#room:bob> said before the restart",
            "*** User frank joined room #room",
        ]
        await gone(frank)
    async with running(config) as app:
        _, lines = await back(app.port, "frank", "*** User frank joined room #room")
        assert lines[1:] == ["*** User frank joined room #room"]


async def test_waiting_message_survives_kill_9(tmp_path: Path) -> None:
    store = f"--store=sqlite:///{tmp_path / 'kill.db'}"
    server = ServerProcess(store, *CHEAP_HASHES)
    try:
        await gone(await registered(server.port, "frank"))
        sender = await user(lambda: RawClient.connect(server.port), "bob")
        await sender.send("/msg frank survive this")
        await sender.expect("*** frank is offline; they will get your message when they log in.")
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        await sender.close()
    finally:
        server.kill()
    server = ServerProcess(store, *CHEAP_HASHES)
    try:
        _, lines = await back(server.port, "frank", "*bob*> survive this")
        assert STAMPED.sub(r"\2", lines[-1]) == "*bob*> survive this"
    finally:
        server.kill()


@pytest.fixture
def nodes(redis: RedisServer) -> Iterator[list[ServerProcess]]:
    procs = [ServerProcess(f"--store={redis.url}", "--node-ttl=1", *CHEAP_HASHES) for _ in range(2)]
    yield procs
    for proc in procs:
        proc.kill()


async def test_continuity_across_redis_nodes(nodes: list[ServerProcess], clients: list[RawClient]) -> None:
    frank = await registered(nodes[0].port, "frank", "quiet", "r")
    clients.append(frank)
    bob = await login(clients, nodes[1], "bob", "r")
    await bob.send("seen before he left")
    await frank.read_until("#r:bob> seen before he left")
    await gone(frank)
    await bob.read_until("*** User frank quit")
    await bob.send("/msg frank from the other node")
    await bob.expect("*** frank is offline; they will get your message when they log in.")
    await bob.send("missed 0")
    await bob.send("frank: missed 1")  # frank registered on the other node
    await bob.read_until("#r:bob> frank: missed 1")
    again, lines = await back(nodes[1].port, "frank", "*** User frank joined room #r")
    clients.append(again)
    assert [STAMPED.sub(r"\2", line) for line in lines] == [
        "*** User change nick anonymous --> frank",
        "*** 1 message waited for you while you were offline:",
        "*bob*> from the other node",
        "*** You were mentioned once while you were offline; type mentions to see them.",
        "*** User frank joined room #quiet",
        "*** #r: 2 new lines since you left",
        "#r:bob> missed 0",
        "#r:bob> frank: missed 1",
        "*** User frank joined room #r",
    ]
    await gone(again)
    await bob.read_until("*** User frank quit")
    # The message was taken once; the mentions wait until read.
    last, lines = await back(nodes[0].port, "frank", "*** User frank joined room #r")
    clients.append(last)
    assert lines == [
        "*** User change nick anonymous --> frank",
        "*** You were mentioned once while you were offline; type mentions to see them.",
        "*** User frank joined room #quiet",
        "*** User frank joined room #r",
    ]


async def test_mentions_of_an_offline_user_wait(app: App, connect: Connect) -> None:
    await gone(await registered(app.port, "frank", "room"))
    bob = await user(connect, "bob", "room")
    await bob.send("frank: are you there?")
    await bob.send("bob talks to himself")
    await bob.send("where is Frank")
    await bob.read_until("#room:bob> where is Frank")
    frank, lines = await back(app.port, "frank", "*** User frank joined room #room")
    assert lines[1] == "*** You were mentioned 2 times while you were offline; type mentions to see them."
    await frank.send("mentions")
    assert [STAMPED.sub(r"\2", await frank.read_line()) for _ in range(2)] == [
        "#room:bob> frank: are you there?",
        "#room:bob> where is Frank",
    ]
    await frank.send("mentions")
    await frank.expect("*** No mentions are waiting.")


async def test_two_sessions_of_one_account(app: App, connect: Connect) -> None:
    laptop = await registered(app.port, "frank", "room")
    ann = await user(connect, "ann", "room")
    await laptop.read_until("*** User ann joined")
    phone, lines = await back(app.port, "frank", "*** User frank joined room #room")
    assert lines == ["*** User change nick anonymous --> frank", "*** User frank joined room #room"]
    await phone.send("from the phone")
    for screen in (phone, laptop, ann):
        assert (await screen.read_until("#room:frank> from the phone"))[-1] == "#room:frank> from the phone"
    await ann.send("who")
    assert await ann.read_until("*** Users in") == ["*** Users in #room: ann, frank"]
    await ann.send("/msg frank to both")
    await ann.expect("-> *frank*> to both")
    for screen in (phone, laptop):
        await screen.expect("*ann*> to both")
    # The account leaves the room with its last session only.
    await gone(phone)
    await ann.send("still here?")
    assert await ann.read_until("#room:ann> still here?") == ["#room:ann> still here?"]
    await laptop.read_until("#room:ann> still here?")
    await gone(laptop)
    assert await ann.read_until("*** User frank quit") == ["*** User frank quit (quit)"]
    # Unregistered nicks keep one connection each.
    bob = await user(connect, "bob")
    other = await connect()
    await other.send("login bob")
    await other.expect("*** Nick bob is already taken")
    await gone(bob)


async def test_ghost_ends_the_other_sessions(app: App, connect: Connect) -> None:
    laptop = await registered(app.port, "frank", "room")
    phone, _ = await back(app.port, "frank", "*** User frank joined room #room")
    ann = await user(connect, "ann", "room")
    await ann.drain()
    third = await RawClient.connect(app.port)
    await third.send(f"login frank {PASSWORD} ghost")
    await third.read_until("*** User change nick anonymous --> frank")
    for screen in (laptop, phone):
        assert b"*** frank logged in from another connection with its password" in await screen.wait_closed()
    assert "*** User frank quit (logged in from elsewhere)" in await ann.read_until("*** User frank quit")
    await third.read_until("*** User frank joined room #room")
    await third.send(f"login frank {PASSWORD} now")
    await third.expect("*** Usage: login <nick> [password [ghost]]")


async def test_two_sessions_on_two_redis_nodes(nodes: list[ServerProcess], clients: list[RawClient]) -> None:
    laptop = await registered(nodes[0].port, "frank", "r")
    clients.append(laptop)
    ann = await login(clients, nodes[0], "ann", "r")
    await laptop.read_until("*** User ann joined")
    phone, lines = await back(nodes[1].port, "frank", "*** User frank joined room #r")
    clients.append(phone)
    assert lines == ["*** User change nick anonymous --> frank", "*** User frank joined room #r"]
    await phone.send("from the other node")
    for screen in (phone, laptop, ann):
        assert (await screen.read_until("#r:frank> from the other node"))[-1] == "#r:frank> from the other node"
    await ann.send("/msg frank to both nodes")
    for screen in (phone, laptop):
        await screen.expect("*ann*> to both nodes")
    await ann.send("who r")
    assert (await ann.read_until("*** Users in"))[-1] == "*** Users in #r: ann, frank"
    await gone(laptop)
    await ann.send("still here?")
    assert await ann.read_until("#r:ann> still here?") == ["#r:ann> still here?"]
    # The phone's node takes the nick over at its next heartbeat (--node-ttl / 3): frank is
    # still online.
    await asyncio.sleep(0.7)
    other = await login(clients, nodes[0], "bob")
    await other.send("/msg frank you there")
    await other.expect("-> *frank*> you there")
    await phone.read_until("*bob*> you there")
    await gone(phone)
    assert (await ann.read_until("*** User frank quit"))[-1] == "*** User frank quit (quit)"


async def test_rooms_joined_before_registering_follow_the_account_at_once(
    nodes: list[ServerProcess], clients: list[RawClient]
) -> None:
    # Saved as the nick is registered, not at the next --marker-flush (30 s): a session on
    # the other node, which has no session of the account to share them from, finds them.
    laptop = await RawClient.connect(nodes[0].port)
    clients.append(laptop)
    await laptop.login("frank")
    await laptop.join("early", "frank")
    await laptop.send(f"register {PASSWORD}")
    await laptop.read_until("*** Nick frank is now registered")
    phone, lines = await back(nodes[1].port, "frank", "*** User frank joined room #early")
    clients.append(phone)
    assert lines[-1] == "*** User frank joined room #early"


async def test_joins_and_leaves_follow_the_account_across_redis_nodes(
    nodes: list[ServerProcess], clients: list[RawClient]
) -> None:
    laptop = await registered(nodes[0].port, "frank", "r")
    clients.append(laptop)
    phone, _ = await back(nodes[1].port, "frank", "*** User frank joined room #r")
    clients.append(phone)
    ann = await login(clients, nodes[0], "ann", "x")
    await laptop.send("join x")
    assert (await laptop.read_until("*** User frank joined room #x"))[-1] == "*** User frank joined room #x"
    # The phone, on the other node, is in #x too (shown its history and told), still in #r.
    assert (await phone.read_until("*** User frank joined room #x"))[-2:] == [
        "*** #x history",
        "*** User frank joined room #x",
    ]
    # The room is told once.
    assert await ann.read_until("*** User frank joined room #x") == ["*** User frank joined room #x"]
    await ann.send("both of you?")
    for screen in (laptop, phone, ann):
        assert (await screen.read_until("#x:ann> both of you?"))[-1] == "#x:ann> both of you?"
    await phone.send("still in r")
    assert (await laptop.read_until("#r:frank> still in r"))[-1] == "#r:frank> still in r"
    # Leaving on the phone leaves on the laptop too; the room is told once.
    await phone.send("leave x")
    assert (await phone.read_until("*** User frank left room #x"))[-1] == "*** User frank left room #x"
    assert (await laptop.read_until("*** User frank left room #x"))[-1] == "*** User frank left room #x"
    await ann.send("alone now")
    assert await ann.read_until("#x:ann> alone now") == ["*** User frank left room #x", "#x:ann> alone now"]
    await ann.send("who x")
    assert (await ann.read_until("*** Users in"))[-1] == "*** Users in #x: ann"
