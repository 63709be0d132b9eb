"""One connected person: bytes in, lines out, through the command layer. No telnet here.

The protocol layer offers raw bytes to `Session.take` as they arrive and feeds what that
refuses to `Session.feed` from the connection's reading task (`protocol.pump`); it ends the
session with `finish`. Everything the session says goes through its user's Outbox.

A line takes one path whichever way it came in: the framer cuts it, `_decide` says what it
is (the one place where a line becomes a command, so a check before dispatch is written
once), and it runs at once if nothing makes it wait (`_now`: a plain message, committed and
delivered at the end of the loop turn it arrived in), else in the reading task, in order
(`_run`: a command, the answer to a prompt, a line fakelag holds back, and every line after
it). Input keeps being framed while lines wait, so a character-mode user's typing is echoed
even while pasted lines are paced; only when the lines waiting pass the unterminated-input
limit does reading stop (backpressure), and the sender's kernel buffers fill instead.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import structlog

from telchat.chat.outbox import Flusher, Outbox, Sink
from telchat.chat.profile import Profile
from telchat.chat.rooms import Chat, User
from telchat.config import Config
from telchat.features.accounts import Answer
from telchat.features.services import Services
from telchat.obs.limits import EndReason, LimitKind
from telchat.obs.logs import get_logger
from telchat.rules import charsets, replies
from telchat.rules.flood import Fakelag, PasteMeter
from telchat.rules.lines import LineSplitter, Overflow, Oversize, apply_edits
from telchat.rules.plain import sparse
from telchat.rules.sanitize import sanitize
from telchat.session import commands

log = get_logger(__name__)

# Input is split into lines this much at a time, so that a chunk of thousands of tiny lines
# waiting out fakelag is held as bytes, not as thousands of line objects.
FEED_SLICE = 4096

Cut = bytes | str | Oversize


class Framer(Protocol):
    """Turns input bytes into lines: LineSplitter, or a terminal's line editor (terminal.py)."""

    def feed(self, data: bytes) -> Sequence[Cut]: ...

    @property
    def pending(self) -> int:
        """Input held for a line not yet complete."""


class Gate(Protocol):
    """A connection's read gate as the session uses it (telchat/telnet/gate.py's ReadGate)."""

    @property
    def cut(self) -> LimitKind | None:
        """Why the connection layer cut the connection (a limit kind), if it did."""

    async def sleep(self, seconds: float, hold: Literal["flood"] | None) -> bool:
        """Sleep, with reading held under the name `hold` (None: not held); False (early,
        if need be) when the peer is gone."""

    def drop(self) -> None:
        """Reset the connection, discarding what is queued, in the kernel too."""

    def peer_gone(self) -> bool:
        """Whether the peer closed or reset the connection."""


@dataclass(slots=True, frozen=True)
class Reply:
    """The line that answers a prompt (a password), for the `Answer` that asked."""

    answer: Answer
    text: str


@dataclass(slots=True, frozen=True)
class TooLong:
    length: int


# What a line is, once decided: nothing to do (None), a parsed command or message, a reply.
Decision = commands.Parsed | Reply | TooLong | None


@dataclass(slots=True, frozen=True)
class Decided:
    """A line decided (and paced) in data_received that must still run in the reading task."""

    decision: Decision


class Connection(Protocol):
    """How a session ends its connection (its transport, whatever the door)."""

    def close(self) -> None: ...

    def abort(self) -> None: ...


class EchoControl(Protocol):
    """Asks the client to stop (True) or resume (False) echoing what its user types; says
    whether the client can (the Terminal, for telnet)."""

    def hide_input(self, hidden: bool) -> bool: ...


