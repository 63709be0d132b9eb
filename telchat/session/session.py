"""One connected person: bytes in, lines out, through the command layer. No telnet here.

The protocol layer offers raw bytes to `Session.take` as they arrive and feeds what that
refuses to `Session.feed` from the connection's reading task (`protocol.pump`); it ends the
session with `finish`. Everything the session says goes through its user's Outbox.

Most lines are plain messages, which never wait for anything: `take` handles them in
data_received, so that a message is committed and delivered at the end of the loop turn it
arrived in. A line that must wait (a command, an answer to a prompt, a line held back by
fakelag, and everything after it) goes to the reading task, in order: `take` refuses input
while that task has anything in hand.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog

from telchat.chat.outbox import Flusher, Outbox, Sink
from telchat.chat.rooms import Chat, User
from telchat.config import Config
from telchat.features.accounts import Answer
from telchat.features.services import Services
from telchat.obs import limits
from telchat.obs.counters import COUNTERS
from telchat.obs.logs import get_logger
from telchat.obs.stats import STATS
from telchat.rules import replies
from telchat.rules.flood import Fakelag
from telchat.rules.lines import LineSplitter, Overflow, Oversize
from telchat.rules.sanitize import sanitize
from telchat.session import commands
from telchat.telnet.gate import ReadGate

log = get_logger(__name__)

# Input is split into lines this much at a time, so that a chunk of thousands of tiny lines
# waiting out fakelag is held as bytes, not as thousands of line objects.
FEED_SLICE = 4096


class Framer(Protocol):
    """Turns input bytes into lines: LineSplitter, or a terminal's line editor (terminal.py)."""

    def feed(self, data: bytes) -> Sequence[bytes | str | Oversize]: ...


