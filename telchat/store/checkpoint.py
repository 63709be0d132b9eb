"""WAL checkpoints for the SQLite store, on a thread of their own.

SQLite's automatic checkpoint runs inside whichever COMMIT crosses its threshold, on the
event loop, and syncs the WAL and the database file to disk: milliseconds on a real disk,
during which no line moves for anyone. Here the writer turns that off and only counts its
commits; every `every` commits this thread copies the WAL back into the database with its
own connection (PASSIVE: it never waits for, or blocks, the writer; sqlite3 releases the
GIL while SQLite works).

A passive checkpoint cannot restart the WAL while commits keep arriving, so under a
sustained load the WAL would only grow. The writer watches the WAL file's size itself, so
the bound holds however late the thread runs: the writer's connection has
`journal_size_limit` set to the same limit, which cuts the file back to it whenever the WAL
restarts, so a file past the limit means a WAL that has grown past it since. Then
`committed` tells the writer to run one RESTART checkpoint, between two transactions: what
is left to copy is only what came since the thread's last pass.
"""

from __future__ import annotations

import os
import sqlite3
import threading

CHECKPOINT_EVERY = 200
WAL_LIMIT_BYTES = 32 * 1024 * 1024


class Checkpointer:
    def __init__(self, path: str, every: int = CHECKPOINT_EVERY, limit: int = WAL_LIMIT_BYTES) -> None:
        self._path = path
        self._wal = f"{path}-wal"
        self._every = every
        self._limit = limit
        self._commits = 0
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="telchat-checkpoint", daemon=True)
        self._thread.start()

    def configure(self, writer: sqlite3.Connection) -> None:
        """Hand checkpoints over from the writer's connection to this thread."""
        writer.execute("PRAGMA wal_autocheckpoint=0")
        writer.execute(f"PRAGMA journal_size_limit={self._limit}")

    def committed(self) -> bool:
        """Count one commit; True when the writer should now run a RESTART checkpoint."""
        self._commits += 1
        if self._commits < self._every:
            return False
        self._commits = 0
        if self._wal_size() > self._limit:
            return True
        self._wake.set()
        return False

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=10)

    def _wal_size(self) -> int:
        try:
            return os.stat(self._wal).st_size
        except OSError:
            return 0

    def _run(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    return
                self._pass(db)
        finally:
            db.close()

    @staticmethod
    def _pass(db: sqlite3.Connection) -> None:
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error:
            # Busy or failing: the next pass tries again; a failing disk shows in the
            # writer's own commits (store_error), which is where it matters.
            return
