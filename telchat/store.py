"""History storage behind one interface; the room manager never knows which one it has.

Persist, then deliver: the manager appends a line, then asks `after_commit` to run the
delivery once everything appended so far is durable. A store that batches commits runs
those callbacks after the batch's commit, in the order they were registered.
"""

from __future__ import annotations

import abc
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

SAY = "say"
EMOTE = "emote"


@dataclass(frozen=True, slots=True)
class Entry:
    room: str
    nick: str
    text: str
    kind: str = SAY
    ts: float = field(default_factory=time.time)


class HistoryStore(abc.ABC):
    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    def append(self, entry: Entry) -> None:
        """Queue `entry` for the next commit."""

    @abc.abstractmethod
    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once every entry appended before this call is committed."""

    @abc.abstractmethod
    async def recent(self, room: str, limit: int) -> list[Entry]:
        """The last `limit` committed entries of `room` (by room key), oldest first."""


class MemoryStore(HistoryStore):
    """History in process memory: fast, gone on restart. Commits are immediate."""

    def __init__(self, keep: int = 1000) -> None:
        self._keep = keep
        self._rooms: dict[str, deque[Entry]] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def append(self, entry: Entry) -> None:
        lines = self._rooms.get(entry.room)
        if lines is None:
            lines = self._rooms[entry.room] = deque(maxlen=self._keep)
        lines.append(entry)

    def after_commit(self, callback: Callable[[], None]) -> None:
        callback()

    async def recent(self, room: str, limit: int) -> list[Entry]:
        lines = self._rooms.get(room)
        if not lines or limit <= 0:
            return []
        return list(lines)[-limit:]