class Session:
    def __init__(
        self,
        chat: Chat,
        config: Config,
        *,
        sink: Sink,
        flusher: Flusher,
        connection: Connection,
        conn_id: int,
        peer: str,
        door: str = "telnet",
        charset: str = "utf-8",
        services: Services,
        echo: EchoControl,
        gate: Gate | None = None,
        user: User | None = None,
    ) -> None:
        self.chat = chat
        self.services = services
        self._echo = echo
        self._secret: Answer | None = None
        self._config = config
        self._connection = connection
        self._splitter: Framer = LineSplitter(config.max_line_bytes, config.max_unterminated_bytes)
        # Sees each line before the commands do; True means it was answered (terminal.py sets it).
        self.intercept: Callable[[str], bool] | None = None
        if user is None:
            outbox = Outbox(sink, flusher, config.sendq_bytes, self.sendq_exceeded)
            user = User(conn_id, outbox, peer, charset, door)
        else:  # taken up already, with a sink of its own meanwhile (telnet/dormant.py)
            user.outbox.attach(sink, self.sendq_exceeded)
        self.user = user
        self.user.link = self
        self.reason: EndReason | None = None
        self._gate = gate
        self._fakelag = Fakelag(config.flood_burst, config.flood_rate) if config.flood_rate else None
        # Lines cut but not yet run, in order, each with its flood cost (a Decided one is paced).
        # None while nothing waits: an empty deque is 760 bytes, held by every idle session.
        self._waiting: deque[tuple[Cut | Decided, float]] | None = None
        self._waiting_bytes = 0
        self._paste = PasteMeter()
        # The reading task is running a line: newer lines wait behind it.
        self._busy = False
        # The connection closed while a line waited out fakelag: the rest of its input is dropped.
        self._gone = False
        # A failure in data_received, raised again in the reading task to end the session there.
        self._failure: Exception | None = None
        self._finished = False
        self._charset_hinted = False
        # The line waiting out fakelag in the reading task, and whether a line is running there.
        self._pacing: tuple[Cut, float] | None = None
        self._running = False
        self.bytes_in = 0
        self._started = time.monotonic()

    @property
    def closing(self) -> bool:
        return self.reason is not None

    # Link: the user's connection, as the chat sees it.

    def connected(self) -> bool:
        return self._gate is None or not self._gate.peer_gone()

    def hangup(self, message: str) -> None:
        self.quit(message, reason="kicked")

    @property
    def held_input(self) -> int:
        """Bytes (or characters) of input held: the line being typed, and the lines waiting."""
        return self._splitter.pending + self._waiting_bytes

    def set_framer(self, framer: Framer) -> None:
        self._splitter = framer

    def start(self) -> None:
        self.chat.connect(self.user)
        self.user.send(replies.WELCOME)

    # A server upgrade: the whole session as plain data, and back.

    @property
    def settled(self) -> bool:
        """No line is running, nor decided and waiting to run: the session can be carried over."""
        return not self._running and not any(isinstance(item, Decided) for item, _ in self._waiting or ())

    def snapshot(self, take_output: bool = True, look: str | None = None) -> dict[str, Any]:
        """Everything this session is, as plain data (bytes as latin-1 text), with what it
        has queued for output (taken from its Outbox, with `take_output`) and its nick's
        `look` key (`Chat.look_keys`); what is empty left out. Call when `settled`."""
        user = self.user
        state = {
            "nick": user.nick,
            "key": user.key,
            "look": look,
            "account": user.account,
            "operator": user.operator,
            "charset": user.charset,
            "rooms": [[room.key, room.name] for room in user.rooms.values()],
            "current": user.current.key if user.current is not None else None,
            "profile": user.profile.snapshot(),
            "fakelag": self._fakelag.snapshot() if self._fakelag is not None else None,
            "splitter": self._splitter.snapshot() if isinstance(self._splitter, LineSplitter) else None,
            "waiting": self._carried_waiting() if self._pacing is not None or self._waiting else None,
            "secret": self._secret is not None,
            "charset_hinted": self._charset_hinted,
            "bytes_in": self.bytes_in,
            "bytes_out": user.outbox.bytes_out,
            "duration": time.monotonic() - self._started,
            "output": user.outbox.take_queued().decode("latin-1") if take_output else "",
        }
        return sparse(state, *_OPTIONAL)

    def _carried_waiting(self) -> list[tuple[str, str | int, float]]:
        pacing = [self._pacing] if self._pacing is not None else []
        waiting = [*pacing, *(self._waiting or ())]
        return [_carried(item, cost) for item, cost in waiting if not isinstance(item, Decided)]

    def resume(self, state: dict[str, Any], taken_up: bool = False) -> None:
        """Take up a `snapshot` in place of `start`: no greeting, and no one is told. A user
        `taken_up` already (by `take_up`) is back in the chat, its output sent or queued."""
        if not taken_up:
            take_up(self.chat, self.user, state)
        if self._fakelag is not None and state.get("fakelag") is not None:
            self._fakelag.restore(state["fakelag"])
        if isinstance(self._splitter, LineSplitter) and state.get("splitter") is not None:
            self._splitter.restore(state["splitter"])
        for kind, data, cost in state.get("waiting", ()):
            self._wait(_uncarried(kind, data), float(cost))
        if state.get("secret"):
            # The prompt's answer cannot be carried: its line must still not reach the chat.
            self._secret = self._interrupted
        self._charset_hinted = bool(state.get("charset_hinted"))
        self.bytes_in = int(state.get("bytes_in", 0))
        self._started = time.monotonic() - float(state["duration"])

    async def _interrupted(self, text: str) -> None:
        self.user.send(replies.PROMPT_INTERRUPTED)

    # Input: both ways in end in `_cut`.

    def take(self, data: bytes, nudge: Callable[[], None]) -> bool:
        """Handle a chunk of input now, in data_received; False leaves it to the reading task
        (a large chunk, or too many lines waiting already). `nudge` wakes that task for the
        lines that must wait."""
        if self.closing or self._gone or self._failure is not None or len(data) > FEED_SLICE:
            return False
        if self._waiting_bytes >= self._config.max_unterminated_bytes:
            return False
        try:
            self._cut(data)
        except Exception as exc:
            self._failure = exc
        if self._waiting or self._failure is not None:
            nudge()
        return True

    async def feed(self, data: bytes) -> None:
        """Handle a chunk of input; on return, `closing` says whether to stop reading."""
        for start in range(0, len(data), FEED_SLICE):
            if self.closing or self._gone:
                return
            self._cut(data[start : start + FEED_SLICE])
            await self.catch_up()

    async def catch_up(self) -> None:
        """Run the lines waiting, in order, pacing those not paced yet."""
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure
        if self._busy:
            return
        self._busy = True
        try:
            while self._waiting and not (self.closing or self._gone):
                item, cost = self._waiting.popleft()
                self._waiting_bytes -= _size(item)
                if isinstance(item, Decided):
                    await self._run(item.decision)
                    continue
                self._pacing = (item, 0.0)  # its cost is taken: carried over an upgrade, it costs nothing more
                paced = await self._pace(cost)
                self._pacing = None
                if paced:
                    await self._run(self._decide(item))
                else:
                    self._gone = True
            if self._gone or not self._waiting:
                self._waiting = None
                self._waiting_bytes = 0
        finally:
            self._busy = False

    def _cut(self, data: bytes) -> None:
        self.bytes_in += len(data)
        try:
            lines = self._splitter.feed(data)
        except Overflow as exc:
            self._overflowed(exc)
            return
        for line in lines:
            if self.closing:
                return
            cost = self._paste.cost()
            if self._waiting or self._busy or not self._ready(cost):
                self._wait(line, cost)
                continue
            decision = self._decide(line)
            if not self._now(decision):
                self._wait(Decided(decision), 0.0)

    def _wait(self, item: Cut | Decided, cost: float) -> None:
        if self._waiting is None:
            self._waiting = deque()
        self._waiting.append((item, cost))
        self._waiting_bytes += _size(item)

    def _overflowed(self, exc: Overflow) -> None:
        # The lines completed before the overflow are lost with it: this client is abusive.
        self._limit("unterminated_input", bytes=exc.args[0])
        self.user.send(replies.INPUT_OVERFLOW.format(limit=self._config.max_unterminated_bytes))
        self.quit("input overflow", reason="readq")

    # Pacing.

    def _ready(self, cost: float) -> bool:
        """Take this line's flood cost now if it needs no wait; False (nothing taken) if it does."""
        fakelag = self._fakelag
        if fakelag is None:
            return True
        if not fakelag.ready(cost):
            return False
        fakelag.take(cost)
        return True

    async def _pace(self, cost: float) -> bool:
        """Fakelag: wait for this line's turn. False if the connection went away meanwhile."""
        if self._fakelag is None:
            return True
        delay, begins = self._fakelag.take(cost)
        if begins:
            rate = f"{self._config.flood_rate:g}"
            self._limit("flood", burst=self._config.flood_burst, rate=rate)
            self.user.send(replies.SLOWED_DOWN.format(rate=rate))
        if delay <= 0:
            return True
        if self._gate is None:
            await asyncio.sleep(delay)
            return True
        # Reading goes on (typing is echoed) until the lines waiting reach the input limit.
        full = self._waiting_bytes >= self._config.max_unterminated_bytes
        return await self._gate.sleep(delay, "flood" if full else None)

    # The one path: decide what a line is, then run it now or in the reading task.

    def _decide(self, line: Cut) -> Decision:
        """What `line` is. Every line passes here exactly once, in order, just before it runs."""
        if isinstance(line, Oversize):
            return TooLong(line.length)
        text = self._text(line)
        self.user.profile.touch()
        secret, self._secret = self._secret, None
        if secret is not None:
            self._echo.hide_input(False)
            return Reply(secret, text)
        if not text or (self.intercept is not None and self.intercept(text)):
            return None
        return commands.parse(text)

    def _now(self, decision: Decision) -> bool:
        """Run `decision` if it needs no wait; False, with nothing done, if it does."""
        if decision is None:
            return True
        if isinstance(decision, TooLong):
            self._limit("line_length", level="info", bytes=decision.length)
            limit = self._config.max_line_bytes
            self.user.send(replies.LINE_TOO_LONG.format(length=decision.length, limit=limit))
            return True
        if not isinstance(decision, commands.Say):
            return False
        try:
            commands.say(self, decision)
        except Exception:
            self._failed()
        return True

    async def _run(self, decision: Decision) -> None:
        if self._now(decision):
            return
        nick = self.user.nick
        self._running = True
        try:
            if isinstance(decision, Reply):
                await commands.run(self, decision.answer(decision.text))
            else:
                assert decision is not None and not isinstance(decision, TooLong)
                # A command answers its user directly: first let what earlier lines published
                # come back (a store may deliver a turn, or a Redis round trip, later), so the
                # answer cannot overtake it. Plain messages only publish, and need no wait.
                await self.chat.store.settled()
                await commands.execute(self, decision)
            if self.user.nick != nick:
                structlog.contextvars.bind_contextvars(nick=self.user.nick)
        except Exception:
            self._failed()
        finally:
            self._running = False

    def _text(self, line: bytes | str) -> str:
        if isinstance(line, str):  # a character-mode line, edited (lineedit.py)
            return sanitize(line).strip()
        text = line.decode(self.user.charset, "replace")
        if "\ufffd" in text:
            self.check_charset(line)
        # A line-mode line may hold its user's editing keys.
        return sanitize(apply_edits(text)).strip()

    def check_charset(self, raw: bytes) -> None:
        """`raw` did not decode: if it reads as cp1251 or koi8-r, suggest that charset, once."""
        if self._charset_hinted or self.user.charset != "utf-8":
            return
        guess = charsets.guess_cyrillic(raw)
        if guess is not None:
            self._charset_hinted = True
            self.user.send(replies.CHARSET_HINT.format(charset=guess))

    def _limit(self, kind: LimitKind, **fields: Any) -> None:
        # Explicit identity: this may run in data_received, outside the session task's context.
        self.chat.telemetry.limit(kind, **self.user.identity, **fields)

    def _failed(self) -> None:
        # One bad line must never end the session or touch anyone else's. Explicit identity:
        # `take` runs in data_received, outside the session task's context variables.
        log.exception("command_failed", **self.user.identity)
        self.user.send(replies.INTERNAL_ERROR)

    def ask_secret(self, prompt: str, answer: Answer) -> None:
        """Hand the next line to `answer` instead of the command layer, input hidden."""
        self._secret = answer
        hidden = self._echo.hide_input(True)
        self.user.send(prompt if hidden else prompt.replace(replies.TYPING_HIDDEN, replies.TYPING_SHOWN))

    def quit(self, message: str, reason: EndReason = "quit", farewell: str | None = replies.GOODBYE) -> None:
        """End this session at the user's (or a limit's) request."""
        if self.closing:
            return
        self.reason = reason
        if farewell is not None:
            self.user.send(farewell)
        self.chat.disconnect(self.user, message)
        self.user.outbox.flush()
        self._connection.close()

    def sendq_exceeded(self) -> None:
        if self.closing:
            return
        self.reason = "sendq"
        self._limit("sendq", bytes=self._config.sendq_bytes)
        self.chat.disconnect(self.user, replies.SENDQ_EXCEEDED)
        if self._gate is not None:
            self._gate.drop()
        else:
            self._connection.abort()  # its queue is the problem: drop it, do not wait for it

    def finish(self, reason: EndReason) -> None:
        """The connection is gone (or going): clean up, count and log why, once."""
        if self._finished:
            return
        self._finished = True
        cut = self._gate.cut if self._gate is not None else None
        self.reason = self.reason or cut or reason
        telemetry = self.chat.telemetry
        telemetry.counters.inc("disconnects", reason=self.reason)
        telemetry.stats.bytes_in_closed += self.bytes_in
        telemetry.stats.bytes_out_closed += self.user.outbox.bytes_out
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


