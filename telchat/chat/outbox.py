"""Per-connection output queues and the fan-out that fills them.

A line is encoded once per charset, the bytes are queued on each recipient's Outbox, and
one loop callback per event-loop turn writes each dirty Outbox to its sink in one call.
Nothing here awaits: a slow reader only grows its own queue, and when its transport still
holds more than `limit` bytes after a flush it is cut off through `on_overflow`. (The check
is at flush, not push: one loop turn may fan out a whole input chunk's worth of lines,
which a reader that keeps up drains at once.)

A busy room's lines go out through its `Broadcast`: within one loop turn, the members that
had nothing else queued share one list of chunks per charset (a `Batch`), so each further
line costs one append for the whole room instead of one per member, and the flush joins
it once for all of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Protocol

from telchat.obs.logs import get_logger
from telchat.rules.charsets import c1_safe, readable

log = get_logger(__name__)

CRLF = "\r\n"
# How long a notice may wait to share a write with later ones (`Flusher.linger`).
NOTICE_LINGER = 0.25


class Sink(Protocol):
    """Where an Outbox's bytes go: a transport, in production."""

    def write(self, data: bytes) -> int:
        """Write `data`; return the bytes still buffered, not yet taken by the socket."""

    def buffered(self) -> int: ...


def encode_line(text: str, charset: str) -> bytes:
    return encode_text(text + CRLF, charset)


def encode_text(text: str, charset: str) -> bytes:
    if charset == "utf-8":
        return text.encode(charset, "replace")
    # No ordinary character may become a C1 control byte (koi8-r '⌡' is 0x9B, CSI), and
    # telnet reserves 0xFF (IAC), which single-byte charsets produce (cp1251 'я').
    data = c1_safe(text, charset).encode(charset, readable(charset))
    return data.replace(b"\xff", b"\xff\xff")


