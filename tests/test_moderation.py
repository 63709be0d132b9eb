"""Operators: kick, ban, unban, mute, unmute and topic, and their refusal to everyone else."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from telchat.config import Config
from telchat.rules.names import nick_key
from tests.clients import LineClient, RawClient, registered_member
from tests.conftest import TEST_CONFIG, Connect, running, user
from tests.procs import ServerProcess
from tests.test_accounts import CHEAP_HASHES, registered

BANNED_ADDRESS = "*** Your address is banned from this server: go away"


@pytest.fixture
def config(config: Config) -> Config:
    return replace(config, operators="boss,Chief")


async def operator(connect: Connect, room: str | None = None) -> LineClient:
    boss = await registered(connect, "boss", "boss-password")
    if room:
        await boss.join(room, "boss")
    return boss


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("/kick bob", "kick"),
        ("/kick bob go away", "kick"),
        ("/ban bob", "ban"),
        ("/ban 10.0.0.1 1h spam", "ban"),
        ("/unban bob", "unban"),
        ("/bans", "bans"),
        ("/mute bob 10m", "mute"),
        ("/unmute bob", "unmute"),
        ("/topic a new topic", "topic"),
    ],
)
async def test_operator_commands_are_refused_to_others(connect: Connect, line: str, command: str) -> None:
    await user(connect, "bob", "room")
    # `boss` is in --operators, but only its registered, logged-in account is an operator.
    impostor = await user(connect, "boss", "room")
    await impostor.drain()
    await impostor.send(line)
    await impostor.expect(f"*** Only operators can use {command}")


async def test_help_lists_operator_commands_to_operators(connect: Connect) -> None:
    boss = await operator(connect)
    await boss.send("help")
    lines = await boss.read_until("*** Type help <command>")
    assert "*** Operator commands: kick, ban, unban, bans, mute, unmute" in lines
    assert all(len(line) < 80 for line in lines)


async def test_kick(connect: Connect) -> None:
    boss = await operator(connect, "room")
    bob = await user(connect, "bob", "room")
    ann = await user(connect, "ann", "room")
    await boss.drain()
    await bob.drain()
    await boss.send("/kick BOB spamming links")
    await boss.expect("*** Kicked bob: spamming links")
    rest = await bob.wait_closed()
    assert b"*** You were kicked by boss: spamming links\r\n*** have a nice day ***\r\n" in rest
    assert (await ann.read_until("*** User bob quit"))[-1] == "*** User bob quit (kicked by boss: spamming links)"
    assert await boss.read_line() == "*** User bob quit (kicked by boss: spamming links)"
    await boss.send("/kick nobody")
    await boss.expect("*** No such user: nobody")
    await boss.send("/kick")
    await boss.expect("*** Usage: kick <nick> [reason]")


async def test_ban_nick_then_unban(connect: Connect) -> None:
    boss = await operator(connect)
    bob = await user(connect, "bob")
    await boss.drain()
    await boss.send("/ban bob flooding the room")
    await boss.expect("*** Banned bob permanently: flooding the room")
    assert b"*** You are banned from this server by boss: flooding the room" in await bob.wait_closed()
    again = await connect()
    await again.send("login Bob")
    await again.expect("*** Nick Bob is banned: flooding the room")
    await boss.send("/bans")
    await boss.expect("*** Bans: bob (permanent, by boss: flooding the room)")
    await boss.send("/unban bob")
    await boss.expect("*** Unbanned bob")
    await again.login("bob")
    await boss.read_until("*** User change nick anonymous --> bob")
    await boss.send("/unban bob")
    await boss.expect("*** bob is not banned")
    await boss.send("/bans")
    await boss.expect("*** No bans")


async def test_ban_with_duration_expires(connect: Connect) -> None:
    boss = await operator(connect)
    await boss.send("/ban carol 1s")
    await boss.expect("*** Banned carol for 1s")
    carol = await connect()
    await carol.send("login carol")
    await carol.expect("*** Nick carol is banned")
    await asyncio.sleep(1.1)
    await carol.login("carol")


async def test_banned_address_is_refused_at_connect(connect: Connect, port: int) -> None:
    boss = await operator(connect, "room")
    bob = await user(connect, "bob", "room")
    await boss.drain()
    await boss.send("/ban 127.0.0.1 go away")
    await boss.expect("*** Banned 127.0.0.1 permanently: go away")
    # Everyone from the address goes, except operators (who could not lift it otherwise).
    assert b"*** You are banned from this server by boss: go away" in await bob.wait_closed()
    assert await boss.read_line() == "*** User bob quit (banned by boss: go away)"
    refused = await RawClient.connect(port, greet=False)
    assert await refused.wait_closed() == (BANNED_ADDRESS + "\r\n").encode()
    await refused.close()
    await boss.send("/unban 127.0.0.1")
    await boss.expect("*** Unbanned 127.0.0.1")
    welcome = await RawClient.connect(port)
    await welcome.close()


async def test_address_ranges(connect: Connect, port: int) -> None:
    boss = await operator(connect)
    await boss.send("/ban 127.0.0.0/8 10m go away")
    await boss.expect("*** Banned 127.0.0.0/8 for 10m: go away")
    refused = await RawClient.connect(port, greet=False)
    assert await refused.wait_closed() == (BANNED_ADDRESS + "\r\n").encode()
    await refused.close()


@pytest.mark.parametrize("written", ["::ffff:127.0.0.1", "::ffff:127.0.0.0/104", "::FFFF:7f00:1"])
async def test_ipv4_mapped_ban_matches_the_ipv4_address(connect: Connect, port: int, written: str) -> None:
    boss = await operator(connect)
    await boss.send(f"/ban {written} go away")
    shown = "127.0.0.0/8" if "/" in written else "127.0.0.1"
    await boss.expect(f"*** Banned {shown} permanently: go away")
    refused = await RawClient.connect(port, greet=False)
    assert await refused.wait_closed() == (BANNED_ADDRESS + "\r\n").encode()
    await refused.close()
    await boss.send(f"/unban {written}")
    await boss.expect(f"*** Unbanned {shown}")


async def test_password_change_ends_every_link_to_the_account(connect: Connect) -> None:
    thief = await registered(connect, "boss", "boss-password")
    await thief.send("nick eve")
    await thief.expect("*** User change nick boss --> eve")
    owner = await connect()
    await owner.send("login boss boss-password")
    await owner.read_until("*** User change nick anonymous --> boss")
    await owner.send("password boss-password fresh-password")
    await owner.expect("*** Password changed")
    gone = await thief.wait_closed()
    assert b"*** The password of boss was changed from another connection; log in again" in gone
    # The owner keeps the nick and its rights; the old password opens nothing.
    await owner.send("/bans")
    await owner.expect("*** No bans")
    again = await connect()
    await again.send("login boss boss-password")
    await again.expect("*** Wrong password for boss")


async def test_bad_moderation_input(connect: Connect) -> None:
    boss = await operator(connect, "room")
    for line, error in [
        ("/ban", "*** Usage: ban <nick|address> [duration] [reason]"),
        ("/ban bad!nick", "*** Invalid ban target 'bad!nick': a nick or an IP address"),
        ("/mute bob soon", "*** Invalid duration 'soon': a number with s, m, h, d or w (10m, 2h, 7d)"),
        ("/mute bob 10m #bad!", "*** Invalid room name '#bad!': 1-32 letters, digits, _, - or ."),
        ("/unmute bob", "*** bob is not muted in #room"),
        ("/unban 10.1.2.3", "*** 10.1.2.3 is not banned"),
        ("/mute 1bob", "*** Invalid nick '1bob': 1-24 letters of one script, digits, _ or -, starting with a letter"),
    ]:
        await boss.send(line)
        await boss.expect(error)


async def test_mute_in_a_room(connect: Connect) -> None:
    boss = await operator(connect, "room")
    bob = await user(connect, "bob", "room")
    await bob.join("other", "bob")
    await bob.send("join room")
    await bob.expect("*** Current room is now #room")
    await boss.drain()
    await boss.send("/mute bob 10m")
    await boss.expect("*** Muted bob in #room for 10m")
    assert await bob.read_line() == "*** You were muted in #room by boss for 10m"
    await bob.send("can you hear me")
    await bob.expect("*** You are muted in #room")
    await bob.send("/msg boss private still works")
    await bob.expect("-> *boss*> private still works")
    await bob.send("join other")
    await bob.expect("*** Current room is now #other")
    await bob.send("elsewhere is fine")
    await bob.expect("#other:bob> elsewhere is fine")
    await boss.drain()
    await boss.send("/unmute bob #room")
    await boss.expect("*** Unmuted bob in #room")
    assert await bob.read_line() == "*** You were unmuted in #room"
    await bob.send("join room")
    await bob.expect("*** Current room is now #room")
    await bob.send("hello again")
    await bob.expect("#room:bob> hello again")


async def test_mute_everywhere_and_its_expiry(connect: Connect) -> None:
    boss = await operator(connect)
    bob = await user(connect, "bob", "room")
    await boss.drain()
    await boss.send("/mute bob 1s *")
    await boss.expect("*** Muted bob on this server for 1s")
    assert await bob.read_line() == "*** You were muted on this server by boss for 1s"
    await bob.send("hello")
    await bob.expect("*** You are muted on this server")
    await bob.send("/msg boss hi")
    await bob.expect("*** You are muted on this server")
    await bob.send("nick robert")
    await bob.expect("*** You cannot change your nick while muted")
    await asyncio.sleep(1.1)
    await bob.send("hello")
    await bob.expect("#room:bob> hello")


async def test_a_mute_covers_quit_reasons_away_text_topics_and_nicks(connect: Connect) -> None:
    boss = await operator(connect, "room")
    chief = await registered(connect, "Chief", "chief-password")
    await chief.join("room", "Chief")
    bob = await user(connect, "bob", "room")
    await bob.send("/away back soon")
    await bob.expect("*** You are marked as away")
    for nick, client in (("bob", bob), ("Chief", chief)):
        await boss.send(f"/mute {nick} 10m")
        await boss.read_until(f"*** Muted {nick} in #room for 10m")
        await client.read_until("*** You were muted in #room by boss for 10m")
    refused = (
        (bob, "/away buy cheap pills", "*** You cannot set an away message while muted; type away alone"),
        (bob, "nick BOB", "*** You cannot change your nick while muted"),
        (chief, "/topic buy cheap pills", "*** You are muted in #room"),
    )
    for client, line, answer in refused:
        await client.send(line)
        await client.expect(answer)
    await boss.drain()
    await boss.send("/whois bob")
    whois = await boss.read_until("*** bob connects from")
    assert "*** bob is away" in whois and not any("back soon" in line for line in whois)
    await bob.send("/quit buy cheap pills")
    await bob.wait_closed()
    assert await boss.read_line() == "*** User bob quit (quit)"


async def test_mute_holds_across_reconnects(connect: Connect) -> None:
    boss = await operator(connect)
    bob = await user(connect, "bob")
    await boss.drain()
    await boss.send("/mute bob")
    await boss.expect("*** Muted bob on this server permanently")
    await bob.send("quit")
    await bob.wait_closed()
    again = await user(connect, "bob", "room")
    await again.send("hello")
    await again.expect("*** You are muted on this server")


async def test_topic(connect: Connect) -> None:
    boss = await operator(connect, "room")
    bob = await user(connect, "bob", "room")
    await bob.send("topic")
    await bob.expect("*** #room has no topic")
    await boss.drain()
    await boss.send("/topic Be nice. Talk about frank.")
    assert await boss.read_line() == "*** boss set the topic of #room: Be nice. Talk about frank."
    assert await bob.read_line() == "*** boss set the topic of #room: Be nice. Talk about frank."
    ann = await user(connect, "ann")
    assert await ann.join("room", "ann") == [
        "*** #room history",
        "*** Topic of #room: Be nice. Talk about frank. (set by boss)",
        "*** User ann joined room #room",
    ]
    await ann.send("topic")
    await ann.expect("*** Topic of #room: Be nice. Talk about frank. (set by boss)")
    await boss.send("/topic -")
    await boss.read_until("*** boss cleared the topic of #room")
    await ann.read_until("*** boss cleared the topic of #room")
    await ann.send("topic")
    await ann.expect("*** #room has no topic")
    lonely = await user(connect, "cid")
    await lonely.send("topic")
    await lonely.expect("*** You are not in a room. Type join <room> first.")


async def test_bans_and_topics_survive_restart(tmp_path: Path) -> None:
    config = replace(TEST_CONFIG, store=f"sqlite:///{tmp_path / 'chat.db'}", operators="boss")
    async with running(config) as first:
        boss = await registered_member(first.port, "boss", "boss-password", "room")
        for line in ("/ban bob spam", "/topic Durable topic", "/mute cid *"):
            await boss.send(line)
        await boss.read_until("*** Muted cid")
        await boss.close()
    async with running(config) as second:
        bob = await RawClient.connect(second.port)
        await bob.send("login bob")
        await bob.expect("*** Nick bob is banned: spam")
        cid = await RawClient.connect(second.port)
        await cid.login("cid")
        lines = await cid.join("room", "cid")
        assert "*** Topic of #room: Durable topic (set by boss)" in lines
        await cid.send("hi")
        await cid.expect("*** You are muted on this server")
        await bob.close()
        await cid.close()


async def test_bans_and_mutes_stored_in_older_forms_still_hold(tmp_path: Path) -> None:
    config = replace(TEST_CONFIG, store=f"sqlite:///{tmp_path / 'chat.db'}")
    async with running(config) as first:
        # As older versions wrote them: nick keys case-folded only, mapped addresses as given.
        ban = {"shown": "mike", "by": "boss", "reason": "spam", "until": None}
        await first.store.put_record("ban", "nick:mike", ban)
        address = {"shown": "::ffff:127.0.0.1", "by": "boss", "reason": "go away", "until": None}
        await first.store.put_record("ban", "ip:::ffff:127.0.0.1/128", address)
        await first.store.put_record("mute", "* max", {"nick": "Max", "by": "boss", "until": None})
    for _ in range(2):  # and again after they were moved to their keys
        async with running(replace(config, operators="boss")) as server:
            refused = await RawClient.connect(server.port, greet=False)
            assert await refused.wait_closed() == (BANNED_ADDRESS + "\r\n").encode()
            await refused.close()
            assert "nick:rnike" in server.services.moderation.bans
            assert server.chat.muted(nick_key("Max"))
    async with running(config) as server:
        await server.store.put_record("ban", "ip:127.0.0.1/32", None)
        await server.store.put_record("ban", "nick:rnike", None)
        assert await server.store.records("ban") == {}


async def test_every_moderation_action_is_logged_with_who_did_it() -> None:
    server = ServerProcess("--store=memory://", "--operators=boss", *CHEAP_HASHES)
    try:
        boss = await RawClient.connect(server.port)
        await boss.login("boss")
        await boss.send("register boss-password")
        await boss.read_until("*** Nick boss is now registered")
        await boss.join("room", "boss")
        victim = await RawClient.connect(server.port)
        await victim.login("victim")
        for line, done in [
            ("/mute victim 5m", "*** Muted victim"),
            ("/unmute victim", "*** Unmuted victim"),
            ("/topic rules", "*** boss set the topic"),
            ("/kick victim bye", "*** Kicked victim"),
            ("/ban 10.9.8.7 1h spam", "*** Banned 10.9.8.7"),
            ("/unban 10.9.8.7", "*** Unbanned 10.9.8.7"),
        ]:
            await boss.send(line)
            await boss.read_until(done)
        await asyncio.sleep(0.2)
        assert server.stop() == 0
        await boss.close()
        await victim.close()
    finally:
        server.kill()
    actions = {e["action"]: e for e in server.events if e["event"] == "moderation"}
    assert set(actions) == {"mute", "unmute", "topic", "kick", "ban", "unban"}
    for record in actions.values():
        assert record["by"] == "boss"
        assert record["by_account"] == "boss"
        assert {"conn_id", "peer", "target", "timestamp"} <= record.keys()
    assert actions["kick"]["target"] == "victim"
    assert actions["kick"]["reason"] == "bye"
    assert actions["ban"]["duration"] == 3600
