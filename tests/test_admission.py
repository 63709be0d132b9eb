"""Connection limits: per address (loopback exempt unless told), per server, and a rate."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telchat.app import App
from telchat.telnet.admission import Address, Admission, address_of
from tests.clients import RawClient
from tests.conftest import Connect, with_config
from tests.health import assert_healthy, settled
from tests.test_flood import FakeClock

PER_IP = "*** Too many connections from your address (limit 10). Please close one first.\r\n"


@pytest.mark.parametrize(
    ("host", "key", "loopback"),
    [
        ("203.0.113.7", "203.0.113.7", False),
        ("127.0.0.1", "127.0.0.1", True),
        ("127.8.9.10", "127.8.9.10", True),
        ("::1", "::/64", True),
        ("::ffff:203.0.113.7", "203.0.113.7", False),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64", False),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64", False),
        ("fe80::1%eth0", "fe80::/64", False),
        ("not an address", "not an address", False),
    ],
)
def test_addresses_group_as_an_operator_would_block_them(host: str, key: str, loopback: bool) -> None:
    assert address_of(host) == Address(key, loopback)


def make(clock: FakeClock | None = None, **changes: object) -> Admission:
    settings: dict[str, object] = {
        "max_connections": 100,
        "max_per_address": 3,
        "rate_per_address": 1.0,
        "burst_per_address": 5,
        "limit_loopback": False,
    }
    settings.update(changes)
    return Admission(**settings, clock=clock or FakeClock())  # type: ignore[arg-type]


def test_per_address_cap_and_release() -> None:
    admission = make()
    one, two = address_of("203.0.113.1"), address_of("203.0.113.2")
    assert [admission.admit(one) for _ in range(3)] == [None] * 3
    refusal = admission.admit(one)
    assert refusal is not None and refusal.kind == "conns_per_ip"
    assert admission.admit(two) is None
    admission.release(one)
    assert admission.admit(one) is None
    assert admission.total == 4


def test_rate_counts_admitted_connections_only() -> None:
    clock = FakeClock()
    admission = make(clock, max_per_address=0, burst_per_address=2)
    ip = address_of("203.0.113.1")
    assert admission.admit(ip) is None and admission.admit(ip) is None
    refusal = admission.admit(ip)
    assert refusal is not None and refusal.kind == "conn_rate" and "Try again in 1 s" in refusal.message
    assert admission.admit(ip) is not None  # hammering does not dig the hole deeper
    clock.now += 1.0
    assert admission.admit(ip) is None


def test_loopback_is_exempt_unless_limited() -> None:
    local = address_of("127.0.0.1")
    exempt = make(max_per_address=1, burst_per_address=1)
    assert all(exempt.admit(local) is None for _ in range(50))
    limited = make(max_per_address=1, burst_per_address=1, limit_loopback=True)
    assert limited.admit(local) is None and limited.admit(local) is not None


def test_server_cap_applies_to_everyone() -> None:
    admission = make(max_connections=2)
    assert admission.admit(address_of("127.0.0.1")) is None
    assert admission.admit(address_of("203.0.113.1")) is None
    refusal = admission.admit(address_of("127.0.0.1"))
    assert refusal is not None and refusal.kind == "max_connections"


def test_idle_rate_buckets_are_swept() -> None:
    clock = FakeClock()
    admission = make(clock, max_connections=10**6, max_per_address=0)
    for i in range(5000):
        ip = address_of(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
        assert admission.admit(ip) is None
        admission.release(ip)
        clock.now += 1.0  # each bucket is full again a few seconds on
    assert len(admission._buckets) < 2100
    assert admission.total == 0 and not admission._counts


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), max_size=200))
def test_counts_always_add_up(ops: list[tuple[bool, int]]) -> None:
    admission = make(max_connections=8, max_per_address=3, rate_per_address=0)
    held: list[Address] = []
    for connect, n in ops:
        ip = address_of(f"203.0.113.{n}")
        if connect:
            if admission.admit(ip) is None:
                held.append(ip)
        elif ip in held:
            held.remove(ip)
            admission.release(ip)
        admission.release(address_of("198.51.100.1"))  # never admitted: releasing it changes nothing
        assert admission.total == len(held) <= 8
        assert all(admission.count(a) == held.count(a) <= 3 for a in held)


async def test_fifty_connections_from_loopback_are_exempt(connect: Connect, app: App) -> None:
    clients = await asyncio.gather(*(RawClient.connect(app.port) for _ in range(50)))
    await clients[49].login("last")
    await assert_healthy(app, *clients)
    for client in clients:
        await client.close()
    await settled(app, 0)


async def read_all(port: int) -> tuple[bytes, RawClient]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = await asyncio.wait_for(reader.read(), 5)
    return data, RawClient(reader, writer)


@pytest.mark.parametrize("config", [with_config(limit_loopback=True, conn_burst_per_ip=100)])
async def test_fifty_connections_from_one_address(connect: Connect, app: App) -> None:
    before = app.telemetry.counters.value("limits", kind="conns_per_ip")
    admitted = [await connect() for _ in range(10)]
    refused = await asyncio.gather(*(read_all(app.port) for _ in range(40)))
    # One line saying why, then the close: not a single telnet negotiation byte before it.
    assert [data for data, _ in refused] == [PER_IP.encode()] * 40
    assert app.telemetry.counters.value("limits", kind="conns_per_ip") == before + 40
    for _, client in refused:
        await client.close()
    await admitted[0].close()
    await settled(app, 9)
    await (await connect()).close()  # its place is free again
    await assert_healthy(app, *admitted[1:])  # and the probe takes it once more


@pytest.mark.parametrize("config", [with_config(max_connections=3)])
async def test_a_full_server_says_so(connect: Connect, app: App) -> None:
    clients = [await connect() for _ in range(3)]
    data, client = await read_all(app.port)
    assert data == b"*** The server is full (3 connections). Please try again later.\r\n"
    await client.close()
    await clients[0].close()
    await settled(app, 2)
    await assert_healthy(app, *clients[1:])


@pytest.mark.parametrize(
    "config", [with_config(limit_loopback=True, max_conns_per_ip=0, conn_rate_per_ip=5, conn_burst_per_ip=3)]
)
async def test_new_connections_per_address_are_rate_limited(connect: Connect, app: App) -> None:
    clients = [await connect() for _ in range(3)]
    data, client = await read_all(app.port)
    assert data == b"*** Too many new connections from your address. Try again in 1 s.\r\n"
    await client.close()
    await asyncio.sleep(0.25)
    clients.append(await connect())
    await asyncio.sleep(0.25)
    await assert_healthy(app, *clients)
