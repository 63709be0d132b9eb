"""Accounts, moderation and social features across two telchat processes sharing Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.clients import RawClient
from tests.procs import ServerProcess
from tests.redis_server import RedisServer, login
from tests.test_accounts import CHEAP_HASHES


@pytest.fixture
def nodes(redis: RedisServer) -> Iterator[list[ServerProcess]]:
    procs = [ServerProcess(f"--store={redis.url}", "--operators=boss", *CHEAP_HASHES) for _ in range(2)]
    yield procs
    for proc in procs:
        proc.kill()


async def register(client: RawClient, nick: str, password: str) -> None:
    await client.send(f"register {password}")
    await client.read_until(f"*** Nick {nick} is now registered")


async def test_accounts_are_shared(nodes: list[ServerProcess], clients: list[RawClient]) -> None:
    frank = await login(clients, nodes[0], "frank")
    await register(frank, "frank", "s3cret-pw")
    other = await RawClient.connect(nodes[1].port)
    clients.append(other)
    await other.send("login frank")
    await other.read_until("*** Password for frank")
    await other.send("s3cret-pw")
    # The account is online on the other node: this connection is one more session of it.
    await other.read_until("*** User change nick anonymous --> frank", timeout=5)
    # With ghost, a login ends every other session of the account, on every node.
    third = await RawClient.connect(nodes[1].port)
    clients.append(third)
    await third.send("login frank s3cret-pw ghost")
    await third.read_until("*** User change nick anonymous --> frank", timeout=5)
    for ghost in (frank, other):
        assert b"*** frank logged in from another connection" in await ghost.wait_closed()


async def test_moderation_reaches_every_node(nodes: list[ServerProcess], clients: list[RawClient]) -> None:
    boss = await login(clients, nodes[0], "boss", "room")
    await register(boss, "boss", "boss-password")
    bob = await login(clients, nodes[1], "bob", "room")
    cid = await login(clients, nodes[1], "cid", "room")
    await boss.send("/topic Shared topic")
    assert (await bob.read_until("*** boss set the topic"))[-1] == "*** boss set the topic of #room: Shared topic"
    await boss.send("/mute bob 10m")
    assert (await bob.read_until("*** You were muted"))[-1] == "*** You were muted in #room by boss for 10m"
    await bob.send("hello?")
    await bob.expect("*** You are muted in #room")
    await boss.send("/kick bob enough")
    assert b"*** You were kicked by boss: enough" in await bob.wait_closed()
    assert (await cid.read_until("*** User bob quit"))[-1] == "*** User bob quit (kicked by boss: enough)"
    await boss.send("/ban cid 1h")
    assert b"*** You are banned from this server by boss" in await cid.wait_closed()
    again = await RawClient.connect(nodes[1].port)
    clients.append(again)
    await again.send("login cid")
    await again.expect("*** Nick cid is banned")
    dan = await login(clients, nodes[1], "dan")
    lines = await dan.join("room", "dan")
    assert "*** Topic of #room: Shared topic (set by boss)" in lines


async def test_whois_and_away_across_nodes(nodes: list[ServerProcess], clients: list[RawClient]) -> None:
    ann = await login(clients, nodes[0], "ann")
    bob = await login(clients, nodes[1], "bob", "kitchen")
    await bob.send("/away on a call")
    await bob.read_until("*** You are marked as away")
    await ann.drain()
    await ann.send("whois bob")
    lines = await ann.read_until("*** bob is away")
    assert lines[0] == "*** bob is in #kitchen"
    assert lines[-1] == "*** bob is away: on a call"
    await ann.send("/msg bob ping")
    await ann.expect("-> *bob*> ping", "*** bob is away: on a call")


async def test_parallel_guesses_over_two_nodes_are_throttled_together(
    redis: RedisServer, clients: list[RawClient]
) -> None:
    # Real hashing cost: guesses wait for their verification while the others arrive.
    pair = [ServerProcess(f"--store={redis.url}", "--hash-concurrency=1") for _ in range(2)]
    try:
        owner = await login(clients, pair[0], "frank")
        await register(owner, "frank", "right-pw")
        guessers = [await RawClient.connect(pair[i % 2].port) for i in range(12)]
        clients += guessers
        for guesser in guessers:
            await guesser.send("login frank wrong-pw")
        answers = [await guesser.read_line(timeout=10) for guesser in guessers]
    finally:
        for node in pair:
            node.kill()
    # --login-failures (3) verifications in all, not 3 on each node.
    assert answers.count("*** Wrong password for frank") == 3, answers
    assert answers.count("*** Too many failed logins; wait a minute and try again") == 9, answers


async def test_rooms_counts_an_account_on_two_nodes_once(nodes: list[ServerProcess], clients: list[RawClient]) -> None:
    laptop = await login(clients, nodes[0], "frank", "room")
    await register(laptop, "frank", "s3cret-pw")
    # The phone, on the other node, typed the nick in another case: still the same account.
    phone = await RawClient.connect(nodes[1].port)
    clients.append(phone)
    await phone.send("login Frank s3cret-pw")
    await phone.read_until("*** User change nick anonymous --> Frank", timeout=5)
    await phone.join("room", "Frank")
    ann = await login(clients, nodes[1], "ann", "room")
    for screen in (ann, laptop, phone):
        await screen.send("rooms")
        assert (await screen.read_until("*** Rooms"))[-1] == "*** Rooms: #room (2)"


async def test_who_names_an_account_on_two_nodes_once(nodes: list[ServerProcess], clients: list[RawClient]) -> None:
    laptop = await login(clients, nodes[0], "frank", "room")
    await register(laptop, "frank", "s3cret-pw")
    pac = await login(clients, nodes[0], "pac", "room")
    await register(pac, "pac", "s3cret-pw")
    # Sessions on the other node: frank typed in another case, pac in Cyrillic lookalikes.
    for typed in ("Frank", "\u0440\u0430\u0441"):
        other = await RawClient.connect(nodes[1].port)
        clients.append(other)
        await other.send(f"login {typed} s3cret-pw")
        await other.read_until(f"*** User change nick anonymous --> {typed}", timeout=5)
        await other.join("room", typed)
    # Anonymous members on the other node are one each, not one nick.
    for _ in range(2):
        anonymous = await RawClient.connect(nodes[1].port)
        clients.append(anonymous)
        await anonymous.join("room", "anonymous")
    ann = await login(clients, nodes[1], "ann", "room")
    # Each node names an account as its own session there does.
    for screen, names in ((laptop, "ann, frank, pac"), (ann, "ann, Frank, \u0440\u0430\u0441")):
        await screen.send("rooms")
        assert (await screen.read_until("*** Rooms"))[-1] == "*** Rooms: #room (5)"
        for asked, head in (("who", "*** Users in #room"), ("who *", "*** Users online")):
            await screen.send(asked)
            assert (await screen.read_until(head))[-1] == f"{head}: {names} (+2 anonymous)"
