"""Long answers: a cap on rooms per user, and `rooms`, `who` and `whois` in short lines and pages."""

from __future__ import annotations

from telchat.rules.pages import LINE_CHARS, PAGE_ITEMS
from tests.clients import LineClient, RawClient
from tests.conftest import running, with_config

ROOMS_EACH = 50
# A long line is about LINE_CHARS characters; a room name or nick may carry it past a bit.
LONGEST = LINE_CHARS + 40


def room_name(i: int) -> str:
    return f"room_{i:04d}_" + "x" * 22


async def in_rooms(port: int, nick: str, rooms: range) -> LineClient:
    client = await RawClient.connect(port)
    await client.login(nick)
    for i in rooms:
        await client.join(room_name(i), nick)
    return client


async def test_rooms_per_user_are_capped() -> None:
    async with running(with_config(max_rooms_per_user=3)) as server:
        bob = await in_rooms(server.port, "bob", range(3))
        await bob.send("join one_more")
        await bob.expect("*** You are in 3 rooms, the most allowed; leave one first")
        await bob.send(f"join {room_name(0)}")
        await bob.expect(f"*** Current room is now #{room_name(0)}")
        await bob.send("left")
        await bob.read_until("*** Current room is now")
        await bob.join("one_more", "bob")
        await bob.close()


async def test_rooms_and_whois_come_in_short_lines_and_pages() -> None:
    async with running(with_config(sendq_bytes=16384)) as server:
        users = [await in_rooms(server.port, f"u{n}", range(n * ROOMS_EACH, (n + 1) * ROOMS_EACH)) for n in range(3)]
        asker = users[0]
        await asker.drain()
        await asker.send("rooms")
        first = await asker.read_until("*** Page 1 of 2")
        assert first[0].startswith(f"*** Rooms: #{room_name(0)} (1), #{room_name(1)} (1),")
        assert first[-1] == "*** Page 1 of 2: type /rooms 2 for more"
        await asker.send("/rooms 2")
        second = await asker.read_until("*** Your current room is")
        assert second[-1] == f"*** Your current room is #{room_name(ROOMS_EACH - 1)}"
        listed = " ".join(first[:-1] + second[:-1])
        assert all(f"#{room_name(i)} (1)" in listed for i in range(3 * ROOMS_EACH))
        assert listed.count("#room_") == 3 * ROOMS_EACH
        await asker.send("/rooms 3")
        await asker.expect("*** No page 3: there are 2")
        await asker.send(f"whois u{1}")
        whois = await asker.read_until("*** u1 has been idle")
        assert whois[0].startswith(f"*** u1 is in #{room_name(ROOMS_EACH)}, ")
        assert " ".join(whois).count("#room_") == ROOMS_EACH
        for line in first + second + whois:
            assert len(line.encode()) <= LONGEST, line
        for client in users:
            await client.close()


async def test_who_comes_in_pages() -> None:
    async with running(with_config()) as server:
        clients = []
        for n in range(PAGE_ITEMS + 5):
            client = await RawClient.connect(server.port)
            await client.login(f"user_{n:03d}_" + "y" * 12)
            clients.append(client)
        asker = clients[0]
        await asker.join("hall", asker_nick := "user_000_" + "y" * 12)
        await asker.send("who")
        await asker.expect(f"*** Users in #hall: {asker_nick}")
        await asker.drain()
        await asker.send("who *")
        first = await asker.read_until("*** Page 1 of 2")
        assert first[-1] == "*** Page 1 of 2: type /who * 2 for more"
        await asker.send("/who * 2")
        second = await asker.read_until("*** Your current room is #hall")
        listed = " ".join(first[:-1] + second[:-1])
        assert listed.count("y" * 12) == PAGE_ITEMS + 5
        for line in first + second:
            assert len(line.encode()) <= LONGEST, line
        for client in clients:
            await client.close()
