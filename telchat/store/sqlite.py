"""SQLite history: WAL, one writer thread, one commit per event-loop turn or fewer.

Every write runs on one writer thread, with the one connection that writes: a turn's batch
(its history chunks and their search index rows, one transaction), record writes, and WAL
restarts. The loop hands a batch over at the end of the turn that produced it and goes on;
when the commit returns, the thread hands the batch back and the loop delivers it (persist,
then deliver). One batch is under way at a time (see LocalStore): what is published
meanwhile waits and is the next batch, so while commits are slow a transaction gathers the
lines of several turns, and deliveries keep their order. In WAL mode with
synchronous=NORMAL a commit is a write() into the WAL (no fsync), which survives `kill -9`
of the server (not a power cut, which would need synchronous=FULL).

Nothing on the loop waits for SQLite. The writer's connection waits up to WORKER_BUSY_MS
for a lock another process holds (a batch it still cannot commit is retried, in order).
Reads (history of any size, records) and opening (schema conversion) run on a second
worker thread with a connection of its own, so that a long read never holds up a commit.
sqlite3 releases the GIL while SQLite works.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import orjson

from telchat.obs.logs import get_logger
from telchat.store.base import (
    Cursor,
    Deliver,
    LocalStore,
    Query,
    Record,
    StoreError,
    decode_record,
    encode_record,
    matches,
    newest,
)
from telchat.store.checkpoint import Checkpointer
from telchat.store.events import Event, kind_of

log = get_logger(__name__)

T = TypeVar("T")
# How long the threads' connections wait for a lock another process holds.
WORKER_BUSY_MS = 5000

# History is kept in chunks: the lines of one room committed in one transaction are one
# row, a JSON array of [id, nick, kind, text, ts]. A busy room's turn of 40 lines is then one
# INSERT and a page or two of WAL, not 40 rows and 40 index entries: this is what keeps the
# store's cost per line small next to fanning the line out. Ids are global and increasing;
# a chunk is keyed by its room and its first line's id, WITHOUT ROWID: one b-tree, so a
# commit and the trim of the room's oldest chunk usually touch the same page or two. The
# `messages` view shows one row per line for people who query the file with sqlite3.
SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    room TEXT NOT NULL,
    first INTEGER NOT NULL,
    last INTEGER NOT NULL,
    room_name TEXT NOT NULL,
    count INTEGER NOT NULL,
    lines TEXT NOT NULL,
    PRIMARY KEY (room, first)
) WITHOUT ROWID;
CREATE VIEW IF NOT EXISTS messages AS
    SELECT line.value ->> 0 AS id, chunks.room, chunks.room_name, line.value ->> 1 AS nick,
           line.value ->> 2 AS kind, line.value ->> 3 AS text, line.value ->> 4 AS ts
    FROM chunks, json_each(chunks.lines) AS line;
CREATE VIRTUAL TABLE IF NOT EXISTS search USING fts5(
    text, room UNINDEXED, last UNINDEXED,
    tokenize = 'unicode61 remove_diacritics 0', detail = none, columnsize = 0
);
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
"""
INSERT = "INSERT INTO chunks (first, last, room, room_name, count, lines) VALUES (?, ?, ?, ?, ?, ?)"
# Search indexes chunks, as history keeps them: one row per chunk (rowid = its first id, the
# text of its lines), added by the transaction that adds the chunk. An index row costs about
# what a chunk costs, not a row per line; a chunk cut down by the trim keeps the words of its
# cut lines, and a search checks each line it finds, and that its chunk is still there. So
# the rows of dropped chunks are deleted in batches (an FTS5 delete is dear in a transaction
# of its own), by a later history commit, at close, or at the next open after a crash.
INDEX = "INSERT INTO search (rowid, text, room, last) VALUES (?, ?, ?, ?)"
UNINDEX = "DELETE FROM search WHERE rowid = ?"
UNINDEX_BATCH = 64
PRUNE = "DELETE FROM search WHERE rowid NOT IN (SELECT first FROM chunks)"
SEARCH = "SELECT rowid, room, last FROM search WHERE search MATCH ?"
CHUNK = "SELECT room_name, lines FROM chunks WHERE room = ? AND first = ?"
ALL_CHUNKS = "SELECT first, last, room, lines FROM chunks"
HISTORY_ROOMS = "SELECT DISTINCT room FROM chunks"
RECENT = "SELECT room_name, lines FROM chunks WHERE room = ? ORDER BY first DESC"
# A scan, once at start-up: rooms are not ordered by their ids.
LAST_ID = "SELECT coalesce(max(last), 0) FROM chunks"
ROOM_LINES = "SELECT coalesce(sum(count), 0) FROM chunks WHERE room = ?"
OLDEST = "SELECT first, count FROM chunks WHERE room = ? ORDER BY first"
DELETE_UPTO = "DELETE FROM chunks WHERE room = ? AND first <= ?"
GET_LINES = "SELECT lines FROM chunks WHERE room = ? AND first = ?"
SET_LINES = "UPDATE chunks SET lines = ?, count = ? WHERE room = ? AND first = ?"
GET_RECORD = "SELECT value FROM records WHERE kind = ? AND key = ?"
PUT_RECORD = "INSERT OR REPLACE INTO records (kind, key, value) VALUES (?, ?, ?)"
DELETE_RECORD = "DELETE FROM records WHERE kind = ? AND key = ?"
ALL_RECORDS = "SELECT key, value FROM records WHERE kind = ?"
# Version 1 kept a row per line in a `messages` table; opening such a file converts it.
# Version 3 added the search index; opening a version 2 file builds it.
SCHEMA_VERSION = 3
OLD_MESSAGES = "SELECT id, room, room_name, nick, kind, text, ts FROM messages ORDER BY room, id"

