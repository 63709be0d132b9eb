"""WAL checkpoints for the SQLite store, on a thread of their own.

SQLite's automatic checkpoint runs inside whichever COMMIT crosses its threshold, on the
event loop, and syncs the WAL and the database file to disk: milliseconds on a real disk,
during which no line moves for anyone. Here the writer turns that off and only counts its
commits; every `every` commits this thread copies the WAL back into the database with its
own connection (PASSIVE: it never waits for, or blocks, the writer; sqlite3 releases the
GIL while SQLite works).

A passive checkpoint cannot restart the WAL while commits keep arriving, so under a
sustained load the WAL would only grow. When it passes `limit` frames, `committed` tells
the writer to run one RESTART checkpoint itself, between two transactions: what is left to
copy is only what came since the thread's last pass.
"""

from __future__ import annotations

import sqlite3
import threading

CHECKPOINT_EVERY = 200
WAL_LIMIT_FRAMES = 8192


class Checkpointer:
    def __init__(self, path: str, every: int = CHECKPOINT_EVERY, limit: int = WAL_LIMIT_FRAMES) -> None:
        self._path = path
        self._every = every
        self._limit = limit
        self._commits = 0
        # Frames in the WAL at the thread's last pass; read by the writer (an int: no lock).
        self._wal_frames = 0
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="telchat-checkpoint", daemon=True)
        self._thread.start()

    def committed(self) -> bool:
        """Count one commit; True when the writer should now run a RESTART checkpoint."""
        self._commits += 1
        if self._commits < self._every:
            return False
        self._commits = 0
        if self._wal_frames > self._limit:
            self._wal_frames = 0
            return True
        self._wake.set()
        return False

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=10)

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

    def _pass(self, db: sqlite3.Connection) -> None:
        try:
            _, frames, _ = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error:
            # Busy or failing: the next pass tries again; a failing disk shows in the
            # writer's own commits (store_error), which is where it matters.
            return
        self._wal_frames = int(frames)