def take_up(chat: Chat, user: User, state: dict[str, Any]) -> None:
    """Put a user carried over a server upgrade (its session's `snapshot`) back as it was:
    its names and profile, the bytes it was sent, its queued output, its rooms."""
    user.nick, user.key = str(state["nick"]), state.get("key")
    user.account, user.operator = state.get("account"), bool(state.get("operator"))
    user.profile = Profile.restored(state["profile"])
    user.outbox.bytes_out = int(state.get("bytes_out", 0))
    output = str(state.get("output", "")).encode("latin-1")
    if output:
        user.outbox.push(output)
    rooms = [(str(key), str(name)) for key, name in state.get("rooms", ())]
    chat.adopt(user, rooms, state.get("current"), state.get("look"))


def idle_carried(state: dict[str, Any]) -> bool:
    """Whether a carried session (its `snapshot`) has nothing to do until its next input:
    no line waits, and no prompt (whose answer must not reach the chat) is open."""
    return not state.get("waiting") and not state.get("secret")


# Left out of a snapshot when empty (`sparse`).
_OPTIONAL = (
    "key",
    "look",
    "account",
    "operator",
    "rooms",
    "current",
    "fakelag",
    "splitter",
    "waiting",
    "secret",
    "charset_hinted",
    "bytes_in",
    "bytes_out",
    "output",
)


def _carried(item: Cut, cost: float) -> tuple[str, str | int, float]:
    if isinstance(item, bytes):
        return ("bytes", item.decode("latin-1"), cost)
    if isinstance(item, str):
        return ("text", item, cost)
    return ("oversize", item.length, cost)


def _uncarried(kind: str, data: str | int) -> Cut:
    if kind == "bytes":
        return str(data).encode("latin-1")
    if kind == "text":
        return str(data)
    return Oversize(int(data))


def _size(item: Cut | Decided) -> int:
    return len(item) if isinstance(item, bytes | str) else 0
