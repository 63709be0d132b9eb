"""SQLite history: WAL, one writer, one commit per event-loop turn.

A batch is committed on the loop thread at the end of the turn that produced it: in WAL
mode with synchronous=NORMAL a commit is a write() into the WAL (no fsync), which costs
tens of microseconds and survives `kill -9` of the server (not a power cut, which would
need synchronous=FULL). Only after the commit are the batch's events delivered.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from telchat.events import Event
from telchat.store import Deliver, LocalStore, Record, StoreError, decode_record, encode_record

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    room TEXT NOT NULL,
    room_name TEXT NOT NULL,
    nick TEXT NOT NULL,
    kind TEXT NOT NULL,
    text TEXT NOT NULL,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_room_id ON messages (room, id);
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
"""
INSERT = "INSERT INTO messages (room, room_name, nick, kind, text, ts) VALUES (?, ?, ?, ?, ?, ?)"
RECENT = "SELECT id, room, room_name, nick, kind, text, ts FROM messages WHERE room = ? ORDER BY id DESC LIMIT ?"
GET_RECORD = "SELECT value FROM records WHERE kind = ? AND key = ?"
PUT_RECORD = "INSERT OR REPLACE INTO records (kind, key, value) VALUES (?, ?, ?)"
DELETE_RECORD = "DELETE FROM records WHERE kind = ? AND key = ?"
ALL_RECORDS = "SELECT key, value FROM records WHERE kind = ?"
TRIM = (
    "DELETE FROM messages WHERE room = :room AND id <= "
    "(SELECT id FROM messages WHERE room = :room ORDER BY id DESC LIMIT 1 OFFSET :keep)"
)


class SqliteStore(LocalStore):
    def __init__(self, path: str, keep: int = 1000) -> None:
        super().__init__()
        self.path = path
        self._keep = keep
        # Trim a room once it has grown by a tenth: amortised, never far over `keep`.
        self._trim_every = max(1, keep // 10)
        self._since_trim: dict[str, int] = {}
        self._db: sqlite3.Connection | None = None

    async def open(self, deliver: Deliver) -> None:
        await super().open(deliver)
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=2000")
            db.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open SQLite store {self.path!r}: {exc}") from exc
        self._db = db

    async def close(self) -> None:
        await super().close()
        if self._db is not None:
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
        history = [event for event in events if event.in_history]
        try:
            db.execute("BEGIN")
            first = self._insert(db, history)
            self._trim_due()
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            # The trim counters may have moved; a later trim simply comes a little early.
            raise StoreError(f"SQLite commit failed: {exc}") from exc
        ids = iter(range(first, first + len(history)))
        return [event.with_id((next(ids), 0)) if event.in_history else event for event in events]

    def _insert(self, db: sqlite3.Connection, history: list[Event]) -> int:
        """Insert the batch's messages in one executemany; return the first one's id."""
        if not history:
            return 0
        db.executemany(INSERT, [(e.room, e.room_name, e.nick, e.kind, e.text, e.ts) for e in history])
        (last,) = db.execute("SELECT last_insert_rowid()").fetchone()
        for event in history:
            self._since_trim[event.room] = self._since_trim.get(event.room, 0) + 1
        # One connection, one transaction, AUTOINCREMENT: a batch's ids are consecutive.
        return int(last) - len(history) + 1

    def _trim_due(self) -> None:
        db = self._connection()
        for room, count in list(self._since_trim.items()):
            if count >= self._trim_every:
                db.execute(TRIM, {"room": room, "keep": self._keep})
                del self._since_trim[room]

    async def recent(self, room: str, limit: int) -> list[Event]:
        if limit <= 0:
            return []
        rows = self._connection().execute(RECENT, (room, limit)).fetchall()
        return [
            Event(kind, text, room=key, room_name=name, nick=nick, ts=ts, id=(row_id, 0))
            for row_id, key, name, nick, kind, text, ts in reversed(rows)
        ]

    # Records are written outside the per-turn batch: autocommit, so durable on return.

    async def get_record(self, kind: str, key: str) -> Record | None:
        row = self._execute(GET_RECORD, (kind, key)).fetchone()
        return decode_record(row[0]) if row else None

    async def put_record(self, kind: str, key: str, record: Record | None) -> None:
        if record is None:
            self._execute(DELETE_RECORD, (kind, key))
        else:
            self._execute(PUT_RECORD, (kind, key, encode_record(record).decode()))

    async def records(self, kind: str) -> dict[str, Record]:
        return {key: decode_record(value) for key, value in self._execute(ALL_RECORDS, (kind,)).fetchall()}

    def _execute(self, sql: str, params: tuple[str, ...]) -> sqlite3.Cursor:
        try:
            return self._connection().execute(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite record access failed: {exc}") from exc
