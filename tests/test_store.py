"""SQLite durability: restarts, crashes (SIGKILL), trimming, bad store URLs."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import fields, replace
from pathlib import Path

import pytest

from telchat.app import App
from telchat.store.base import StoreError
from telchat.store.events import Event, message
from telchat.store.sqlite import SqliteStore
from telchat.store.url import make_store
from tests.clients import RawClient
from tests.conftest import TEST_CONFIG, running
from tests.procs import ServerProcess, run_server


async def test_history_survives_restart(tmp_path: Path) -> None:
    config = replace(TEST_CONFIG, store=f"sqlite:///{tmp_path / 'chat.db'}")
    first = App(config)
    await first.start()
    bob = await RawClient.connect(first.port)
    await bob.login("bob")
    await bob.join("Lobby", "bob")
    for i in range(3):
        await bob.send(f"before restart {i}")
    await bob.read_until("#Lobby:bob> before restart 2")
    await first.stop()
    await bob.close()

    second = App(config)
    await second.start()
    try:
        ann = await RawClient.connect(second.port)
        await ann.login("ann")
        lines = await ann.join("lobby", "ann")
        assert lines == [
            "*** #lobby history",
            *(f"#lobby:bob> before restart {i}" for i in range(3)),
            "*** User ann joined room #lobby",
        ]
        await ann.close()
    finally:
        await second.stop()


async def test_history_is_trimmed_to_keep(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    app = App(replace(TEST_CONFIG, store=f"sqlite:///{path}", history_keep=10))
    await app.start()
    try:
        bob = await RawClient.connect(app.port)
        await bob.login("bob")
        await bob.join("r", "bob")
        for i in range(50):
            await bob.send(f"m{i}")
        await bob.read_until("#r:bob> m49")
        await bob.send("history 1000")
        lines = await bob.read_until("#r:bob> m49")
        assert lines[1:] == [f"#r:bob> m{i}" for i in range(40, 50)]
        await bob.close()
    finally:
        await app.stop()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == 10


@pytest.mark.parametrize("url", ["ftp://x", "sqlite://host/x.db", "memory://x", "sqlite:///", "nonsense"])
def test_bad_store_urls_are_refused(url: str) -> None:
    with pytest.raises(StoreError, match="unsupported store URL"):
        make_store(url, 100)


@pytest.mark.parametrize("url", ["ftp://x", "sqlite:////dev/null/telchat.db"])
def test_unusable_store_exits_2(url: str) -> None:
    result = run_server("--host=127.0.0.1", "--port=0", f"--store={url}", "--log-format=json")
    assert result.returncode == 2
    assert result.stderr.startswith("telchat: ")
    assert len(result.stderr.strip().splitlines()) == 1


async def _talk(client: RawClient, nick: str, stop: asyncio.Event) -> None:
    i = 0
    # 3 talkers x 300 lines stay within `history 1000`, so the whole run can be checked.
    while not stop.is_set() and i < 300:
        await client.send(f"{nick} says {i}")
        i += 1
        await asyncio.sleep(0.001)


async def _collect(client: RawClient) -> list[str]:
    received: list[str] = []
    try:
        while True:
            line = await client.read_line(timeout=5)
            if line.startswith("#crash:"):
                received.append(line)
    except (EOFError, TimeoutError, ConnectionError):
        return received


async def test_everything_seen_survives_sigkill(tmp_path: Path) -> None:
    store = f"--store=sqlite:///{tmp_path / 'crash.db'}"
    # Scripted talkers type faster than people: no fakelag, this test is about durability.
    server = ServerProcess(store, "--flood-rate=0")
    clients = []
    for nick in ("a", "b", "c"):
        client = await RawClient.connect(server.port)
        await client.login(nick)
        await client.join("crash", nick)
        clients.append(client)
    await asyncio.sleep(0.1)
    collectors = [asyncio.create_task(_collect(c)) for c in clients]
    stop = asyncio.Event()
    talkers = [asyncio.create_task(_talk(c, n, stop)) for c, n in zip(clients, "abc", strict=True)]
    await asyncio.sleep(0.4)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    stop.set()
    await asyncio.gather(*talkers, return_exceptions=True)
    seen = await asyncio.gather(*collectors)
    assert all(len(lines) > 20 for lines in seen), [len(lines) for lines in seen]

    restarted = ServerProcess(store)
    try:
        reader = await RawClient.connect(restarted.port)
        await reader.login("reader")
        await reader.join("crash", "reader")
        await reader.send("history 1000")
        await reader.expect("*** #crash history")
        history = [line for line in await reader.drain(quiet=0.5) if line.startswith("#crash:")]
    finally:
        restarted.kill()
    assert len(history) == len(set(history)), "a line is in the history twice"
    position = {line: i for i, line in enumerate(history)}
    for lines in seen:
        missing = [line for line in lines if line not in position]
        assert not missing, f"seen but not in history: {missing[:3]}"
        order = [position[line] for line in lines]
        assert order == sorted(order), "history order differs from delivery order"


def test_with_id_keeps_every_field() -> None:
    # with_id lists the fields positionally: a new or reordered field must not slip.
    event = Event("notice", "text", "r", "R", "nick", ("a", "b"), "t", True, 12.5, (1, 2))
    assert event.with_id((7, 0)) == replace(event, id=(7, 0))
    assert [f.name for f in fields(Event)][-1] == "id"


V1_SCHEMA = """
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, room TEXT NOT NULL, room_name TEXT NOT NULL,
    nick TEXT NOT NULL, kind TEXT NOT NULL, text TEXT NOT NULL, ts REAL NOT NULL
);
CREATE INDEX messages_room_id ON messages (room, id);
CREATE TABLE records (kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (kind, key));
"""


async def test_a_version_1_database_is_converted(tmp_path: Path) -> None:
    """Files written before history was kept in chunks (a row per line) open with their
    history, records and ids intact, and new lines continue after the old ids."""
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as db:
        db.executescript(V1_SCHEMA)
        rows = [(f"r{i % 2}", f"R{i % 2}", "bob", "say", f"old {i}", 1.0 + i) for i in range(250)]
        db.executemany("INSERT INTO messages (room, room_name, nick, kind, text, ts) VALUES (?,?,?,?,?,?)", rows)
        db.execute("INSERT INTO records VALUES ('account', 'bob', '{\"hash\": \"x\"}')")
    store = SqliteStore(str(path), keep=1000)
    delivered: list[Event] = []
    await store.open(delivered.append)
    try:
        old = await store.recent("r1", 1000)
        assert [e.text for e in old] == [f"old {i}" for i in range(1, 250, 2)]
        assert [e.id for e in old] == [(i + 1, 0) for i in range(1, 250, 2)]
        assert old[0].room_name == "R1" and old[0].ts == 2.0
        assert await store.get_record("account", "bob") == {"hash": "x"}
        store.publish(message("say", "r1", "R1", "ann", "new"))
        await store.settled()
        assert delivered[-1].id == (251, 0)
        assert [e.text for e in await store.recent("r1", 2)] == ["old 249", "new"]
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (3,)
        assert db.execute("SELECT count(*) FROM messages WHERE room = 'r0'").fetchone() == (125,)
        assert db.execute("SELECT id, nick, text FROM messages ORDER BY id DESC LIMIT 1").fetchone() == (
            251,
            "ann",
            "new",
        )


async def test_recent_and_trim_across_chunks(tmp_path: Path) -> None:
    """Lines committed in one turn share a row; `recent` and the trim cut inside rows."""
    store = SqliteStore(str(tmp_path / "c.db"), keep=25)
    await store.open(lambda event: None)
    try:
        for turn in range(8):
            for i in range(7):
                store.publish(message("say", "r", "r", "bob", f"t{turn} l{i}"))
            store.publish(message("say", "other", "other", "ann", f"other {turn}"))
            await store.settled()
        texts = [f"t{turn} l{i}" for turn in range(8) for i in range(7)]
        assert [e.text for e in await store.recent("r", 10)] == texts[-10:]
        assert [e.text for e in await store.recent("r", 1000)] == texts[-25:]
        assert [e.text for e in await store.recent("other", 3)] == ["other 5", "other 6", "other 7"]
    finally:
        await store.close()


LOCK_HOLDER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("COMMIT")
"""


