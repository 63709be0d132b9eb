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
import socket
import time
from typing import Protocol

KEEPALIVE_IDLE = 60
KEEPALIVE_INTERVAL = 15
KEEPALIVE_COUNT = 4


def enable_keepalive(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
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


class Watchdog:
    """Pings a silent telnet peer and gives up on one that does not answer. One timer each."""

    __slots__ = (
        "_answer_within",
        "_answers",
        "_answers_at_ping",
        "_deaf",
        "_handle",
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
        self._handle: asyncio.TimerHandle | None = None
        self._pings = 0
        # TIMING-MARK answers (WILL or WONT), counted by `answered`.
        self._answers = 0
        self._answers_at_ping = 0
        # The client ignores repeated pings: it gets NOPs, and TCP decides (`Watched.deaf`).
        self._deaf = False

    def answered(self) -> None:
        """The client answered a TIMING-MARK."""
        self._answers += 1

    def start(self) -> None:
        if self._ping_after > 0:
            self._schedule(self._ping_after)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, delay: float) -> None:
        self._handle = asyncio.get_running_loop().call_later(max(delay, 0.01), self._tick)

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
                self._handle = None
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
