"""Hot-path statistics: plain integers and fixed-bucket histograms, no locks, no labels.

The chat path adds to these with one attribute increment; telchat/obs/metrics.py turns them
into Prometheus metrics only when someone scrapes. (Labelled event counts, such as limits
by kind and disconnects by reason, live in telchat/obs/counters.py.)
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

# Seconds: fan-out and commits are micro- to milliseconds; the tail matters.
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


@dataclass(slots=True)
class Histogram:
    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations at or below it) pairs, ending with +Inf."""
        out = []
        running = 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


@dataclass(slots=True)
class Stats:
    messages: int = 0
    private_messages: int = 0
    deliveries: int = 0
    # Bytes of connections that have ended; live ones are summed at scrape time.
    bytes_in_closed: int = 0
    bytes_out_closed: int = 0
    store_errors: int = 0
    fanout_seconds: Histogram = field(default_factory=Histogram)
    store_commit_seconds: Histogram = field(default_factory=Histogram)
