"""JSON logs of a real server process: every line parses and carries the documented fields."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import pytest

from tests.clients import MudClient, logged_session
from tests.procs import ServerProcess
from tests.webclient import WebClient

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")

# Every event about one connection names it: its id, address and door.
CONNECTION = {"conn_id", "peer", "transport"}
REQUIRED = {
    "connect": CONNECTION,
    "negotiated": CONNECTION | {"client_class", "term", "charset", "cols", "rows"},
    "nick": CONNECTION | {"nick", "old", "new"},
    "join": CONNECTION | {"nick", "room"},
    "message": CONNECTION | {"nick", "room", "text"},
    "private_message": CONNECTION | {"nick", "to"},
    "leave": CONNECTION | {"nick", "room"},
    "limit": CONNECTION | {"kind"},
    "disconnect": CONNECTION | {"nick", "reason", "duration", "bytes_in", "bytes_out"},
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


async def test_a_web_users_events_name_the_web_door() -> None:
    # A line said is handled as it arrives, outside the session task's log context: the
    # event must still say which door the connection came in by.
    server = ServerProcess("--web-port=0", "--flood-rate=0")
    try:
        web_port = int(server.wait_event("listening")["web_port"])
        web = await WebClient.connect(web_port)
        await web.login("webby")
        await web.join("room", "webby")
        await web.send("hello")
        said = server.wait_for(lambda r: r["event"] == "message", "message")
        await web.close()
    finally:
        server.kill()
    assert said["transport"] == "web"
    mine = [r for r in server.events if r.get("conn_id") == said["conn_id"]]
    assert {r["event"] for r in mine} >= {"connect", "nick", "join", "message"}
    assert {r["transport"] for r in mine} == {"web"}


async def test_a_mud_clients_hello_names_its_connection() -> None:
    server = ServerProcess("--log-level=debug")
    try:
        mud = await MudClient.connect(server.port)
        await mud.login("muddy")
        mud.send_gmcp("Core.Hello", {"client": "Mudlet", "version": "4.17.2"})
        mud.send_gmcp("Char.Login", {"name": "muddy"})
        hello = server.wait_event("gmcp_hello")
        ignored = server.wait_event("gmcp_ignored")
        await mud.close()
    finally:
        server.kill()
    for event in (hello, ignored):
        assert (event["transport"], event["nick"]) == ("telnet", "muddy")
        assert isinstance(event["conn_id"], int) and event["peer"].startswith("127.0.0.1:")
    assert (hello["client"], ignored["package"]) == ("Mudlet", "Char.Login")


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
