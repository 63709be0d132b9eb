"""/metrics and /healthz of real servers: counters move exactly, health follows the store."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace

import pytest

from telchat.app import App
from tests.clients import RawClient
from tests.conftest import TEST_CONFIG, Connect, running, user
from tests.health import session_of, settled
from tests.procs import ServerProcess
from tests.redis_server import RedisServer

METRICS = replace(TEST_CONFIG, metrics_port=0, metrics_host="127.0.0.1")
SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (\S+)$")


async def http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    reply = (await asyncio.wait_for(reader.read(), 5)).decode()
    writer.close()
    head, _, body = reply.partition("\r\n\r\n")
    return int(head.split()[1]), body


async def scrape(port: int) -> dict[str, float]:
    status, body = await http_get(port, "/metrics")
    assert status == 200
    samples = {}
    for line in body.splitlines():
        match = SAMPLE.match(line)
        if match:
            samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


def delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


@pytest.mark.parametrize("config", [METRICS])
async def test_one_message_to_three_members_counts_exactly(connect: Connect, app: App) -> None:
    assert app.metrics_port is not None
    members = [await user(connect, nick, "room") for nick in ("a", "b", "c")]
    for member in members:
        await member.drain()
    before = await scrape(app.metrics_port)
    await members[0].send("hello")
    for member in members:
        assert await member.read_line() == "#room:a> hello"
    await members[0].send("/msg b psst")
    await members[1].read_until("*a*> psst")
    after = await scrape(app.metrics_port)
    assert delta(before, after, "telchat_messages_total") == 1
    assert delta(before, after, "telchat_deliveries_total") == 4  # 3 room lines + 1 private
    assert delta(before, after, "telchat_private_messages_total") == 1
    assert delta(before, after, "telchat_bytes_in_total") > 0
    assert delta(before, after, "telchat_bytes_out_total") > 0
    assert after["telchat_sessions_logged_in"] == 3
    assert after["telchat_rooms"] == 1
    # The test's clients refuse every option: telnet-speaking, in line mode.
    assert after['telchat_connections{client_class="telnet",transport="telnet"}'] == 3
    assert delta(before, after, "telchat_fanout_seconds_count") == 1


@pytest.mark.parametrize("config", [METRICS])
async def test_limits_and_disconnects_are_labelled_by_kind_and_reason(connect: Connect, app: App) -> None:
    assert app.metrics_port is not None
    before = await scrape(app.metrics_port)
    bob = await user(connect, "bob", "room")
    await bob.send("x" * 2000)
    await bob.read_until("*** Line too long")
    await bob.send("quit")
    await bob.wait_closed()
    await asyncio.sleep(0.1)
    after = await scrape(app.metrics_port)
    assert delta(before, after, 'telchat_limit_hits_total{kind="line_length"}') == 1
    assert delta(before, after, 'telchat_disconnects_total{reason="quit"}') == 1
    for name in after:
        assert "bob" not in name and "127.0.0.1" not in name and "room" not in name.replace("rooms", "")


@pytest.mark.parametrize("config", [METRICS])
async def test_healthz_and_unknown_paths(app: App) -> None:
    assert app.metrics_port is not None
    assert await http_get(app.metrics_port, "/healthz") == (200, "ok\n")
    assert (await http_get(app.metrics_port, "/nope"))[0] == 404


async def test_healthz_fails_while_the_store_is_gone(redis: RedisServer) -> None:
    config = replace(METRICS, store=redis.url)
    async with running(config) as app:
        assert app.metrics_port is not None
        assert (await http_get(app.metrics_port, "/healthz"))[0] == 200
        redis.stop()
        status, body = await http_get(app.metrics_port, "/healthz")
        assert status == 503
        assert body.startswith("store not answering")
        redis.start()
        for _ in range(50):
            if (await http_get(app.metrics_port, "/healthz"))[0] == 200:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("/healthz did not recover with the store")


async def test_no_log_messages_keeps_chat_text_out_of_logs() -> None:
    server = ServerProcess("--no-log-messages", "--store=memory://", "--flood-rate=0")
    try:
        bob = await RawClient.connect(server.port)
        ann = await RawClient.connect(server.port)
        await bob.login("bob")
        await ann.login("ann")
        await bob.join("r", "bob")
        await bob.send("a very private remark")
        await bob.read_until("#r:bob> a very private remark")
        await bob.send("/msg ann whispered secret")
        await ann.read_until("*bob*> whispered")
        message = server.wait_event("message")
        private = server.wait_event("private_message")
        assert "text" not in message and "text" not in private
        assert message["room"] == "r" and private["to"] == "ann"
        await bob.close()
        await ann.close()
        assert server.stop() == 0
        assert not any("private remark" in str(e) or "whispered" in str(e) for e in server.events)
    finally:
        server.kill()


async def test_two_servers_in_one_process_count_only_their_own(app: App, connect: Connect) -> None:
    async with running(TEST_CONFIG) as other:
        bob = await user(connect, "bob", "room")
        await bob.send("hello")
        await bob.read_until("#room:bob> hello")
        await bob.send("x" * (app.config.max_line_bytes + 1))
        await bob.read_until("*** Line too long")
        assert app.telemetry.stats.messages == 1
        assert app.telemetry.counters.value("limits", kind="line_length") == 1
        assert other.telemetry.stats.messages == 0
        assert other.telemetry.counters.value("limits", kind="line_length") == 0


async def test_a_session_that_ends_twice_is_counted_once(app: App, connect: Connect) -> None:
    bob = await user(connect, "bob", "room")
    session = await session_of(app, "bob")
    session.finish("eof")  # as a cut would, before the connection's own end calls it again
    await bob.close()
    await settled(app, 0)
    counted = sum(v for (name, _), v in app.telemetry.counters.items() if name == "disconnects")
    assert counted == 1
    assert app.telemetry.stats.bytes_in_closed == session.bytes_in
