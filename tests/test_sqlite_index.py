"""SQLite's search index is written in batches of chunks, and a search sees every committed
line all the same: the newest chunks straight from history, the rest through the index."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

from telchat.store.base import Cursor, Query
from telchat.store.events import Event
from telchat.store.sqlite import INDEX_BATCH, SqliteStore
from tests.clients import RawClient
from tests.conftest import user
from tests.procs import ServerProcess
from tests.test_search import results


def rows(path: Path, table: str) -> int:
    with sqlite3.connect(path) as db:
        (count,) = db.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(count)


async def test_one_line_commits_are_indexed_a_batch_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "batch.db"
    store = SqliteStore(str(path))
    await store.open(lambda event: None)
    total = INDEX_BATCH + 6
    try:
        for i in range(total):
            store.publish(Event("say", f"needle {i}", room=f"r{i % 3}", room_name=f"r{i % 3}", nick="bob"))
            await store.settled()  # one commit per line, as on a quiet server
        # One transaction wrote the first INDEX_BATCH chunks' rows; the last 6 wait.
        assert (rows(path, "chunks"), rows(path, "search")) == (total, INDEX_BATCH)
        everything = [f"needle {i}" for i in reversed(range(total))]
        assert [e.text for e in await store.search(Query(words=("needle",)), None, 1000)] == everything
        assert [e.text for e in await store.search(Query(words=("needle",), room="r1"), None, 1000)] == [
            text for text in everything if int(text.split()[1]) % 3 == 1
        ]
        # Pages of 4 cross from the lines read directly to the indexed ones, none lost or twice.
        paged: list[str] = []
        before: Cursor | None = None
        while page := await store.search(Query(words=("needle",)), before, 4):
            paged += [e.text for e in page]
            before = (page[-1].ts, page[-1].id)
        assert paged == everything
    finally:
        await store.close()
    assert rows(path, "search") == total  # close writes the rest


async def test_lines_not_yet_indexed_are_found_after_kill_9(tmp_path: Path) -> None:
    store = f"--store=sqlite:///{tmp_path / 'kill.db'}"
    server = ServerProcess(store)
    try:
        bob = await user(lambda: RawClient.connect(server.port), "bob", "room")
        for i in range(3):
            await bob.send(f"needle {i}")
        await bob.read_until("#room:bob> needle 2")
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        await bob.close()
    finally:
        server.kill()
    assert rows(tmp_path / "kill.db", "search") == 0  # history committed, its index not yet
    server = ServerProcess(store)
    try:
        ann = await user(lambda: RawClient.connect(server.port), "ann")
        assert await results(ann, "/search needle") == [
            "#room:bob> needle 2",
            "#room:bob> needle 1",
            "#room:bob> needle 0",
            "*** End of results",
        ]
    finally:
        server.kill()
    assert rows(tmp_path / "kill.db", "search") == rows(tmp_path / "kill.db", "chunks") > 0  # the open indexed them