class Session:
    def __init__(
        self,
        chat: Chat,
        config: Config,
        *,
        sink: Sink,
        flusher: Flusher,
        close: Callable[[], None],
        abort: Callable[[], None],
        conn_id: int,
        peer: str,
        charset: str = "utf-8",
        services: Services,
        hide_input: Callable[[bool], None] = lambda hidden: None,
        gate: ReadGate | None = None,
    ) -> None:
        self.chat = chat
        self.services = services
        # Asks the client to stop (True) or resume (False) echoing what its user types.
        self._hide_input = hide_input
        self._secret: Answer | None = None
        self._config = config
        self._close = close
        self._abort = abort
        self._splitter: Framer = LineSplitter(config.max_line_bytes, config.max_unterminated_bytes)
        # Sees each line before the commands do; True means it was answered (terminal.py sets it).
        self.intercept: Callable[[str], bool] | None = None
        self.user = User(conn_id, Outbox(sink, flusher, config.sendq_bytes, self._on_sendq), peer, charset)
        self.user.hangup = self._kicked
        self.reason: str | None = None
        self._gate = gate
        self._fakelag = Fakelag(config.flood_burst, config.flood_rate) if config.flood_rate else None
        # The connection closed while a line waited out fakelag: the rest of its input is dropped.
        self._gone = False
        # The reading task is handling input: `take` must leave newer input to it.
        self._reading = False
        # What `take` left for the reading task: lines, or the Overflow or failure that ended them.
        self._backlog: Sequence[bytes | str | Oversize] | Exception | None = None
        self.bytes_in = 0
        self._started = time.monotonic()

    @property
    def closing(self) -> bool:
        return self.reason is not None

    def set_framer(self, framer: Framer) -> None:
        self._splitter = framer

    def start(self) -> None:
        self.chat.connect(self.user)
        self.user.send(replies.WELCOME)

    def take(self, data: bytes, nudge: Callable[[], None]) -> bool:
        """Handle a chunk of input now, as it arrives, unless the reading task has input in
        hand (then False: it reads this after). Lines that must wait are left to that task,
        which `nudge` wakes."""
        if self._reading or self._backlog is not None or self.closing or self._gone or len(data) > FEED_SLICE:
            return False
        self.bytes_in += len(data)
        try:
            lines = self._splitter.feed(data)
            for at, line in enumerate(lines):
                if self.closing:
                    break
                if not self._say_now(line):
                    self._backlog = lines[at:]
                    break
        except Exception as exc:
            # Raised again in the reading task, which ends the session as for its own.
            self._backlog = exc
        if self._backlog is not None:
            nudge()
        return True

    async def catch_up(self) -> None:
        backlog, self._backlog = self._backlog, None
        self._reading = True
        try:
            if isinstance(backlog, Overflow):
                self._overflowed(backlog)
            elif isinstance(backlog, Exception):
                raise backlog
            elif backlog is not None:
                await self._lines(backlog)
        finally:
            self._reading = False

    async def feed(self, data: bytes) -> None:
        """Handle a chunk of input; on return, `closing` says whether to stop reading."""
        self.bytes_in += len(data)
        self._reading = True
        try:
            for start in range(0, len(data), FEED_SLICE):
                if self.closing or self._gone:
                    return
                await self._feed_slice(data[start : start + FEED_SLICE])
        finally:
            self._reading = False

    async def _feed_slice(self, data: bytes) -> None:
        try:
            lines = self._splitter.feed(data)
        except Overflow as exc:
            self._overflowed(exc)
            return
        await self._lines(lines)

    def _overflowed(self, exc: Overflow) -> None:
        # The lines completed before the overflow are lost with it: this client is abusive.
        limits.hit("unterminated_input", bytes=exc.args[0])
        self.user.send(replies.INPUT_OVERFLOW.format(limit=self._config.max_unterminated_bytes))
        self.quit("input overflow", reason="readq")

    async def _lines(self, lines: Sequence[bytes | str | Oversize]) -> None:
        for line in lines:
            if self.closing or self._gone:
                return
            if not await self._pace():
                self._gone = True
                return
            await self._handle(line)

    def _say_now(self, line: bytes | str | Oversize) -> bool:
        """Handle `line` here and now if it is a plain message (or blank) and nothing makes
        it wait; False, with nothing done, if it must go through `_pace` and `_handle`."""
        fakelag = self._fakelag
        if isinstance(line, Oversize) or self._secret is not None or (fakelag is not None and not fakelag.ready()):
            return False
        text = self._text(line)
        parsed = commands.parse(text) if text else None
        if parsed is not None and not isinstance(parsed, commands.Say):
            return False
        if fakelag is not None:
            fakelag.take()  # no wait: it was ready
        self.user.profile.touch()
        if parsed is None or (self.intercept is not None and self.intercept(text)):
            return True
        try:
            commands.say(self, parsed)
        except Exception:
            self._failed()
        return True

    async def _pace(self) -> bool:
        """Fakelag: wait for this line's turn. False if the connection went away meanwhile."""
        if self._fakelag is None:
            return True
        delay, begins = self._fakelag.take()
        if begins:
            rate = f"{self._config.flood_rate:g}"
            limits.hit("flood", nick=self.user.nick, burst=self._config.flood_burst, rate=rate)
            self.user.send(replies.SLOWED_DOWN.format(rate=rate))
        if delay <= 0:
            return True
        if self._gate is None:
            await asyncio.sleep(delay)
            return True
        return await self._gate.sleep(delay, "flood")

    async def _handle(self, line: bytes | str | Oversize) -> None:
        if isinstance(line, Oversize):
            limits.hit("line_length", level="info", bytes=line.length)
            self.user.send(replies.LINE_TOO_LONG.format(length=line.length, limit=self._config.max_line_bytes))
            return
        text = self._text(line)
        self.user.profile.touch()
        secret, self._secret = self._secret, None
        if secret is not None:
            self._hide_input(False)
        elif not text or (self.intercept is not None and self.intercept(text)):
            return
        nick = self.user.nick
        try:
            if secret is not None:
                await commands.run(self, secret(text))
            else:
                parsed = commands.parse(text)
                if not isinstance(parsed, commands.Say):
                    # A command answers its user directly: first let what earlier lines published
                    # come back (a store may deliver a turn, or a Redis round trip, later), so the
                    # answer cannot overtake it. Plain messages only publish, and need no wait.
                    await self.chat.store.settled()
                await commands.execute(self, parsed)
            if self.user.nick != nick:
                structlog.contextvars.bind_contextvars(nick=self.user.nick)
        except Exception:
            self._failed()

    def _text(self, line: bytes | str) -> str:
        return sanitize(line if isinstance(line, str) else line.decode(self.user.charset, "replace")).strip()

    def _failed(self) -> None:
        # One bad line must never end the session or touch anyone else's. Explicit identity:
        # `take` runs in data_received, outside the session task's context variables.
        log.exception("command_failed", conn_id=self.user.conn_id, peer=self.user.peer, nick=self.user.nick)
        self.user.send(replies.INTERNAL_ERROR)

    def ask_secret(self, prompt: str, answer: Answer) -> None:
        """Hand the next line to `answer` instead of the command layer, input hidden."""
        self._secret = answer
        self._hide_input(True)
        self.user.send(prompt)

    def _kicked(self, message: str) -> None:
        self.quit(message, reason="kicked")

    def quit(self, message: str, reason: str = "quit", farewell: str | None = replies.GOODBYE) -> None:
        """End this session at the user's (or a limit's) request."""
        if self.closing:
            return
        self.reason = reason
        if farewell is not None:
            self.user.send(farewell)
        self.chat.disconnect(self.user, message)
        self.user.outbox.flush()
        self._close()

    def _on_sendq(self) -> None:
        if self.closing:
            return
        self.reason = "sendq"
        user = self.user
        limits.hit("sendq", conn_id=user.conn_id, peer=user.peer, nick=user.nick, bytes=self._config.sendq_bytes)
        self.chat.disconnect(self.user, replies.SENDQ_EXCEEDED)
        if self._gate is not None:
            self._gate.drop()
        else:
            self._abort()  # its queue is the problem: drop it, do not wait for it

    def finish(self, reason: str) -> None:
        """The connection is gone (or going): clean up and log why. Idempotent."""
        cut = self._gate.cut if self._gate is not None else None
        self.reason = self.reason or cut or reason
        COUNTERS.inc("disconnects", reason=self.reason)
        STATS.bytes_in_closed += self.bytes_in
        STATS.bytes_out_closed += self.user.outbox.bytes_out
        self.chat.disconnect(self.user, "connection closed" if reason in ("eof", "error") else self.reason)
        log.info(
            "disconnect",
            conn_id=self.user.conn_id,
            peer=self.user.peer,
            nick=self.user.nick,
            reason=self.reason,
            duration=round(time.monotonic() - self._started, 3),
            bytes_in=self.bytes_in,
            bytes_out=self.user.outbox.bytes_out,
        )
