"""The web door's own behaviour against an in-process server: the page, TLS, a web user and
a telnet user in one room, shutdown, and a WebSocket reader too slow for its send queue."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import aiohttp
import pytest

from telchat.app import App
from tests.clients import LineClient
from tests.conftest import Connect, room_with, running, user, with_config
from tests.health import assert_healthy, settled
from tests.test_tls import certificate  # noqa: F401 (a fixture)
from tests.webclient import WebClient

WEB = with_config(web_port=0)


@pytest.mark.parametrize("config", [WEB])
async def test_the_page_and_its_scripts_are_served(app: App) -> None:
    base = f"http://127.0.0.1:{app.web_port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/") as page:
            assert page.status == 200
            assert "default-src 'self'" in page.headers["Content-Security-Policy"]
            html = await page.text()
        for script in ("/static/vendor/xterm.js", "/static/vendor/addon-fit.js", "/static/telchat.js"):
            assert script in html
            async with http.get(base + script) as response:
                assert response.status == 200
                assert len(await response.read()) > 1000
        for path in ("/static/../door.py", "/static/%2e%2e/door.py", "/metrics", "/healthz"):
            async with http.get(base + path) as response:
                assert response.status in (403, 404), path


@pytest.mark.parametrize("config", [WEB])
async def test_a_web_user_and_a_telnet_user_share_a_room(app: App, connect: Connect) -> None:
    assert app.web_port is not None
    ann = await user(connect, "ann", "room")
    web = await WebClient.connect(app.web_port)
    await web.login("webby")
    await web.join("room", "webby")
    await ann.read_until("*** User webby joined room #room")
    await web.send("привет")
    assert await ann.read_line_bytes() == "#room:webby> привет\r\n".encode()
    await ann.send("hello, browser")
    await web.read_until("#room:ann> hello, browser")
    assert sorted(app.session_classes()) == [("telnet", "telnet"), ("telnet", "web")]
    await web.close()
    await settled(app, 1)


async def test_the_web_door_over_tls(certificate: tuple[Path, Path]) -> None:  # noqa: F811
    cert, key = certificate
    async with running(with_config(web_port=0, web_tls_cert=str(cert), web_tls_key=str(key))) as app:
        assert app.web_port is not None
        tls = ssl.create_default_context(cafile=str(cert))
        web = await WebClient.connect(app.web_port, tls=tls)
        await web.login("secure")
        await web.close()
        with pytest.raises(aiohttp.ClientError):  # no plain HTTP on the TLS port
            await WebClient.connect(app.web_port)


async def test_shutdown_says_goodbye_to_web_users() -> None:
    async with running(WEB) as app:
        assert app.web_port is not None
        web = await WebClient.connect(app.web_port)
        await web.login("leaver")
        await app.stop()
        assert await web.read_line() == "*** have a nice day ***"
        await web.wait_closed()
        assert app.telemetry.counters.value("disconnects", reason="shutdown") == 1
        await web.close()


@pytest.mark.parametrize("config", [with_config(web_port=0, sendq_bytes=65536)])
async def test_a_websocket_that_does_not_read_is_cut_off(app: App, connect: Connect) -> None:
    assert app.web_port is not None
    bob, talker = await room_with(connect, "bob", "talker")
    sloth = await asyncio.to_thread(_unread_websocket, app.web_port)  # the server runs in this loop
    sloth.sendall(_masked(b"login sloth\r\njoin room\r\n"))
    await bob.read_until("*** User sloth joined room #room")
    payload = "p" * 900
    got: dict[LineClient, list[str]] = {bob: [], talker: []}
    # 2.7 MB at the pace the two readers read (they stay within the sendq and the capped
    # kernel send buffer), while the WebSocket, reading nothing, falls behind.
    for start in range(0, 3000, 50):
        for i in range(start, start + 50):
            await talker.send(f"{i} {payload}")
        for client, lines in got.items():
            lines += [line for line in await client.read_until(f"#room:talker> {start + 49} ") if line.startswith("#")]
    for lines in got.values():
        assert lines == [f"#room:talker> {i} {payload}" for i in range(3000)]
    await settled(app, 2)
    assert app.telemetry.counters.value("disconnects", reason="sendq") == 1
    sloth.close()
    await assert_healthy(app, bob, talker)


def _unread_websocket(port: int) -> socket.socket:
    """A WebSocket opened by hand on a socket with a tiny receive buffer, then never read."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        b"GET /telnet HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(1)
    assert answer.startswith(b"HTTP/1.1 101")
    return sock


def _masked(payload: bytes) -> bytes:
    """One client-to-server binary frame (clients must mask; a zero mask keeps the bytes)."""
    assert len(payload) < 126
    return bytes([0x82, 0x80 | len(payload)]) + b"\0\0\0\0" + payload
