"""Finding old lines: search with its filters and pages, history since, time zones."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from telchat.app import App
from telchat.store.base import Query
from telchat.store.events import Event
from telchat.store.sqlite import SqliteStore
from tests.clients import RawClient
from tests.conftest import Connect, user
from tests.procs import ServerProcess
from tests.redis_server import login
from tests.test_redis import nodes  # noqa: F401 - the two-node fixture

STAMP = r"(\d{4}-\d\d-\d\d )?\d\d:\d\d "
HOUR = 3600.0


async def said(app: App, room: str, nick: str, text: str, ts: float) -> None:
    """A line in `room`'s history as if `nick` had said it at `ts`."""
    app.store.publish(Event("say", text, room=room.lower(), room_name=room, nick=nick, ts=ts))
    await app.store.settled()


def unstamped(lines: list[str]) -> list[str]:
    for line in lines:
        assert re.match(STAMP, line), line
    return [re.sub("^" + STAMP, "", line) for line in lines]


async def results(client: RawClient, command: str) -> list[str]:
    await client.send(command)
    lines = [await client.read_line()]
    while not lines[-1].startswith("*** "):
        lines.append(await client.read_line())
    return [*unstamped(lines[:-1]), lines[-1]]


async def test_search_with_each_filter_and_pages(app: App, connect: Connect) -> None:
    now = time.time()
    await said(app, "Lobby", "bob", "the deploy is broken", now - 5 * HOUR)
    await said(app, "Lobby", "ann", "Deploy fixed, sorry", now - 3 * HOUR)
    await said(app, "Ops", "bob", "deploy again tomorrow", now - HOUR)
    await said(app, "Ops", "ann", "nothing to see", now - HOUR)
    for i in range(12):
        await said(app, "Ops", "cat", f"spam {i}", now - 60 + i)
    ann = await user(connect, "ann")
    assert await results(ann, "/search deploy") == [
        "#Ops:bob> deploy again tomorrow",
        "#Lobby:ann> Deploy fixed, sorry",
        "#Lobby:bob> the deploy is broken",
        "*** End of results",
    ]
    assert await results(ann, "/search deploy in lobby") == [
        "#Lobby:ann> Deploy fixed, sorry",
        "#Lobby:bob> the deploy is broken",
        "*** End of results",
    ]
    assert await results(ann, "/search deploy from BOB") == [
        "#Ops:bob> deploy again tomorrow",
        "#Lobby:bob> the deploy is broken",
        "*** End of results",
    ]
    assert await results(ann, "/search deploy since 4h") == [
        "#Ops:bob> deploy again tomorrow",
        "#Lobby:ann> Deploy fixed, sorry",
        "*** End of results",
    ]
    assert await results(ann, "/search deploy fixed from bob") == ["*** Nothing found"]
    assert await results(ann, "/search spam") == [
        *(f"#Ops:cat> spam {i}" for i in range(11, 1, -1)),
        "*** More found: type search more",
    ]
    assert await results(ann, "search more") == ["#Ops:cat> spam 1", "#Ops:cat> spam 0", "*** End of results"]
    assert await results(ann, "search more") == ["*** No search to continue; type search <words> first"]
    assert await results(ann, "/search in lobby") == [
        "*** Usage: search <words> [in <room>] [from <nick>] [since 2h|14:00|2026-12-01] | search more"
    ]
    assert await results(ann, "/search x since soon") == [
        "*** Cannot tell when soon is; use a span (2h, 30m, 7d), a time (14:00) or a date (2026-12-01)"
    ]


async def test_history_since(app: App, connect: Connect) -> None:
    now = time.time()
    for hours in (30, 5, 2, 1):
        await said(app, "room", "bob", f"{hours}h ago", now - hours * HOUR)
    ann = await user(connect, "ann", "room")
    await ann.drain()
    await ann.send("history since 3h")
    await ann.expect("*** #room history", "#room:bob> 2h ago", "#room:bob> 1h ago")
    # The last 14:00 that has passed, wherever in the day the test runs.
    start = datetime.fromtimestamp(now - 2.5 * HOUR).strftime("%H:%M")
    await ann.send(f"/history since {start}")
    await ann.expect("*** #room history", "#room:bob> 2h ago", "#room:bob> 1h ago")
    day = datetime.fromtimestamp(now - 29 * HOUR).date().isoformat()
    await ann.send(f"history since {day}")
    lines = await ann.read_until("#room:bob> 1h ago")
    assert lines[0] == "*** #room history" and "#room:bob> 5h ago" in lines
    await ann.send("history since when")
    await ann.expect("*** Cannot tell when when is; use a span (2h, 30m, 7d), a time (14:00) or a date (2026-12-01)")
    await ann.send("history lesson today")
    await ann.expect("#room:ann> history lesson today")


async def until_ends(client: RawClient, end: str) -> list[str]:
    lines = [await client.read_line()]
    while not lines[-1].endswith(end):
        lines.append(await client.read_line())
    return lines


def local(ts: float, zone: str) -> str:
    """`ts` as `stamp` shows it in `zone` today."""
    moment, today = datetime.fromtimestamp(ts, ZoneInfo(zone)), datetime.now(ZoneInfo(zone))
    return moment.strftime("%H:%M" if moment.date() == today.date() else "%Y-%m-%d %H:%M")


