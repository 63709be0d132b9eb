"""SQLite history: WAL, one writer, one commit per event-loop turn.

A batch is committed on the loop thread at the end of the turn that produced it: in WAL
mode with synchronous=NORMAL a commit is a write() into the WAL (no fsync), which costs
tens of microseconds and survives `kill -9` of the server (not a power cut, which would
need synchronous=FULL). Only after the commit are the batch's events delivered.

Nothing on the loop waits for SQLite: the loop's connection has no busy timeout, so when
another process holds the file's write lock a commit fails at once (the batch is retried,
see LocalStore) instead of freezing every session for the timeout. Small reads (a record,
a join's replay) run on the loop too, as a WAL reader takes no lock that a writer holds;
one refused for a lock goes to the worker. Whatever may take long runs on one worker thread
with a connection of its own that does wait: long history reads, search, opening (schema
conversion), and a record or read the lock refused on the loop. sqlite3 releases the GIL
while SQLite works.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
# A replay of at most this many lines is read on the loop (`_at_once`), a longer one on the worker.
QUICK_LINES = 100
# How long the worker thread's connection waits for a lock another process holds.
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
# text of its lines). An index row costs about what a chunk costs, not a row per line; a
# chunk cut down by the trim keeps the words of its cut lines, and a search checks each line
# it finds, and that its chunk is still there. So the rows of dropped chunks are deleted in
# batches (an FTS5 delete is dear in a transaction of its own), by a later history commit,
# at close, or at the next open after a crash.
# FTS5 writes a segment per transaction that adds rows, whatever their number: one row per
# one-line commit costs 2-3 times the commit itself. So the rows are written INDEX_BATCH
# chunks at a time, in the history commit that brings their count there (and at close);
# until then a search reads those newest chunks directly (`_unindexed`), so it always sees
# exactly the committed history. After a crash, the next open indexes the chunks newer than
# the index's newest row (INDEX_NEWER): the chunks themselves are the durable part.
INDEX = "INSERT INTO search (rowid, text, room, last) VALUES (?, ?, ?, ?)"
INDEX_BATCH = 64
INDEXED_UPTO = "SELECT rowid FROM search ORDER BY rowid DESC LIMIT 1"
INDEX_NEWER = (
    "INSERT INTO search (rowid, text, room, last) SELECT first,"
    " (SELECT group_concat(line.value ->> 3, char(10)) FROM json_each(chunks.lines) AS line), room, last"
    " FROM chunks WHERE first > ?"
)
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
# A chunk a search reads: its first id, room key, last id.
Found = tuple[int, str, int]
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
        # Index rows of the newest chunks, by first id, written INDEX_BATCH at a time.
        self._unindexed: dict[int, Indexed] = {}
        self._worker: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._worker_dbs: list[sqlite3.Connection] = []

    async def open(self, deliver: Deliver) -> None:
        await super().open(deliver)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="telchat-sqlite")
        try:
            self._db, self._last_id = await self._off_loop(self._open)
        except (sqlite3.Error, OSError) as exc:
            # Opened again after this (an upgrade's new image tries again): no thread left over.
            self._worker.shutdown(wait=False)
            self._worker = None
            raise StoreError(f"cannot open SQLite store {self.path!r}: {exc}") from exc

    def _open(self) -> tuple[sqlite3.Connection, int]:
        """The loop's connection (opened on the worker: a conversion may wait on a lock)."""
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # ":memory:" is one database per connection: there the worker shares the loop's
        # (sqlite3.threadsafety is 3, serialized: a connection may be shared by threads).
        db = self._worker_db() if self.path == ":memory:" else _connect(self.path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"PRAGMA busy_timeout={WORKER_BUSY_MS}")
        _upgrade(db)
        db.execute(PRUNE)
        indexed = db.execute(INDEXED_UPTO).fetchone()
        db.execute(INDEX_NEWER, (indexed[0] if indexed else 0,))
        (last,) = db.execute(LAST_ID).fetchone()
        if self.path != ":memory:":
            self._checkpointer = Checkpointer(self.path)
            self._checkpointer.configure(db)
            db.execute("PRAGMA busy_timeout=0")
        return db, int(last)

    def _worker_db(self) -> sqlite3.Connection:
        """The worker thread's own connection (it waits for locks)."""
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

    async def close(self) -> None:
        await super().close()
        self._settle_index()
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None
        for db in self._worker_dbs:
            if db is not self._db:
                db.close()
        self._worker_dbs = []
        if self._db is not None:
            # The last connection to close checkpoints the WAL and removes it.
            self._db.close()
            self._db = None

    async def check(self) -> None:
        try:
            self._connection().execute("SELECT 1").fetchone()
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("SQLite store is closed")
        return self._db

    def _commit(self, events: list[Event]) -> list[Event]:
        db = self._connection()
        committed, chunks, indexed, last = self._number(events)
        if not chunks:
            # Notices only (nick changes, joins): nothing to make durable, so no transaction,
            # whose BEGIN and COMMIT would cost more than the rest of a storm's turn.
            return committed
        try:
            db.execute("BEGIN")
            stored = {room: self._stored(db, room) + count for _, _, room, _, count, _ in chunks}
            db.executemany(INSERT, chunks)
            stale = list(self._stale)
            lines = {room: self._trim(db, room, count, stale) for room, count in stored.items()}
            unindexed = self._still_unindexed(indexed, stale)
            if len(unindexed) >= INDEX_BATCH:
                db.executemany(INDEX, unindexed.values())
                unindexed = {}
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
        self._unindexed = unindexed
        if self._checkpointer is not None and self._checkpointer.committed():
            self._restart_wal(db)
        return committed

    def _still_unindexed(self, indexed: list[Indexed], stale: list[int]) -> dict[int, Indexed]:
        """The index rows not written yet, the batch's `indexed` included, less those of the
        chunks this commit's trim dropped (taken out of `stale` too: no row to delete)."""
        unindexed = {**self._unindexed, **{row[0]: row for row in indexed}}
        known = len(self._stale)
        if len(stale) > known:
            dropped = stale[known:]
            del stale[known:]
            stale += [first for first in dropped if unindexed.pop(first, None) is None]
        return unindexed

    def _settle_index(self) -> None:
        """At close: write the index rows still pending, delete those of dropped chunks."""
        if not (self._stale or self._unindexed) or self._db is None:
            return
        db = self._db
        try:
            db.execute("BEGIN")
            db.executemany(INDEX, self._unindexed.values())
            db.executemany(UNINDEX, [(first,) for first in self._stale])
            db.execute("COMMIT")
            self._stale = []
            self._unindexed = {}
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            # Harmless: searches skip stale rows, and the next open prunes them and indexes the rest.
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

        def read(db: sqlite3.Connection) -> list[list[tuple[str, Line]]]:
            return self._recent(db, room, limit)

        found = await (self._at_once(read) if limit <= QUICK_LINES else self._read(read))
        return [_event(room, name, line) for chunk in reversed(found) for name, line in chunk]

    def _recent(self, db: sqlite3.Connection, room: str, limit: int) -> list[list[tuple[str, Line]]]:
        """`room`'s newest chunks, newest first, cut to `limit` lines."""
        found: list[list[tuple[str, Line]]] = []
        total = 0
        for name, lines in db.execute(RECENT, (room,)):
            chunk = orjson.loads(lines)
            found.append([(name, line) for line in chunk[-(limit - total) :]])
            total += len(found[-1])
            if total >= limit:
                break
        return found

    async def history_rooms(self) -> list[str]:
        return [room for (room,) in await self._read(lambda db: db.execute(HISTORY_ROOMS).fetchall())]

    async def search(self, query: Query, before: Cursor | None, limit: int) -> list[Event]:
        if not query.words:
            return await super().search(query, before, limit)
        tail = _candidates(list(self._unindexed.values()), query, before)
        return await self._read(lambda db: self._search(db, query, before, limit, tail))

    def _search(
        self, db: sqlite3.Connection, query: Query, before: Cursor | None, limit: int, tail: list[Found]
    ) -> list[Event]:
        """On the worker: the newest chunks, not indexed yet, that may match (`tail`), then
        the chunks the index finds, newest first, read until `limit` lines match and no older
        chunk can hold a newer one."""
        sql = [SEARCH]
        params: list[str | int] = [" ".join('"' + word.replace('"', '""') + '"' for word in query.words)]
        if query.room:
            sql.append("AND room = ?")
            params.append(query.room)
        if before is not None:
            sql.append("AND rowid <= ?")
            params.append(before[1][0])
        sql.append("ORDER BY rowid DESC")
        tail_firsts = {first for first, _, _ in tail}
        rows = tail + [row for row in db.execute(" ".join(sql), params).fetchall() if row[0] not in tail_firsts]
        found: list[Event] = []
        floor = 0
        for first, room, last in rows:
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

    # Records are written outside the per-turn batch: autocommit, so durable on return.

    async def get_record(self, kind: str, key: str) -> Record | None:
        row = await self._at_once(lambda db: db.execute(GET_RECORD, (kind, key)).fetchone())
        return decode_record(row[0]) if row else None

    async def put_record(self, kind: str, key: str, record: Record | None) -> None:
        params: tuple[str, ...]
        if record is None:
            sql, params = DELETE_RECORD, (kind, key)
        else:
            sql, params = PUT_RECORD, (kind, key, encode_record(record).decode())
        try:
            self._connection().execute(sql, params)
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                raise StoreError(f"SQLite record write failed: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite record write failed: {exc}") from exc
        # Another process holds the write lock: wait for it on the worker, not here.
        await self._read(lambda db: db.execute(sql, params))

    async def records(self, kind: str) -> dict[str, Record]:
        rows = await self._read(lambda db: db.execute(ALL_RECORDS, (kind,)).fetchall())
        return {key: decode_record(value) for key, value in rows}

    async def _at_once(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """A small read (a record, a replay's few chunks) on the loop's connection, which
        never waits for a lock: in WAL mode a reader needs none but in rare moments (another
        process recovering the WAL index), and then it goes to the worker, which waits. A
        hop to the worker and back costs more than such a read, mostly in thread switches."""
        try:
            return query(self._connection())
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise StoreError(f"SQLite read failed: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite read failed: {exc}") from exc
        return await self._read(query)

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


def _candidates(rows: list[Indexed], query: Query, before: Cursor | None) -> list[Found]:
    """The not yet indexed chunks that may hold a match (as the index would find them), newest first."""
    found = []
    for first, text, room, last in sorted(rows, reverse=True):
        if (query.room and room != query.room) or (before is not None and first > before[1][0]):
            continue
        folded = text.casefold()
        if all(word in folded for word in query.words):
            found.append((first, room, last))
    return found


def _indexed(room: str, lines: list[Line]) -> Indexed:
    return (lines[0][0], "\n".join(line[3] for line in lines), room, lines[-1][0])


def _event(room: str, room_name: str, line: Line) -> Event:
    line_id, nick, kind, text, ts = line
    return Event(kind_of(kind), text, room=room, room_name=room_name, nick=nick, ts=ts, id=(line_id, 0))


def _chunk(room: str, room_name: str, lines: list[Line]) -> Chunk:
    return (lines[0][0], lines[-1][0], room, room_name, len(lines), orjson.dumps(lines).decode())
