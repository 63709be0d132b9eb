"""SQLite's WAL checkpoints run on their own thread, and the WAL stays bounded under load."""

from __future__ import annotations

import asyncio
from pathlib import Path

from telchat.store.checkpoint import Checkpointer
from telchat.store.events import message
from telchat.store.sqlite import SqliteStore


async def _open(path: Path, every: int, limit: int) -> SqliteStore:
    store = SqliteStore(str(path))
    await store.open(lambda event: None)
    assert store._checkpointer is not None and store._db is not None
    store._checkpointer.stop()
    store._checkpointer = Checkpointer(str(path), every=every, limit=limit)
    store._checkpointer.configure(store._db)
    return store


def _wal_size(path: Path) -> int:
    wal = path.with_name(f"{path.name}-wal")
    return wal.stat().st_size if wal.exists() else -1


async def _commit(store: SqliteStore, batches: int) -> None:
    for n in range(batches):
        store.publish(message("say", f"r{n % 7}", "r", "bob", "x" * 200))
        await store.settled()


async def test_the_thread_copies_the_wal_into_the_database(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    store = await _open(path, every=10, limit=1 << 40)
    try:
        before = path.stat().st_size
        await _commit(store, 300)
        for _ in range(100):  # the thread's passes are asynchronous
            if path.stat().st_size > before:
                break
            await asyncio.sleep(0.02)
        assert path.stat().st_size > before, "nothing was checkpointed into the database file"
        assert len(await store.recent("r0", 1000)) == 43
    finally:
        await store.close()
    assert _wal_size(path) == -1, "closing checkpoints and removes the WAL"


async def test_a_sustained_load_restarts_the_wal_without_the_thread(tmp_path: Path) -> None:
    """Commits without a pause, and a thread that never gets to run (a busy machine): the
    writer sees the WAL past its limit and restarts it, so it stops growing."""
    path = tmp_path / "c.db"
    store = await _open(path, every=20, limit=400_000)
    assert store._checkpointer is not None
    store._checkpointer.stop()
    try:
        await _commit(store, 3000)
        wal = _wal_size(path)
        # Unbounded, 3000 commits of 2+ pages would be over 24 MB.
        assert wal < 1024 * 1024, wal
        assert len(await store.recent("r6", 1000)) == 428
    finally:
        await store.close()