@asynccontextmanager
async def locked(path: Path) -> AsyncIterator[None]:
    """Another process holds `path`'s write lock for the block."""
    holder = await asyncio.create_subprocess_exec(sys.executable, "-c", LOCK_HOLDER, str(path), stdin=PIPE, stdout=PIPE)
    assert holder.stdout is not None and holder.stdin is not None
    assert await holder.stdout.readline() == b"locked\n"
    try:
        yield
    finally:
        holder.stdin.write(b"go\n")
        await holder.wait()


async def test_a_lock_held_by_another_process_never_blocks_the_loop(tmp_path: Path) -> None:
    """Finding 16: a record write waits for the lock off the loop; others are answered meanwhile."""
    path = tmp_path / "chat.db"
    async with running(replace(TEST_CONFIG, store=f"sqlite:///{path}")) as app:
        ann, bob = await RawClient.connect(app.port), await RawClient.connect(app.port)
        await ann.login("ann")
        await ann.send("register correct-horse")
        await ann.read_until("*** Nick ann is now registered to you")
        await bob.login("bob")
        await ann.read_until("*** User change nick anonymous --> bob")
        async with locked(path):
            await ann.send("set bell on")  # its record write now waits for the lock
            setting = asyncio.create_task(ann.read_line(timeout=30))
            await asyncio.sleep(0.1)
            await bob.send("who")
            answered = await bob.read_line()
            # The loop answered bob while ann's write still waited: before, the loop
            # itself waited out the busy timeout, then failed ann's write.
            assert answered.startswith("*** Users online:") and not setting.done()
        assert await setting == "*** bell is now on"
        await ann.close()
        await bob.close()