async def test_a_time_zone_applies_to_replay_and_is_saved(app: App, connect: Connect) -> None:
    ts = time.time() - 3 * HOUR
    await said(app, "room", "bob", "from the past", ts)
    frank = await user(connect, "frank")
    await frank.send("register s3cret-pw")
    await frank.read_until("*** Nick frank is now registered")
    await frank.send("set timestamps on")
    await until_ends(frank, "*** timestamps is now on")
    await frank.send("set tz Mars/Olympus")
    await until_ends(
        frank, " *** Unknown time zone Mars/Olympus; use a name like Europe/Moscow or America/New_York, or server"
    )
    # Far from the server's zone (UTC here), and on the other side of it.
    for zone in ("America/Los_Angeles", "Asia/Kathmandu"):
        await frank.send(f"set tz {zone}")
        await until_ends(frank, f" *** Time zone is now {zone}")
        await frank.send("join room")
        lines = await until_ends(frank, "*** User frank joined room #room")
        assert f"{local(ts, zone)} #room:bob> from the past" in lines
        assert lines[-1] == f"{local(time.time(), zone)} *** User frank joined room #room"
        await frank.send("leave")
        await until_ends(frank, "*** User frank left room #room")
    await frank.send("quit")
    await frank.wait_closed()
    again = await RawClient.connect(app.port)
    await again.send("login frank s3cret-pw")
    await until_ends(again, "*** User change nick anonymous --> frank")
    await again.send("set")
    assert (await until_ends(again, "tz Asia/Kathmandu"))[-1].endswith(
        "*** Settings: charset utf-8, timestamps on, bell off, highlight on, catchup on, tz Asia/Kathmandu"
    )


async def test_the_search_index_follows_the_trim_and_is_built_for_old_files(tmp_path: Path) -> None:
    path = tmp_path / "fts.db"
    store = SqliteStore(str(path), keep=25)
    await store.open(lambda event: None)
    try:
        for turn in range(8):
            for i in range(7):
                store.publish(Event("say", f"word t{turn} l{i}", room="r", room_name="r", nick="bob"))
            await store.settled()
        found = await store.search(Query(words=("word",)), None, 1000)
        assert [e.text for e in found] == [f"word t{t} l{i}" for t in range(8) for i in range(7)][-25:][::-1]
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        # One index row per chunk kept, none for the chunks the trim dropped.
        assert (
            db.execute("SELECT rowid FROM search ORDER BY rowid").fetchall()
            == db.execute("SELECT first FROM chunks ORDER BY first").fetchall()
        )
        # A version 2 file: history in chunks, no index.
        db.execute("DROP TABLE search")
        db.execute("PRAGMA user_version = 2")
    store = SqliteStore(str(path), keep=25)
    await store.open(lambda event: None)
    try:
        found = await store.search(Query(words=("t7",), nick="bob"), None, 3)
        assert [e.text for e in found] == ["word t7 l6", "word t7 l5", "word t7 l4"]
    finally:
        await store.close()


async def test_search_across_redis_nodes(nodes: list[ServerProcess], clients: list[RawClient]) -> None:  # noqa: F811
    ann = await login(clients, nodes[0], "ann", "lobby")
    bob = await login(clients, nodes[1], "bob", "ops")
    await ann.send("release at noon")
    await bob.send("release notes ready")
    for i in range(11):
        await bob.send(f"release {i}")
    await bob.read_until("#ops:bob> release 10")
    await asyncio.sleep(0.1)
    await ann.drain()
    assert await results(ann, "/search release notes") == ["#ops:bob> release notes ready", "*** End of results"]
    assert await results(ann, "/search release in lobby since 1h") == [
        "#lobby:ann> release at noon",
        "*** End of results",
    ]
    page = await results(ann, "/search release from bob")
    assert page == [*(f"#ops:bob> release {i}" for i in range(10, 0, -1)), "*** More found: type search more"]
    assert await results(ann, "search more") == [
        "#ops:bob> release 0",
        "#ops:bob> release notes ready",
        "*** End of results",
    ]


async def test_index_rows_of_dropped_chunks_never_show_and_are_pruned(tmp_path: Path) -> None:
    """Dropped chunks' index rows are deleted in batches; until then a search skips them,
    and an open after a crash (here: rows put back by hand) prunes them."""
    path = tmp_path / "stale.db"
    store = SqliteStore(str(path), keep=5)
    await store.open(lambda event: None)
    try:
        for i in range(20):
            store.publish(Event("say", f"needle {i}", room="r", room_name="r", nick="bob"))
            await store.settled()
        found = await store.search(Query(words=("needle",)), None, 100)
        assert [e.text for e in found] == [f"needle {i}" for i in range(19, 14, -1)]
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO search (rowid, text, room, last) VALUES (1, 'needle gone', 'r', 1)")
    store = SqliteStore(str(path), keep=5)
    await store.open(lambda event: None)
    await store.close()
    with sqlite3.connect(path) as db:
        assert (
            db.execute("SELECT rowid FROM search ORDER BY rowid").fetchall()
            == db.execute("SELECT first FROM chunks ORDER BY first").fetchall()
        )
