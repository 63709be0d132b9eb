"""In-process event counters (limits hit, disconnect reasons) for the metrics endpoint.

Dependency-free on purpose: an exporter only needs to iterate. Each App owns its own
(telchat/obs/telemetry.py).
A counter is a name plus labels; its key is `(name, ((label, value), ...))` with the
labels sorted, which maps directly onto Prometheus' `name{label="value"}`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

Labels = tuple[tuple[str, str], ...]
Key = tuple[str, Labels]


class Counters(Mapping[Key, int]):
    """Monotonic counters; reading one that was never incremented gives 0."""

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: dict[Key, int] = {}

    @staticmethod
    def key(name: str, **labels: str) -> Key:
        return name, tuple(sorted(labels.items()))

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        key = self.key(name, **labels)
        self._values[key] = self._values.get(key, 0) + amount

    def value(self, name: str, **labels: str) -> int:
        return self._values.get(self.key(name, **labels), 0)

    def __getitem__(self, key: Key) -> int:
        return self._values[key]

    def __iter__(self) -> Iterator[Key]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)
