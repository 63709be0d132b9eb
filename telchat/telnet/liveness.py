"""Noticing dead peers: TCP keepalive on every socket, a telnet TIMING-MARK ping on silence.

A client that speaks telnet and has sent nothing for `ping_after` seconds gets `IAC DO
TIMING-MARK`; every telnet client answers that (WILL or WONT) without its user doing
anything, so a reader who never types stays connected. Only a peer that sends nothing at
all for `answer_within` more seconds is dropped. Raw TCP clients cannot answer a ping, so
for them TCP keepalive is the only check.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable

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


class Watchdog:
    """Pings a silent telnet peer and gives up on one that does not answer. One timer each."""

    __slots__ = ("_answer_within", "_expire", "_handle", "_idle", "_ping", "_ping_after", "_pinged_at")

    def __init__(
        self,
        idle: Callable[[], float],
        ping: Callable[[], object],
        expire: Callable[[], None],
        ping_after: float,
        answer_within: float,
    ) -> None:
        self._idle = idle
        self._ping = ping
        self._expire = expire
        self._ping_after = ping_after
        self._answer_within = answer_within
        self._pinged_at: float | None = None
        self._handle: asyncio.TimerHandle | None = None

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
        idle = self._idle()
        # The clock `idle` is measured with (telnetlib3: datetime.now()), not loop.time():
        # uvloop's is in milliseconds and read once per loop turn, so comparing the two can
        # take an answer that came 1 ms after the ping for no answer at all.
        now = time.time()
        if self._pinged_at is not None:
            if idle >= now - self._pinged_at:  # nothing at all since the ping
                self._handle = None
                self._expire()
                return
            self._pinged_at = None
        if idle < self._ping_after:
            self._schedule(self._ping_after - idle)
            return
        self._pinged_at = now
        self._ping()
        self._schedule(self._answer_within)
