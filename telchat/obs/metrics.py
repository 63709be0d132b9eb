"""`--metrics-port`: Prometheus `/metrics` and `/healthz` over a tiny asyncio HTTP server.

Nothing here runs per message: the chat path only bumps plain integers (telchat/obs/stats.py,
telchat/obs/counters.py), and this module reads them, and the server's state, when scraped.
No label names a nick, an address or a room.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from telchat.obs.counters import Counters
from telchat.obs.logs import get_logger
from telchat.obs.stats import Histogram
from telchat.obs.telemetry import Telemetry

log = get_logger(__name__)

REQUEST_TIMEOUT = 2.0
MAX_REQUEST = 8192
# Scrapers and health checks open one connection at a time; past this many at once the
# listener closes new ones at accept, so it cannot be made to hold the process's descriptors.
MAX_CONNECTIONS = 32


class Scraped(Protocol):
    """What the endpoint reads of the server it reports on (the App), at scrape time."""

    telemetry: Telemetry

    def session_classes(self) -> Sequence[tuple[str, str]]:
        """Each open session's client class and the door it came in by (telnet, tls, web, ssh)."""

    def live_bytes(self) -> tuple[int, int]:
        """Bytes in and out of the connections still open."""

    def logged_in(self) -> int: ...

    def room_count(self) -> int: ...

    async def problem(self) -> str | None:
        """Why the node is unhealthy, or None."""


class ChatCollector:
    """Reads the server at scrape time; registered with its own CollectorRegistry."""

    def __init__(self, app: Scraped) -> None:
        self._app = app

    def describe(self) -> list[Metric]:
        # Declared empty so that registering does not collect (the app may not run yet).
        return []

    def collect(self) -> Iterator[Metric]:
        stats = self._app.telemetry.stats
        yield from self._gauges()
        yield from self._counters()
        yield _histogram(
            "telchat_fanout_seconds", "Time to fan one room message out to its members", stats.fanout_seconds
        )
        yield _histogram(
            "telchat_store_commit_seconds", "Time of one store commit (a batch)", stats.store_commit_seconds
        )

    def _gauges(self) -> Iterator[Metric]:
        app = self._app
        connections = GaugeMetricFamily("telchat_connections", "Open sessions", labels=["client_class", "transport"])
        for (client_class, door), count in sorted(Counter(app.session_classes()).items()):
            connections.add_metric([client_class, door], count)
        yield connections
        yield GaugeMetricFamily("telchat_sessions_logged_in", "Sessions with a nick", value=app.logged_in())
        yield GaugeMetricFamily("telchat_rooms", "Rooms with members on this node", value=app.room_count())

    def _counters(self) -> Iterator[Metric]:
        live_in, live_out = self._app.live_bytes()
        stats, counters = self._app.telemetry.stats, self._app.telemetry.counters
        for name, doc, value in (
            ("telchat_messages", "Room messages said on this node", stats.messages),
            ("telchat_private_messages", "Private messages sent from this node", stats.private_messages),
            ("telchat_deliveries", "Message lines delivered to users of this node", stats.deliveries),
            ("telchat_bytes_in", "Bytes received from clients", stats.bytes_in_closed + live_in),
            ("telchat_bytes_out", "Bytes sent to clients", stats.bytes_out_closed + live_out),
            ("telchat_store_errors", "Failed store operations", stats.store_errors),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        yield _labelled(counters, "telchat_disconnects", "Connections ended, by reason", "disconnects", "reason")
        yield _labelled(counters, "telchat_limit_hits", "Limits that fired, by kind", "limits", "kind")
        yield _labelled(counters, "telchat_upgrades", "Upgrades in place (SIGUSR2), by result", "upgrades", "result")


def _labelled(counters: Counters, name: str, doc: str, counter: str, label: str) -> Metric:
    family = CounterMetricFamily(name, doc, labels=[label])
    for (key, labels), value in sorted(counters.items()):
        if key == counter:
            family.add_metric([dict(labels).get(label, "")], value)
    return family


def _histogram(name: str, doc: str, histogram: Histogram) -> Metric:
    return HistogramMetricFamily(name, doc, buckets=histogram.cumulative(), sum_value=histogram.total)


class MetricsServer:
    def __init__(self, app: Scraped) -> None:
        self._app = app
        self._registry = CollectorRegistry(auto_describe=True)
        self._registry.register(ChatCollector(app))
        # Open file descriptors, memory, CPU and start time of this process.
        ProcessCollector(registry=self._registry)
        self._server: asyncio.Server | None = None
        self._open = 0

    async def start(self, host: str, port: int, backlog: int = 100) -> int:
        self._server = await asyncio.start_server(self._handle, host, port, backlog=backlog)
        bound = int(self._server.sockets[0].getsockname()[1])
        log.info("metrics_listening", host=host, port=bound)
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= MAX_CONNECTIONS:
            peer = writer.get_extra_info("peername")
            self._app.telemetry.limit(
                "metrics_connections", peer=f"{peer[0]}:{peer[1]}" if peer else "-", listener="metrics"
            )
            writer.transport.abort()
            return
        self._open += 1
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            status, body, kind = await self._respond(head[:MAX_REQUEST])
            writer.write(
                f"HTTP/1.0 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            self._open -= 1
            writer.close()

    async def _respond(self, head: bytes) -> tuple[str, bytes, str]:
        method, _, rest = head.partition(b" ")
        path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
        if method != b"GET":
            return "405 Method Not Allowed", b"GET only\n", "text/plain"
        if path == b"/metrics":
            return "200 OK", generate_latest(self._registry), "text/plain; version=0.0.4; charset=utf-8"
        if path == b"/healthz":
            problem = await self._app.problem()
            if problem is None:
                return "200 OK", b"ok\n", "text/plain"
            return "503 Service Unavailable", problem.encode() + b"\n", "text/plain"
        return "404 Not Found", b"try /metrics or /healthz\n", "text/plain"
