"""One server's telemetry: its hot-path statistics, labelled counters and connection ids.

The App owns one and hands it to what counts, so two Apps in one process (the tests run
many) report only their own. Logging stays process-wide: it writes to the one stdout.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from telchat.obs.counters import Counters
from telchat.obs.limits import LIMITS_COUNTER, LimitKind
from telchat.obs.logs import get_logger
from telchat.obs.stats import Stats

log = get_logger(__name__)


@dataclass(slots=True, eq=False)
class Telemetry:
    stats: Stats = field(default_factory=Stats)
    counters: Counters = field(default_factory=Counters)
    _conn_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def next_conn_id(self) -> int:
        return next(self._conn_ids)

    def skip_conn_ids(self, last: int) -> None:
        """Go on from `last` (the previous image's, after a server upgrade): ids stay unique."""
        self._conn_ids = itertools.count(last + 1)

    @property
    def last_conn_id(self) -> int:
        """The last id given (peeked without using one up)."""
        last = next(self._conn_ids) - 1
        self._conn_ids = itertools.count(last + 1)
        return last

    def limit(self, kind: LimitKind, *, level: str = "warning", **fields: Any) -> None:
        """A limit fired: one structured `limit` event and one counter, always both."""
        self.counters.inc(LIMITS_COUNTER, kind=kind)
        getattr(log, level)("limit", kind=kind, **fields)
