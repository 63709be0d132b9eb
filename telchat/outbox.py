"""Per-connection output queues and the fan-out that fills them.

A line is encoded once per charset, the bytes are queued on each recipient's Outbox, and
one loop callback per event-loop turn writes each dirty Outbox to its sink in one call.
Nothing here awaits: a slow reader only grows its own queue, and when its transport still
holds more than `limit` bytes after a flush it is cut off through `on_overflow`. (The check
is at flush, not push: one loop turn may fan out a whole input chunk's worth of lines,
which a reader that keeps up drains at once.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Protocol

from telchat.logs import get_logger

log = get_logger("telchat.outbox")

CRLF = "\r\n"


class Sink(Protocol):
    """Where an Outbox's bytes go: a transport, in production."""

    def write(self, data: bytes) -> None: ...

    def buffered(self) -> int: ...


def encode_line(text: str, charset: str) -> bytes:
    return encode_text(text + CRLF, charset)


def encode_text(text: str, charset: str) -> bytes:
    data = text.encode(charset, "replace")
    # Telnet reserves 0xFF (IAC); UTF-8 never produces it, single-byte charsets do (cp1251 'я').
    return data if charset == "utf-8" else data.replace(b"\xff", b"\xff\xff")


class Flusher:
    """Writes every Outbox that got data during this loop turn, once, at the turn's end."""

    __slots__ = ("_dirty", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._dirty: list[Outbox] = []
        self._scheduled = False

    def mark(self, outbox: Outbox) -> None:
        self._dirty.append(outbox)
        if not self._scheduled:
            self._scheduled = True
            loop = self._loop or asyncio.get_running_loop()
            loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for outbox in dirty:
            try:
                outbox.flush()
            except Exception:
                # One recipient's failure must not cost everyone after it their lines.
                log.exception("flush_failed")
                outbox.close()


class Outbox:
    __slots__ = ("_chunks", "_flusher", "_limit", "_on_overflow", "_sink", "_size", "bytes_out", "closed")

    def __init__(self, sink: Sink, flusher: Flusher, limit: int, on_overflow: Callable[[], None]) -> None:
        self._sink = sink
        self._flusher = flusher
        self._limit = limit
        self._on_overflow = on_overflow
        self._chunks: list[bytes] = []
        self._size = 0
        self.bytes_out = 0
        self.closed = False

    @property
    def queued(self) -> int:
        return self._size + self._sink.buffered()

    def push(self, data: bytes) -> None:
        if self.closed:
            return
        if not self._chunks:
            self._flusher.mark(self)
        self._chunks.append(data)
        self._size += len(data)

    def flush(self) -> None:
        if self.closed or not self._chunks:
            return
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self._size = 0
        self._sink.write(data)
        self.bytes_out += len(data)
        if self._sink.buffered() > self._limit:
            self._overflow()

    def close(self) -> None:
        """Drop anything queued and accept no more."""
        self.closed = True
        self._chunks = []
        self._size = 0

    def _overflow(self) -> None:
        self.close()
        self._on_overflow()


def fan_out(text: str, recipients: Iterable[Recipient]) -> int:
    """Queue `text` on every recipient, encoding it once per charset; return the count."""
    encoded: dict[str, bytes] = {}
    count = 0
    for recipient in recipients:
        charset = recipient.charset
        data = encoded.get(charset)
        if data is None:
            data = encoded[charset] = encode_line(text, charset)
        recipient.outbox.push(data)
        count += 1
    return count


class Recipient(Protocol):
    @property
    def charset(self) -> str: ...

    @property
    def outbox(self) -> Outbox: ...
