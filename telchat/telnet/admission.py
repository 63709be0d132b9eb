"""Who may connect: a cap on all connections, and per address a cap and a rate of new ones.

Addresses are grouped as an operator would block them: an IPv4 address, an IPv4-mapped
IPv6 address as its IPv4 one, other IPv6 addresses by /64 (one host usually owns a whole
/64). Loopback is exempt from the per-address limits unless `limit_loopback` is set: tests,
benchmarks and local tools connect from there.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import lru_cache

from telchat.obs.limits import LimitKind
from telchat.rules.addresses import group_of, parse_address
from telchat.rules.flood import Clock, TokenBucket

# Rate buckets of idle addresses are dropped in sweeps; a sweep runs when the table has
# doubled since the last one, so each admission pays O(1) on average.
_MIN_SWEEP = 1024


@dataclass(frozen=True, slots=True)
class Refusal:
    kind: LimitKind
    #: The one line the refused client is sent before the connection closes.
    message: str


@dataclass(frozen=True, slots=True)
class Address:
    key: str
    loopback: bool


# Many connections share an address (NAT, a proxy, a TLS-terminating front, an upgrade
# adopting them all at once): the last few thousand are parsed once each.
@lru_cache(maxsize=4096)
def address_of(host: str) -> Address:
    ip = parse_address(host)
    if ip is None:
        return Address(host, False)
    return Address(group_of(ip), ip.is_loopback)


class Admission:
    def __init__(
        self,
        *,
        max_connections: int,
        max_per_address: int,
        rate_per_address: float,
        burst_per_address: int,
        limit_loopback: bool = False,
        clock: Clock = time.monotonic,
    ) -> None:
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.rate_per_address = rate_per_address
        self.burst_per_address = burst_per_address
        self.limit_loopback = limit_loopback
        self._clock = clock
        self.total = 0
        self._counts: dict[str, int] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._sweep_at = _MIN_SWEEP

    def count(self, address: Address) -> int:
        return self._counts.get(address.key, 0)

    def admit(self, address: Address, carried: bool = False) -> Refusal | None:
        """Count the connection in, or say why not (and count nothing). A connection
        `carried` over a server upgrade was admitted before: it is only counted."""
        if carried:
            self._count_in(address)
            return None
        if self.total >= self.max_connections:
            return Refusal(
                "max_connections",
                f"*** The server is full ({self.max_connections} connections). Please try again later.",
            )
        limited = self.limit_loopback or not address.loopback
        if limited and self.max_per_address and self.count(address) >= self.max_per_address:
            return Refusal(
                "conns_per_ip",
                f"*** Too many connections from your address (limit {self.max_per_address}). Please close one first.",
            )
        if limited and self.rate_per_address:
            bucket = self._bucket(address.key)
            wait = bucket.wait_time()
            if wait > 0:
                return Refusal(
                    "conn_rate",
                    f"*** Too many new connections from your address. Try again in {math.ceil(wait)} s.",
                )
            bucket.take()
        self._count_in(address)
        return None

    def _count_in(self, address: Address) -> None:
        self.total += 1
        self._counts[address.key] = self.count(address) + 1

    def release(self, address: Address) -> None:
        left = self.count(address) - 1
        if left < 0:
            return
        self.total -= 1
        if left:
            self._counts[address.key] = left
        else:
            del self._counts[address.key]

    def _bucket(self, key: str) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._sweep_at:
                self._sweep()
            bucket = self._buckets[key] = TokenBucket(self.burst_per_address, self.rate_per_address, self._clock)
        return bucket

    def _sweep(self) -> None:
        self._buckets = {key: bucket for key, bucket in self._buckets.items() if not bucket.full}
        self._sweep_at = max(_MIN_SWEEP, 2 * len(self._buckets))
