"""The web door refuses what a hostile page or client sends, and telnet users never notice:
oversize messages, foreign origins, connection floods (one address, directly or through a
trusted proxy), forged X-Forwarded-For."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from telchat.app import App
from tests.conftest import Connect, room_with, with_config
from tests.health import assert_healthy, settled
from tests.webclient import WebClient

WEB = with_config(web_port=0, web_max_frame_bytes=4096)
PER_IP = "*** Too many connections from your address (limit 10). Please close one first."


async def wait_count(app: App, name: str, want: int, **labels: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while app.telemetry.counters.value(name, **labels) != want:
        assert loop.time() < deadline, f"{name} {labels}: {app.telemetry.counters.value(name, **labels)} != {want}"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("config", [WEB])
async def test_an_oversize_message_closes_only_its_websocket(app: App, connect: Connect) -> None:
    ann, bob = await room_with(connect, "ann", "bob")
    assert app.web_port is not None
    web = await WebClient.connect(app.web_port)
    await web.login("webby")
    await web.send_bytes(b"x" * 4097)
    assert await web.ws.receive() is not None
    await web.wait_closed()
    assert web.ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    await wait_count(app, "limits", 1, kind="web_frame")
    await wait_count(app, "disconnects", 1, reason="web_frame")
    await web.close()
    # A message at the limit is fine.
    ok = await WebClient.connect(app.web_port)
    await ok.send_bytes(b"x" * 4094 + b"\r\n")
    await ok.read_until("*** ")
    await ok.close()
    await assert_healthy(app, ann, bob)


@pytest.mark.parametrize("config", [with_config(web_port=0, web_origins="https://chat.example.org")])
async def test_only_this_servers_pages_may_open_the_websocket(app: App, connect: Connect) -> None:
    ann = await connect()
    assert app.web_port is not None
    for origin in ("http://evil.example", "http://127.0.0.1.evil.example", "null"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await WebClient.connect(app.web_port, headers={"Origin": origin})
        assert refused.value.status == 403
    assert app.telemetry.counters.value("limits", kind="web_origin") == 3
    for origin in (f"http://127.0.0.1:{app.web_port}", "https://chat.example.org"):
        await (await WebClient.connect(app.web_port, headers={"Origin": origin})).close()
    await assert_healthy(app, ann)


@pytest.mark.parametrize("config", [with_config(web_port=0, limit_loopback=True, conn_burst_per_ip=500)])
async def test_two_hundred_websockets_from_one_address_are_limited_like_telnet(app: App, connect: Connect) -> None:
    ann, bob = await room_with(connect, "ann", "bob")
    assert app.web_port is not None
    results = await _first_lines(app.web_port, 200)
    # Telnet and web share one count per address: ann and bob hold two of its ten places.
    assert set(results) == {"*** Welcome to telchat. Type help for commands.", PER_IP}
    assert results.count(PER_IP) == 192
    assert app.telemetry.counters.value("limits", kind="conns_per_ip") == 192
    await ann.send("still here")
    await bob.read_until("#room:ann> still here")
    await settled(app, 2)
    await assert_healthy(app, ann, bob)


@pytest.mark.parametrize(
    "config", [with_config(web_port=0, web_trusted_proxies="127.0.0.0/8, 10.0.0.0/8", conn_burst_per_ip=500)]
)
async def test_addresses_forwarded_by_a_trusted_proxy_are_each_limited(app: App, connect: Connect) -> None:
    ann = await connect()
    assert app.web_port is not None
    # Behind the proxy, each browser is its own address: loopback exemption does not apply.
    via = {"X-Forwarded-For": "198.51.100.9, 203.0.113.7, 10.1.2.3"}
    results = await _first_lines(app.web_port, 30, via)
    assert results.count(PER_IP) == 20
    other = await WebClient.connect(app.web_port, headers={"X-Forwarded-For": "203.0.113.8"})
    await other.login("other")
    assert "203.0.113.8:0" in {session.user.peer for session in app.sessions}
    await other.close()
    await assert_healthy(app, ann)


@pytest.mark.parametrize("config", [with_config(web_port=0, limit_loopback=True, conn_burst_per_ip=500)])
async def test_x_forwarded_for_from_anyone_else_is_ignored(app: App) -> None:
    assert app.web_port is not None
    forged = await WebClient.connect(app.web_port, headers={"X-Forwarded-For": "203.0.113.7"})
    await forged.login("forged")
    assert [session.user.peer.split(":")[0] for session in app.sessions] == ["127.0.0.1"]
    await forged.close()


async def _first_lines(port: int, count: int, headers: dict[str, str] | None = None) -> list[str]:
    """The first line each of `count` WebSockets opened at once gets: the greeting, or the
    refusal. None closes before all have theirs, so the admitted ones hold their places."""
    clients = await asyncio.gather(*(WebClient.connect(port, greet=False, headers=headers) for _ in range(count)))
    try:
        return list(await asyncio.gather(*(client.read_line() for client in clients)))
    finally:
        await asyncio.gather(*(client.close() for client in clients))
