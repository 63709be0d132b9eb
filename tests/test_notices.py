"""Notices to a big room may wait a moment to share a write (a storm of joins cost a write
per member per join); what they are about, and their order, never change."""

from __future__ import annotations

from telchat.chat.rooms import LINGER_AUDIENCE
from tests.clients import LineClient
from tests.conftest import Connect, user


async def test_a_big_rooms_joins_linger_but_never_trail_what_follows(connect: Connect) -> None:
    crowd = [await user(connect, f"m{i}", "big") for i in range(LINGER_AUDIENCE + 1)]
    watcher = crowd[0]
    await watcher.read_until(f"*** User m{LINGER_AUDIENCE} joined room #big")  # the first that lingered
    # A joiner gets its own join line as its answer, whatever the room's size.
    late = await connect()
    await late.login("late")
    assert (await late.join("big", "late"))[-1] == "*** User late joined room #big"
    await late.send("hello")  # right behind its join: the room sees the join first
    seen = await watcher.read_until("#big:late> hello")
    assert [line for line in seen if "#big" in line] == ["*** User late joined room #big", "#big:late> hello"]
    # Joins with nothing behind them arrive too, in order.
    others: list[LineClient] = []
    for nick in ("x1", "x2", "x3"):
        client = await connect()
        await client.login(nick)
        await client.join("big", nick)
        others.append(client)
    seen = await watcher.read_until("*** User x3 joined room #big", timeout=5)
    joins = [f"*** User {nick} joined room #big" for nick in ("x1", "x2", "x3")]
    assert [line for line in seen if "#big" in line] == joins
