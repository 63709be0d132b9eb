"""JSON logs of a real server process: every line parses and carries the documented fields."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import pytest

from tests.clients import logged_session
from tests.procs import ServerProcess

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")

REQUIRED = {
    "connect": {"conn_id", "peer"},
    "negotiated": {"conn_id", "peer", "client_class", "term", "charset", "cols", "rows"},
    "nick": {"conn_id", "peer", "nick", "old", "new"},
    "join": {"conn_id", "peer", "nick", "room"},
    "message": {"conn_id", "peer", "nick", "room", "text"},
    "private_message": {"conn_id", "peer", "nick", "to"},
    "leave": {"conn_id", "nick", "room"},
    "limit": {"conn_id", "peer", "kind"},
    "disconnect": {"conn_id", "peer", "nick", "reason", "duration", "bytes_in", "bytes_out"},
    "shutdown": {"sessions", "duration"},
}


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    proc = ServerProcess()
    yield proc
    proc.kill()


async def test_every_event_is_json_with_fields(server: ServerProcess) -> None:
    bob = await logged_session(server.port, "one")
    await asyncio.sleep(0.2)
    assert server.stop() == 0
    await bob.close()

    events = {e["event"]: e for e in server.events}
    assert not REQUIRED.keys() - events.keys(), f"missing {REQUIRED.keys() - events.keys()}"
    for record in server.events:  # every record of an event, not one of them
        missing = REQUIRED.get(record["event"], set()) - record.keys()
        assert not missing, f"{record['event']} lacks {missing}: {record}"
    for record in server.events:
        assert ISO_UTC.match(record["timestamp"]), record
        assert record["level"] in {"debug", "info", "warning", "error"}
    assert events["message"]["text"] == "hello"
    assert events["message"]["room"] == "one"
    assert events["nick"]["new"] in {"bob", "ann"}


async def test_telnetlib3_logs_go_through_json(server: ServerProcess) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"\x16\x03\x01\x00\x05hello")  # a TLS ClientHello at a plain listener
    await writer.drain()
    await reader.read()
    writer.close()
    record = server.wait_for(lambda r: r["event"].startswith("TLS ClientHello"), "TLS warning")
    assert record["level"] == "warning"
    assert record["logger"].startswith("telnetlib3")
    assert ISO_UTC.match(record["timestamp"])
