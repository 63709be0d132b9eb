"""Noticing dead peers: TCP keepalive on every socket, a telnet TIMING-MARK ping on silence.

A client that speaks telnet and has sent nothing for `ping_after` seconds gets `IAC DO
TIMING-MARK`. Liveness must never drop a client that is still there, and clients differ
in what they answer:

- a client that sends nothing at all after its first ping, within `answer_within`
  seconds, is dropped: every telnet program answers a DO (WILL or WONT) by itself;
- a client that has answered two pings is trusted to answer every one, and dropped when
  it does not (its telnet layer has stopped, whatever its socket says);
- a client that answered one ping and ignores the next (TinTin++ answers the first with
  WONT and never another) is not pinged again: it gets `IAC NOP` instead, which needs no
  answer, and its socket a TCP user timeout, so that the kernel's verdict on whether
  those bytes arrive (with keepalive when nothing is sent) decides.

Raw TCP clients cannot answer a ping, so for them TCP keepalive is the only check.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import socket
import time
import weakref
from typing import Any, Protocol

from telchat.rules.plain import sparse

KEEPALIVE_IDLE = 60
KEEPALIVE_INTERVAL = 15
KEEPALIVE_COUNT = 4


def enable_keepalive(sock: Any) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        # Linux names; other systems keep their (much longer) defaults.
        for name, value in (
            ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
            ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
            ("TCP_KEEPCNT", KEEPALIVE_COUNT),
        ):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def set_user_timeout(transport: asyncio.BaseTransport | None, seconds: float) -> None:
    """Have the kernel give up on the connection when what we send goes unacknowledged
    this long (Linux; elsewhere keepalive alone decides)."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or not hasattr(socket, "TCP_USER_TIMEOUT"):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, max(1, int(seconds * 1000)))


class Watched(Protocol):
    """What a Watchdog watches. One object rather than five callbacks: each callback a bound
    method, which every telnet connection would hold for as long as it lasts."""

    def idle(self) -> float:
        """Seconds since the peer last sent anything."""

    def ping(self) -> None:
        """Send the peer a TIMING-MARK."""

    def nop(self) -> None:
        """Send the peer a NOP (it ignores pings)."""

    def deaf(self) -> None:
        """The peer ignores pings: leave it to TCP."""

    def expire(self) -> None:
        """The peer did not answer: end the connection."""


# uvloop's clock counts milliseconds.
CLOCK_RESOLUTION = 0.001


class _Timers:
    """Every watchdog's next look, on one event-loop timer. A timer each (its handle, its
    context, its callback bound to its watchdog, and uvloop's own timer) costs some 570
    bytes a connection, held for as long as it lasts; an entry here is a tuple and a weak
    reference. An entry is never removed: one that is no longer its watchdog's next look
    (`Watchdog._due`), or whose watchdog is gone, is passed over when its time comes."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, weakref.ref[Watchdog]]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = math.inf

    def add(self, when: float, dog: Watchdog) -> None:
        heapq.heappush(self._heap, (when, next(self._order), weakref.ref(dog)))
        if when < self._armed_at:
            self._arm(when)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._run)
        self._armed_at = when

    def _run(self) -> None:
        self._timer, self._armed_at = None, math.inf
        heap = self._heap
        # As asyncio's own loop does: what is due within the clock's resolution runs now,
        # or a timer uvloop fires a fraction of a millisecond early would be armed again and again.
        now = self._loop.time() + CLOCK_RESOLUTION
        while heap and heap[0][0] <= now:
            when, _, ref = heapq.heappop(heap)
            dog = ref()
            if dog is not None and dog._due == when:
                dog._due = None
                self._tick(dog)
        if heap:
            self._arm(heap[0][0])
        else:
            _TIMERS.pop(self._loop, None)

    def _tick(self, dog: Watchdog) -> None:
        # One watchdog's failure is reported as a timer's callback would be, and spares the rest.
        try:
            dog._tick()
        except Exception as exc:
            self._loop.call_exception_handler({"message": "liveness watchdog failed", "exception": exc})


_TIMERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Timers] = weakref.WeakKeyDictionary()


def _timers() -> _Timers:
    loop = asyncio.get_running_loop()
    timers = _TIMERS.get(loop)
    if timers is None:
        timers = _TIMERS[loop] = _Timers(loop)
    return timers


class Watchdog:
    """Pings a silent telnet peer and gives up on one that does not answer."""

    __slots__ = (
        "__weakref__",
        "_answer_within",
        "_answers",
        "_answers_at_ping",
        "_deaf",
        "_due",
        "_ping_after",
        "_pinged_at",
        "_pings",
        "_watched",
    )

    def __init__(self, watched: Watched, *, ping_after: float, answer_within: float) -> None:
        self._watched = watched
        self._ping_after = ping_after
        self._answer_within = answer_within
        self._pinged_at: float | None = None
        # When (loop time) it looks next; None while stopped.
        self._due: float | None = None
        self._pings = 0
        # TIMING-MARK answers (WILL or WONT), counted by `answered`.
        self._answers = 0
        self._answers_at_ping = 0
        # The client ignores repeated pings: it gets NOPs, and TCP decides (`Watched.deaf`).
        self._deaf = False

    def answered(self) -> None:
        """The client answered a TIMING-MARK."""
        self._answers += 1

    def snapshot(self) -> dict[str, Any]:
        """What it learnt of the client, as plain data (an upgrade carries it), what is empty
        left out: a client that ignores pings after its first (TinTin++) must not be pinged,
        and dropped, by the next image as if it were new."""
        if not self._pings:  # nothing learnt yet: most of an upgrade's thousands
            return {}
        return sparse({"pings": self._pings, "answers": self._answers, "deaf": self._deaf}, "answers", "deaf")

    def restore(self, state: dict[str, Any]) -> None:
        """Take up a `snapshot`. A ping unanswered at the time is not: its answer may have
        come during the upgrade, before anyone listened for it."""
        self._pings = int(state.get("pings", 0))
        self._answers = self._answers_at_ping = int(state.get("answers", 0))
        self._deaf = bool(state.get("deaf"))

    def start(self) -> None:
        if self._ping_after > 0:
            self._schedule(self._ping_after)

    def stop(self) -> None:
        self._due = None

    def _schedule(self, delay: float) -> None:
        timers = _timers()
        self._due = when = timers._loop.time() + max(delay, 0.01)
        timers.add(when, self)

    def _tick(self) -> None:
        watched = self._watched
        idle = watched.idle()
        # The clock `idle` is measured with (telnetlib3: datetime.now()), not loop.time():
        # uvloop's is in milliseconds and read once per loop turn, so comparing the two can
        # take an answer that came 1 ms after the ping for no answer at all.
        now = time.time()
        if self._pinged_at is not None:
            silent = idle >= now - self._pinged_at  # nothing at all since the ping
            self._pinged_at = None
            if self._answers == self._answers_at_ping and self._judge(silent):
                watched.expire()
                return
        if idle < self._ping_after:
            self._schedule(self._ping_after - idle)
            return
        if self._deaf:
            watched.nop()
            self._schedule(self._ping_after)
            return
        self._pinged_at = now
        self._pings += 1
        self._answers_at_ping = self._answers
        watched.ping()
        self._schedule(self._answer_within)

    def _judge(self, silent: bool) -> bool:
        """A ping went unanswered: whether that means the client is gone."""
        if silent and (self._pings == 1 or self._answers >= 2):
            return True
        if self._answers < 2 and self._pings >= 2:
            self._deaf = True
            self._watched.deaf()
        return False
