"""The JSON log writer in-process: what structlog would write, buffered per loop turn."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from telchat.obs.logs import configure_logging, get_logger
from tests.test_logging import ISO_UTC


class Stream(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.getvalue().splitlines()]


@pytest.fixture
def stream() -> Iterator[Stream]:
    out = Stream()
    configure_logging("json", "info", out)
    yield out
    structlog.contextvars.clear_contextvars()
    configure_logging("json", "info", open(os.devnull, "wb"))  # noqa: SIM115 - as conftest does


def test_lines_are_what_structlog_writes(stream: Stream) -> None:
    structlog.contextvars.bind_contextvars(conn_id=7, peer="p", nick="ctx")
    for log in (get_logger("telchat.test"), structlog.get_logger("telchat.test")):
        log.info("message", nick="explicit", text="hi", n=3)
        log.debug("hidden")
        log.bind(room="r").warning("limit", kind="x")
    ours, theirs = stream.records()[:2], stream.records()[2:]
    assert len(theirs) == 2
    for mine, reference in zip(ours, theirs, strict=True):
        assert ISO_UTC.match(mine.pop("timestamp"))
        reference.pop("timestamp")
        assert list(mine.items()) == list(reference.items())
    assert ours[0]["nick"] == "explicit" and ours[0]["conn_id"] == 7 and ours[1]["nick"] == "ctx"


def test_exception_is_rendered(stream: Stream) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        get_logger("t").exception("command_failed")
    (record,) = stream.records()
    assert record["level"] == "error"
    assert "ValueError: boom" in record["exception"]


def test_a_library_exception_has_its_traceback(stream: Stream) -> None:
    """asyncio reports a failing callback through stdlib logging with exc_info: the
    operator needs the traceback as text, not the exception's repr."""
    try:
        raise ValueError("boom")
    except ValueError as exc:
        logging.getLogger("asyncio").error("Exception in callback", exc_info=exc)
    (record,) = stream.records()
    assert record["logger"] == "asyncio" and "exc_info" not in record
    assert "Traceback" in record["exception"] and "ValueError: boom" in record["exception"]


async def test_one_write_per_loop_turn_in_order(stream: Stream) -> None:
    log = get_logger("t")
    flushes = stream.flushes
    for i in range(5):
        log.info("line", i=i)
        logging.getLogger("telnetlib3").warning("stdlib %d", i)
    assert stream.getvalue() == b""
    await asyncio.sleep(0)
    assert stream.flushes == flushes + 1
    events = [(r["event"], r.get("i")) for r in stream.records()]
    assert events == [pair for i in range(5) for pair in (("line", i), (f"stdlib {i}", None))]


def test_without_a_loop_each_line_is_written_at_once(stream: Stream) -> None:
    get_logger("t").info("now")
    assert stream.records()[0]["event"] == "now"


def test_a_line_pending_on_a_finished_loop_is_not_stranded(stream: Stream) -> None:
    async def log_one(stop: bool) -> None:
        get_logger("t").info("first")
        if stop:
            asyncio.get_running_loop().stop()

    loop = asyncio.new_event_loop()
    task = loop.create_task(log_one(stop=True))
    loop.run_forever()
    loop.close()  # stopped before its flush callback ran
    assert task.done()
    assert stream.getvalue() == b""
    asyncio.run(log_one(stop=False))
    assert [r["event"] for r in stream.records()] == ["first", "first"]
