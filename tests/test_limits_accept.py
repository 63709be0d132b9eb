"""Connections counted and capped at accept, on every listener (issue 13 finding 2, issue 15).

A TLS client that never finishes its handshake, or an HTTP client that never sends a
request, holds a descriptor from accept on: the limits must count it from then too.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from telchat.app import listen_backlog
from telchat.config import Config
from telchat.obs.metrics import MAX_CONNECTIONS
from tests.clients import RawClient
from tests.conftest import running, with_config
from tests.test_tls import certificate, tls_connect

__all__ = ["certificate"]

SOMAXCONN = int(Path("/proc/sys/net/core/somaxconn").read_text())
Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@asynccontextmanager
async def idle_connections(port: int, count: int) -> AsyncIterator[list[Stream]]:
    """`count` TCP connections that send nothing (no TLS handshake, no HTTP request)."""
    opened = [await asyncio.open_connection("127.0.0.1", port) for _ in range(count)]
    try:
        yield opened
    finally:
        for _, writer in opened:
            writer.close()


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 5.0) == b""
    except ConnectionResetError:
        return True


def tls_config(certificate: tuple[Path, Path], **changes: object) -> Config:
    cert, key = certificate
    return with_config(tls_port=0, tls_cert=str(cert), tls_key=str(key), **changes)


async def test_unfinished_tls_handshakes_count_toward_the_address_limit(certificate: tuple[Path, Path]) -> None:
    config = tls_config(certificate, max_conns_per_ip=3, limit_loopback=True)
    async with running(config) as app:
        assert app.tls_port is not None
        refused = app.telemetry.counters.value("limits", kind="conns_per_ip")
        async with idle_connections(app.tls_port, 3):
            plain = await RawClient.connect(app.port, greet=False)
            line = await plain.read_line()
            await plain.close()
            assert line.startswith("*** Too many connections from your address (limit 3)")
            async with idle_connections(app.tls_port, 1) as [(reader, _)]:
                assert await closed_by_server(reader)  # refused at accept, no handshake
        assert app.telemetry.counters.value("limits", kind="conns_per_ip") == refused + 2


async def test_unfinished_tls_handshakes_count_toward_max_connections(certificate: tuple[Path, Path]) -> None:
    async with running(tls_config(certificate, max_connections=2)) as app:
        assert app.tls_port is not None
        async with idle_connections(app.tls_port, 2):
            plain = await RawClient.connect(app.port, greet=False)
            line = await plain.read_line()
            await plain.close()
        assert line.startswith("*** The server is full (2 connections)")


async def test_a_stalled_handshake_is_cut_and_its_slot_freed(certificate: tuple[Path, Path]) -> None:
    config = tls_config(certificate, max_conns_per_ip=1, limit_loopback=True, tls_handshake_timeout=0.3)
    async with running(config) as app:
        assert app.tls_port is not None
        stalled = app.telemetry.counters.value("limits", kind="tls_handshake")
        async with idle_connections(app.tls_port, 1) as [(reader, _)]:
            assert await closed_by_server(reader)
        assert app.telemetry.counters.value("limits", kind="tls_handshake") == stalled + 1
        secure = await tls_connect(app.tls_port, certificate[0])  # the slot is free again
        await secure.login("secure")
        await secure.close()


async def test_the_metrics_listener_caps_its_connections() -> None:
    async with running(with_config(metrics_port=0, metrics_host="127.0.0.1")) as app:
        assert app.metrics_port is not None
        refused = app.telemetry.counters.value("limits", kind="metrics_connections")
        async with idle_connections(app.metrics_port, MAX_CONNECTIONS) as held:
            await asyncio.sleep(0.2)  # every one accepted
            async with idle_connections(app.metrics_port, 1) as [(reader, _)]:
                assert await closed_by_server(reader)
            assert not any(r.at_eof() for r, _ in held)
        assert app.telemetry.counters.value("limits", kind="metrics_connections") == refused + 1


def _listen_queue(port: int) -> int:
    """The backlog the kernel applies to a listening socket (ss shows it as Send-Q)."""
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], check=True, capture_output=True, text=True).stdout
    return int(out.split()[2])


@pytest.mark.parametrize("backlog", [None, 64])
async def test_every_listener_gets_the_backlog(certificate: tuple[Path, Path], backlog: int | None) -> None:
    config = tls_config(certificate, metrics_port=0, metrics_host="127.0.0.1", backlog=backlog)
    async with running(config) as app:
        expected = backlog or SOMAXCONN
        assert app.tls_port is not None and app.metrics_port is not None
        assert [_listen_queue(p) for p in (app.port, app.tls_port, app.metrics_port)] == [expected] * 3
    assert listen_backlog(None) == SOMAXCONN