class Flusher:
    """Writes every Outbox that got data during this loop turn, once, at the turn's end.

    Hooks given to `before_flush` run first in the same callback: a store commits there,
    so the lines it then delivers are written at once, not one loop turn later (a turn
    more in the pipeline means smaller batches under load, and more latency)."""

    __slots__ = ("_before", "_dirty", "_lingering", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._dirty: list[Outbox] = []
        self._before: list[Callable[[], None]] = []
        self._scheduled = False
        # Outboxes holding only lingering notices, written together NOTICE_LINGER after the first.
        self._lingering: list[Outbox] = []

    def before_flush(self, hook: Callable[[], None]) -> None:
        self._before.append(hook)

    def schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            loop = self._loop or asyncio.get_running_loop()
            loop.call_soon(self.flush)

    def mark(self, outbox: Outbox) -> None:
        self._dirty.append(outbox)
        if not self._scheduled:
            self.schedule()

    def linger(self, outbox: Outbox) -> None:
        """Write `outbox` within NOTICE_LINGER, unless something urgent writes it first."""
        if not self._lingering:
            loop = self._loop or asyncio.get_running_loop()
            loop.call_later(NOTICE_LINGER, self._write_lingering)
        self._lingering.append(outbox)

    def _write_lingering(self) -> None:
        lingering, self._lingering = self._lingering, []
        self._write_each(lingering)

    def flush(self) -> None:
        # Reset first: what the hooks publish in turn (an away notice answering a message)
        # needs a flush of its own, next turn; what they deliver is written below.
        self._scheduled = False
        try:
            for hook in self._before:
                hook()
        finally:
            self._write()

    def _write(self) -> None:
        dirty, self._dirty = self._dirty, []
        self._write_each(dirty)

    @staticmethod
    def _write_each(dirty: list[Outbox]) -> None:
        for outbox in dirty:
            try:
                outbox.flush()
            except Exception:
                # One recipient's failure must not cost everyone after it their lines.
                log.exception("flush_failed")
                outbox.close()


class Batch:
    """One room's lines for its members of one charset, queued within one loop turn.

    The outboxes of those members share `chunks` (not a copy of it) as their queue, so
    appending a line here queues it for all of them. It stays `open` for appends only while
    every one of them still shares it: an outbox that gets anything else, or is flushed,
    closes it (`Outbox._unshare`, `joined`).
    """

    __slots__ = ("_data", "chunks", "open")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.open = True
        self._data: bytes | None = None

    def joined(self) -> bytes:
        """The queued bytes, joined once for every member; no more appends after this."""
        if self._data is None:
            self.open = False
            chunks = self.chunks
            self._data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return self._data


class Outbox:
    __slots__ = (
        "_batch",
        "_chunks",
        "_flusher",
        "_limit",
        "_lingers",
        "_on_overflow",
        "_sink",
        "_written",
        "bytes_out",
        "closed",
    )

    def __init__(self, sink: Sink, flusher: Flusher, limit: int, on_overflow: Callable[[], None]) -> None:
        self._sink = sink
        self._flusher = flusher
        self._limit = limit
        self._on_overflow = on_overflow
        self._chunks: list[bytes] = []
        # The Batch whose chunks `_chunks` is, while this outbox shares one.
        self._batch: Batch | None = None
        # Waiters for the next flush (`written`); None while nobody waits.
        self._written: list[asyncio.Future[bool]] | None = None
        self.bytes_out = 0
        self.closed = False
        # What is queued may wait (`Flusher.linger`): lingering notices only.
        self._lingers = False

    @property
    def queued(self) -> int:
        return sum(map(len, self._chunks)) + self._sink.buffered()

    def attach(self, sink: Sink, on_overflow: Callable[[], None]) -> None:
        """Write to `sink` from now on (a user carried over an upgrade gets its session's)."""
        self._sink = sink
        self._on_overflow = on_overflow

    def push(self, data: bytes, linger: bool = False) -> None:
        """Queue `data`, written at the end of this loop turn; with `linger` (a notice), within
        NOTICE_LINGER, with whatever else is queued by then. Anything urgent queued behind a
        lingering notice takes it along at the turn's end: the order never changes."""
        if self.closed:
            return
        if self._batch is not None:
            self._unshare()
        elif not self._chunks:
            self._lingers = linger
            if linger:
                self._flusher.linger(self)
            else:
                self._flusher.mark(self)
        elif self._lingers and not linger:
            self._lingers = False
            self._flusher.mark(self)
        self._chunks.append(data)

    def share(self, batch: Batch) -> bool:
        """Queue `batch`'s lines, now and later in this turn; False (and nothing queued) when
        other output is queued first, or this outbox is closed."""
        if self._chunks or self.closed:
            return False
        self._flusher.mark(self)
        self._chunks = batch.chunks
        self._batch = batch
        return True

    def _unshare(self) -> None:
        # Anything else for this connection ends the batch: later lines of the room would
        # otherwise overtake it in this outbox, or be missed by it.
        assert self._batch is not None
        self._batch.open = False
        self._batch = None
        self._chunks = list(self._chunks)

    def written(self) -> asyncio.Future[bool]:
        """True once what is queued now has been handed to the sink; False if this outbox
        was closed first (the lines never left)."""
        waiter = asyncio.get_running_loop().create_future()
        if self.closed:
            waiter.set_result(False)
        elif not self._chunks:
            waiter.set_result(True)
        else:
            if self._written is None:
                self._written = []
            self._written.append(waiter)
        return waiter

    def _tell_written(self, written: bool) -> None:
        waiters, self._written = self._written, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(written)

    def flush(self) -> None:
        if self.closed or not self._chunks:
            return
        batch = self._batch
        if batch is not None:
            data = batch.joined()
            self._batch = None
        else:
            chunks = self._chunks
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self._lingers = False
        self.bytes_out += len(data)
        buffered = self._sink.write(data)
        if self._written is not None:
            self._tell_written(True)
        if buffered > self._limit:
            self._overflow()

    def take_queued(self) -> bytes:
        """What is queued and not yet written, removed from the queue (a server upgrade
        carries it to the next process)."""
        if self._batch is not None:
            self._unshare()
        data = b"".join(self._chunks)
        self._chunks = []
        return data

    def close(self) -> None:
        """Drop anything queued and accept no more."""
        self.closed = True
        # A batch it shared goes on for the others; this outbox simply lets go of it.
        self._batch = None
        self._chunks = []
        if self._written is not None:
            self._tell_written(False)

    def _overflow(self) -> None:
        self.close()
        self._on_overflow()


class Broadcast:
    """A room's fan-out: lines to all its members, one shared Batch per charset per loop turn.

    `send` assumes `members` (and their charsets) are the same as at the previous call unless
    `reset` was called in between: the room calls it whenever its membership changes, and any
    other output to a member (a charset change is always answered) closes its batch anyway.
    """

    __slots__ = ("_batches",)

    def __init__(self) -> None:
        self._batches: dict[str, Batch] = {}

    def reset(self) -> None:
        for batch in self._batches.values():
            batch.open = False
        self._batches = {}

    def send(self, text: str, members: Iterable[Recipient]) -> None:
        if not self._append(text):
            self._start(text, members)

    def _append(self, text: str) -> bool:
        """Add `text` to this turn's batches, if every member still shares them."""
        batches = self._batches
        if not batches:
            return False
        for batch in batches.values():
            if not batch.open:
                return False
        for charset, batch in batches.items():
            batch.chunks.append(encode_line(text, charset))
        return True

    def _start(self, text: str, members: Iterable[Recipient]) -> None:
        self.reset()
        batches = self._batches
        encoded: dict[str, bytes] = {}
        complete = True
        for member in members:
            charset = member.charset
            batch = batches.get(charset)
            if batch is None:
                batch = batches[charset] = Batch()
                data = encoded[charset] = encode_line(text, charset)
                batch.chunks.append(data)
            if not member.outbox.share(batch):
                # Its queue holds other output first: it takes this line on its own, and
                # the room's later lines this turn cannot go through the batches.
                member.outbox.push(encoded[charset])
                complete = False
        if not complete:
            self.reset()


def fan_out(text: str, recipients: Iterable[Recipient], linger: bool = False) -> int:
    """Queue `text` on every recipient, encoding it once per charset (with `linger`, as a
    notice that may wait: `Outbox.push`); return the count."""
    encoded: dict[str, bytes] = {}
    count = 0
    for recipient in recipients:
        charset = recipient.charset
        data = encoded.get(charset)
        if data is None:
            data = encoded[charset] = encode_line(text, charset)
        recipient.outbox.push(data, linger)
        count += 1
    return count


class Recipient(Protocol):
    @property
    def charset(self) -> str: ...

    @property
    def outbox(self) -> Outbox: ...