Line = tuple[int, str, str, str, float]
# A row of `search`: the chunk's first id, its lines' text, room key, last id.
Indexed = tuple[int, str, str, int]
# A row of `chunks`: first id, last id, room key, room name, line count, the lines as JSON.
Chunk = tuple[int, int, str, str, int, str]


class SqliteStore(LocalStore):
    def __init__(self, path: str, keep: int = 1000) -> None:
        super().__init__(keep)
        self.path = path
        # Whole chunks past `keep` go at every commit (usually one row: no burst of
        # deletes); the oldest kept chunk is cut down once `slack` of its lines are over.
        self._slack = max(1, keep // 10)
        self._lines: dict[str, int] = {}
        self._db: sqlite3.Connection | None = None
        self._checkpointer: Checkpointer | None = None
        self._last_id = 0
        # Index rows of dropped chunks, deleted UNINDEX_BATCH at a time.
        self._stale: list[int] = []
        self._worker: ThreadPoolExecutor | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._worker_dbs: list[sqlite3.Connection] = []

    async def open(self, deliver: Deliver) -> None:
        await super().open(deliver)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="telchat-sqlite-writer")
        # ":memory:" is one database per connection: there one thread does it all, with one.
        self._worker = self._writer
        if self.path != ":memory:":
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="telchat-sqlite")
        try:
            self._db, self._last_id = await self._on_writer(self._open)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open SQLite store {self.path!r}: {exc}") from exc

    def _open(self) -> tuple[sqlite3.Connection, int]:
        """The writer's connection, on the writer thread (a conversion may wait on a lock)."""
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = self._local.db = _connect(self.path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"PRAGMA busy_timeout={WORKER_BUSY_MS}")
        _upgrade(db)
        db.execute(PRUNE)
        (last,) = db.execute(LAST_ID).fetchone()
        if self.path != ":memory:":
            self._checkpointer = Checkpointer(self.path)
            self._checkpointer.configure(db)
        return db, int(last)

    def _worker_db(self) -> sqlite3.Connection:
        """The reading thread's own connection (the writer's, for ":memory:")."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = _connect(self.path)
            db.execute(f"PRAGMA busy_timeout={WORKER_BUSY_MS}")
            self._worker_dbs.append(db)
        return db

    async def _off_loop(self, work: Callable[[], T]) -> T:
        if self._worker is None:
            raise StoreError("SQLite store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._worker, work)

    async def _on_writer(self, work: Callable[[], T]) -> T:
        if self._writer is None:
            raise StoreError("SQLite store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._writer, work)

    async def close(self) -> None:
        await super().close()
        if self._db is not None:
            await self._on_writer(self._unindex_stale)
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        for executor in {self._worker, self._writer} - {None}:
            assert executor is not None
            executor.shutdown(wait=True)
        self._worker = self._writer = None
        for db in self._worker_dbs:
            db.close()
        self._worker_dbs = []
        if self._db is not None:
            # The last connection to close checkpoints the WAL and removes it.
            self._db.close()
            self._db = None

    async def check(self) -> None:
        # On the writer: a writer stuck behind another process's lock is a store not answering.
        def work() -> None:
            try:
                self._connection().execute("SELECT 1").fetchone()
            except sqlite3.Error as exc:
                raise StoreError(str(exc)) from exc

        await self._on_writer(work)

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("SQLite store is closed")
        return self._db

    def _begin(self, events: list[Event]) -> None:
        """Hand the batch to the writer thread; `_written` takes it back on the loop."""
        if self._writer is None or not any(event.in_history for event in events):
            super()._begin(events)  # nothing to store, or closed: no thread to wait for
            return
        loop = asyncio.get_running_loop()
        future = self._writer.submit(self._timed_commit, events)
        future.add_done_callback(lambda done: loop.call_soon_threadsafe(self._written, done))

    def _written(self, future: Future[tuple[list[Event], float]]) -> None:
        try:
            committed, seconds = future.result()
        except StoreError as exc:
            self._done(exc, 0.0)
            return
        except Exception as exc:  # a bug must not leave the batch under way forever
            log.exception("store_error", error=repr(exc), pending=len(self._pending))
            self._done(StoreError(f"SQLite commit failed: {exc!r}"), 0.0)
            return
        self._done(committed, seconds)

    def _commit(self, events: list[Event]) -> list[Event]:
        """On the writer thread (one batch at a time): one transaction of the batch's chunks
        and index rows, and the trim of their rooms; then maybe a WAL restart."""
        db = self._connection()
        committed, chunks, indexed, last = self._number(events)
        try:
            db.execute("BEGIN")
            stored = {room: self._stored(db, room) + count for _, _, room, _, count, _ in chunks}
            db.executemany(INSERT, chunks)
            db.executemany(INDEX, indexed)
            stale = list(self._stale)
            lines = {room: self._trim(db, room, count, stale) for room, count in stored.items()}
            if len(stale) >= UNINDEX_BATCH:
                db.executemany(UNINDEX, [(first,) for first in stale])
                stale = []
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StoreError(f"SQLite commit failed: {exc}") from exc
        self._last_id = last
        self._lines.update(lines)
        self._stale = stale
        if self._checkpointer is not None and self._checkpointer.committed():
            self._restart_wal(db)
        return committed

    def _unindex_stale(self) -> None:
        if not self._stale or self._db is None:
            return
        db = self._db
        try:
            db.execute("BEGIN")
            db.executemany(UNINDEX, [(first,) for first in self._stale])
            db.execute("COMMIT")
            self._stale = []
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            # Harmless: searches skip them, and the next open prunes them.
            log.error("store_error", error=f"SQLite index cleanup failed: {exc}", pending=0)

    def _restart_wal(self, db: sqlite3.Connection) -> None:
        try:
            db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        except sqlite3.Error as exc:
            # Committed already: nothing is lost, the WAL stays long until a later attempt.
            self.stats.store_errors += 1
            log.error("store_error", error=f"SQLite checkpoint failed: {exc}", pending=0)

    def _number(self, events: list[Event]) -> tuple[list[Event], list[Chunk], list[Indexed], int]:
        """The events with the ids they get if the commit succeeds, the batch's chunk rows
        (one per room) and their search rows, and the last id given."""
        committed: list[Event] = []
        lines: dict[tuple[str, str], list[Line]] = {}
        last = self._last_id
        for event in events:
            if not event.in_history:
                committed.append(event)
                continue
            last += 1
            committed.append(event.with_id((last, 0)))
            room = lines.get((event.room, event.room_name))
            if room is None:
                room = lines[event.room, event.room_name] = []
            room.append((last, event.nick, event.kind, event.text, event.ts))
        chunks = [_chunk(room, name, room_lines) for (room, name), room_lines in lines.items()]
        indexed = [_indexed(room, room_lines) for (room, _), room_lines in lines.items()]
        return committed, chunks, indexed, last

    def _stored(self, db: sqlite3.Connection, room: str) -> int:
        """Lines of `room` in the file: counted once per process, then kept up to date."""
        stored = self._lines.get(room)
        if stored is None:
            (stored,) = db.execute(ROOM_LINES, (room,)).fetchone()
        return int(stored)

    def _trim(self, db: sqlite3.Connection, room: str, stored: int, stale: list[int]) -> int:
        """Drop `room`'s chunks that lie wholly past its newest `keep` lines (their index rows
        go to `stale`); cut the oldest kept one once `slack` of its lines are past. Return the
        lines left."""
        over = stored - self._keep
        if over <= 0:
            return stored
        dropped: list[int] = []
        straddling = None
        for first, count in db.execute(OLDEST, (room,)):
            if count > over:
                straddling = first
                break
            dropped.append(first)
            over, stored = over - count, stored - count
        if dropped:
            db.execute(DELETE_UPTO, (room, dropped[-1]))
            stale += dropped
        if straddling is not None and over >= self._slack:
            (lines,) = db.execute(GET_LINES, (room, straddling)).fetchone()
            kept = orjson.loads(lines)[over:]
            db.execute(SET_LINES, (orjson.dumps(kept).decode(), len(kept), room, straddling))
            stored -= over
        return stored

    async def recent(self, room: str, limit: int) -> list[Event]:
        # The oldest kept chunk may still hold up to `slack` lines past `keep`.
        limit = min(limit, self._keep)
        if limit <= 0:
            return []
        found = await self._off_loop(lambda: self._recent(room, limit))
        return [_event(room, name, line) for chunk in reversed(found) for name, line in chunk]

    def _recent(self, room: str, limit: int) -> list[list[tuple[str, Line]]]:
        """On the worker: `room`'s newest chunks, newest first, cut to `limit` lines."""
        found: list[list[tuple[str, Line]]] = []
        total = 0
        try:
            for name, lines in self._worker_db().execute(RECENT, (room,)):
                chunk = orjson.loads(lines)
                found.append([(name, line) for line in chunk[-(limit - total) :]])
                total += len(found[-1])
                if total >= limit:
                    break
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite history read failed: {exc}") from exc
        return found

    async def history_rooms(self) -> list[str]:
        return [room for (room,) in await self._read(lambda db: db.execute(HISTORY_ROOMS).fetchall())]

    async def search(self, query: Query, before: Cursor | None, limit: int) -> list[Event]:
        if not query.words:
            return await super().search(query, before, limit)
        return await self._read(lambda db: self._search(db, query, before, limit))

    def _search(self, db: sqlite3.Connection, query: Query, before: Cursor | None, limit: int) -> list[Event]:
        """On the worker: the chunks the index finds, newest first, read until `limit` lines
        match and no older chunk can hold a newer one."""
        sql = [SEARCH]
        params: list[str | int] = [" ".join('"' + word.replace('"', '""') + '"' for word in query.words)]
        if query.room:
            sql.append("AND room = ?")
            params.append(query.room)
        if before is not None:
            sql.append("AND rowid <= ?")
            params.append(before[1][0])
        sql.append("ORDER BY rowid DESC")
        found: list[Event] = []
        floor = 0
        for first, room, last in db.execute(" ".join(sql), params).fetchall():
            if len(found) >= limit and last < floor:
                break
            row = db.execute(CHUNK, (room, first)).fetchone()
            if row is None:
                continue
            lines = [_event(room, row[0], line) for line in orjson.loads(row[1])]
            if lines and lines[-1].ts < query.since:
                break  # chunks are in commit order: the rest are older still
            found += [event for event in lines if matches(query, event, before)]
            if len(found) >= limit:
                found = newest(found, limit)
                floor = found[-1].id[0]
        return newest(found, limit)

    # Records are written outside the per-turn batch, on the writer: autocommit, so durable
    # on return.

    async def get_record(self, kind: str, key: str) -> Record | None:
        row = await self._read(lambda db: db.execute(GET_RECORD, (kind, key)).fetchone())
        return decode_record(row[0]) if row else None

    async def put_record(self, kind: str, key: str, record: Record | None) -> None:
        params: tuple[str, ...]
        if record is None:
            sql, params = DELETE_RECORD, (kind, key)
        else:
            sql, params = PUT_RECORD, (kind, key, encode_record(record).decode())

        def work() -> None:
            try:
                self._connection().execute(sql, params)
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite record write failed: {exc}") from exc

        await self._on_writer(work)

    async def records(self, kind: str) -> dict[str, Record]:
        rows = await self._read(lambda db: db.execute(ALL_RECORDS, (kind,)).fetchall())
        return {key: decode_record(value) for key, value in rows}

    async def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """`query` on the worker's connection (it may wait for a lock there)."""

        def work() -> T:
            try:
                return query(self._worker_db())
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite record access failed: {exc}") from exc

        return await self._off_loop(work)


