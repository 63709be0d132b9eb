"""Flood control as fakelag: a sender's excess lines are delayed, never dropped.

A token bucket holds `burst` lines and refills at `rate` per second. Taking a token from an
empty bucket is allowed and runs it into debt; the debt, divided by the rate, is how long
that line waits. A slowdown lasts until the bucket is full again, so a sender is told once
per slowdown however many lines it delays.

A paste is one message, not a flood: a line that arrives within `PASTE_GAP` seconds of the
one before it is part of the same paste, and a paste's first `PASTE_LINES` lines cost one
token together; its lines past that cost one each. Each line is still relayed as its own
message.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]

PASTE_GAP = 0.05
PASTE_LINES = 10

# A wait this short is float rounding in the refill, not a sender ahead of its rate.
_NEGLIGIBLE = 1e-9


class PasteMeter:
    """The flood cost of each arriving line, pastes counted as one message."""

    __slots__ = ("_clock", "_last", "_run")

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._last = -PASTE_GAP
        self._run = 0

    def cost(self) -> float:
        now = self._clock()
        pasted, self._last = now - self._last < PASTE_GAP, now
        self._run = self._run + 1 if pasted else 1
        return 0.0 if pasted and self._run <= PASTE_LINES else 1.0


class TokenBucket:
    __slots__ = ("_burst", "_clock", "_level", "_rate", "_stamp")

    def __init__(self, burst: float, rate: float, clock: Clock = time.monotonic) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("burst and rate must be positive")
        self._burst = burst
        self._rate = rate
        self._clock = clock
        self._level = burst
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self._burst, self._level + (now - self._stamp) * self._rate)
        self._stamp = now

    def take(self, cost: float = 1.0) -> float:
        """Take `cost` tokens, into debt if need be; return the seconds the taker must wait."""
        self._refill()
        self._level -= cost
        return self._wait(-self._level)

    def wait_time(self, cost: float = 1.0) -> float:
        """Seconds until `cost` tokens are there, without taking any."""
        self._refill()
        return self._wait(cost - self._level)

    def _wait(self, shortfall: float) -> float:
        seconds = shortfall / self._rate
        return seconds if seconds > _NEGLIGIBLE else 0.0

    @property
    def full(self) -> bool:
        self._refill()
        return self._level >= self._burst

    @property
    def level(self) -> float:
        """The tokens there now (negative: in debt)."""
        self._refill()
        return self._level

    def restore(self, level: float) -> None:
        """Start from `level` tokens now (an upgraded server takes up its old bucket)."""
        self._level = min(self._burst, level)
        self._stamp = self._clock()


class Fakelag:
    """The pace of one connection's lines (or, for the telnet guard, of its command bytes)."""

    __slots__ = ("_bucket", "slowed")

    def __init__(self, burst: int, rate: float, clock: Clock = time.monotonic) -> None:
        self._bucket = TokenBucket(burst, rate, clock)
        self.slowed = False

    def ready(self, cost: float = 1.0) -> bool:
        """Whether a line of this cost taken now would not wait."""
        return self._bucket.wait_time(cost) <= 0

    def snapshot(self) -> dict[str, float | bool]:
        return {"level": self._bucket.level, "slowed": self.slowed}

    def restore(self, state: dict[str, float | bool]) -> None:
        self._bucket.restore(float(state["level"]))
        self.slowed = bool(state["slowed"])

    def take(self, cost: float = 1.0) -> tuple[float, bool]:
        """This line's delay in seconds, and whether it begins a slowdown."""
        if self.slowed and self._bucket.full:
            self.slowed = False
        delay = self._bucket.take(cost)
        begins = delay > 0 and not self.slowed
        self.slowed = self.slowed or delay > 0
        return delay, begins
