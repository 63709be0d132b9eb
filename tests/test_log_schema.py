"""docs/OPERATIONS.md's log schema against a real server's log lines: every event that a
session produces is documented, and carries the fields its table row names."""

from __future__ import annotations

import re
from pathlib import Path

from tests.clients import logged_session
from tests.procs import ROOT, ServerProcess

LEVELS = {"debug", "info", "warning", "error"}
ROW = re.compile(r"^\| `([a-z_]+)` \| ([a-z]+) \| (.*) \|$")


def documented_events() -> dict[str, set[str]]:
    """Event name -> the fields its row always names (before any conditional clause)."""
    schema = (Path(ROOT) / "docs" / "OPERATIONS.md").read_text().split("\n## Logs", 1)[1]
    events: dict[str, set[str]] = {}
    for line in schema.splitlines():
        match = ROW.match(line)
        if match and match.group(2) in LEVELS:
            always = re.split(r";| when | with | only ", match.group(3), maxsplit=1)[0]
            always = re.sub(r"\([^)]*\)", "", always)
            events[match.group(1)] = set(re.findall(r"`([a-z_]+)`", always))
    # The `limit` event is described in prose ("Fields: `kind`, `conn_id`, `peer`, plus:").
    prose = re.search(r"logs one `([a-z_]+)` event.*?Fields: (.*?), plus", schema, flags=re.S)
    if prose:
        events[prose.group(1)] = set(re.findall(r"`([a-z_]+)`", prose.group(2)))
    return events


async def test_every_logged_event_is_documented_with_its_fields() -> None:
    schema = documented_events()
    assert {"connect", "negotiated", "nick", "join", "message", "disconnect", "shutdown"} <= schema.keys()
    server = ServerProcess("--store=memory://", "--flood-rate=0", "--metrics-port=0", "--metrics-host=127.0.0.1")
    try:
        bob = await logged_session(server.port, "r")
        assert server.stop() == 0
        await bob.close()
    finally:
        server.kill()
    undocumented = sorted({record["event"] for record in server.events} - schema.keys())
    assert not undocumented, f"logged but not in docs/OPERATIONS.md: {undocumented}"
    for record in server.events:  # every record of an event, not one of them
        missing = schema[record["event"]] - record.keys()
        assert not missing, f"{record['event']} lacks documented fields {missing}: {record}"