def _connect(path: str) -> sqlite3.Connection:
    # Used from more than one thread, never at once: the loop's connection is opened on
    # the worker; the worker's is only ever used there.
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)


def _upgrade(db: sqlite3.Connection) -> None:
    """Create the schema, converting a version 1 file (a row per line) in one transaction."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version >= SCHEMA_VERSION:
        return
    db.execute("BEGIN")
    try:
        old = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'messages'").fetchone()
        rows = db.execute(OLD_MESSAGES).fetchall() if old else []
        if old:
            db.execute("DROP TABLE messages")
        for statement in SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.executemany(INSERT, _old_chunks(rows))
        db.executemany(INDEX, [_indexed(room, orjson.loads(lines)) for _, _, room, lines in db.execute(ALL_CHUNKS)])
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _old_chunks(rows: list[tuple[int, str, str, str, str, str, float]]) -> list[Chunk]:
    """Version 1 rows, ordered by room and id, as chunks of up to 100 lines."""
    chunks = []
    for (room, room_name), group in itertools.groupby(rows, key=lambda row: (row[1], row[2])):
        lines = [(row_id, nick, kind, text, ts) for row_id, _, _, nick, kind, text, ts in group]
        chunks += [_chunk(room, room_name, lines[start : start + 100]) for start in range(0, len(lines), 100)]
    return chunks


def _indexed(room: str, lines: list[Line]) -> Indexed:
    return (lines[0][0], "\n".join(line[3] for line in lines), room, lines[-1][0])


def _event(room: str, room_name: str, line: Line) -> Event:
    line_id, nick, kind, text, ts = line
    return Event(kind_of(kind), text, room=room, room_name=room_name, nick=nick, ts=ts, id=(line_id, 0))


def _chunk(room: str, room_name: str, lines: list[Line]) -> Chunk:
    return (lines[0][0], lines[-1][0], room, room_name, len(lines), orjson.dumps(lines).decode())
