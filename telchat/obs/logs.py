"""Logging: JSON lines on stdout (console on a TTY), stdlib logs in the same stream.

telchat logs one JSON line per chat message, so the JSON path is on the hot path: telchat's
own loggers (`get_logger`) render it directly with orjson, with what structlog's pipeline
would produce (the event's fields, `event`, structlog's context variables, `level`,
`timestamp`) at a third of its cost, and write the lines of one event-loop turn with one
`write()` and `flush()` at the end of the turn (immediately when no loop is running, and
before a fork and at exit). The console format, and the stdlib loggers (telnetlib3,
asyncio, redis-py), still go through structlog.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import sys
import time
from typing import IO, Any, BinaryIO, TextIO, cast

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _orjson_dumps(event: EventDict, **_: Any) -> bytes:
    # default=str keeps a stray exception or Path in an event from killing the log call.
    return orjson.dumps(event, default=str)


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _drop_color_message(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    event.pop("_record", None)
    event.pop("_from_structlog", None)
    return event


class _Output:
    """Log lines for one binary stream, written once per event-loop turn."""

    __slots__ = ("_lines", "_loop", "out")

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self._lines: list[bytes] = []
        # The loop on which a flush is scheduled, if any.
        self._loop: asyncio.AbstractEventLoop | None = None

    def write(self, line: bytes) -> None:
        self._lines.append(line)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (start-up, a thread, exit): nothing would flush later
            self.flush()
            return
        if self._loop is loop:
            return
        if self._loop is not None:
            # Scheduled on another loop, which may never run again: do not wait for it.
            self.flush()
            return
        self._loop = loop
        loop.call_soon(self.flush)

    def flush(self) -> None:
        self._loop = None
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        try:
            self.out.write(b"".join(lines))
            self.out.flush()
        except Exception:  # a failing log write must never kill a session
            pass


class _JsonLines:
    """The JSON renderer of telchat's own events: the lines structlog's pipeline would write."""

    __slots__ = ("_output", "_second", "_second_text", "threshold")

    def __init__(self, output: _Output, threshold: int) -> None:
        self._output = output
        self.threshold = threshold
        self._second = -1
        self._second_text = ""

    def emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        fields["event"] = event
        structlog.contextvars.merge_contextvars(None, level, fields)  # explicit fields win
        fields["level"] = level
        fields["timestamp"] = self._timestamp()
        if "exc_info" in fields:
            structlog.processors.format_exc_info(None, level, fields)  # in place
        self._output.write(orjson.dumps(fields, default=str, option=orjson.OPT_APPEND_NEWLINE))

    def _timestamp(self) -> str:
        """ISO 8601 UTC with microseconds, as TimeStamper(fmt="iso", utc=True) writes it; the
        part up to the second is formatted once a second."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int((now - second) * 1_000_000):06d}Z"


# Set by configure_logging in JSON format; None means structlog renders (console, or not set up).
_json: _JsonLines | None = None


class Logger:
    """What telchat's modules log with: `log.info("event", key=value, ...)`, like structlog's."""

    __slots__ = ("_context", "_name")

    def __init__(self, name: str, context: dict[str, Any] | None = None) -> None:
        self._name = name
        self._context = context or {}

    def bind(self, **fields: Any) -> Logger:
        return Logger(self._name, {**self._context, **fields})

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, "debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, "info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, "warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, "error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        fields.setdefault("exc_info", True)
        self._log(logging.ERROR, "error", event, fields)

    def _log(self, number: int, level: str, event: str, fields: dict[str, Any]) -> None:
        if self._context:
            fields = {**self._context, **fields}
        if _json is None:
            getattr(structlog.get_logger(self._name), level)(event, **fields)
        elif number >= _json.threshold:
            _json.emit(level, event, fields)


# Every output configured, for `flush_logs`.
_outputs: list[_Output] = []


def flush_logs() -> None:
    """Write every pending log line now: before exec, which runs no atexit handler."""
    for output in _outputs:
        output.flush()


def configure_logging(fmt: str = "auto", level: str = "info", stream: IO[bytes] | None = None) -> None:
    """Configure telchat's loggers and structlog, and route the stdlib (telnetlib3) logger through them.

    `stream` is a binary stream; stdout's buffer by default.
    """
    global _json
    out = stream if stream is not None else sys.stdout.buffer
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    threshold = _LEVELS[level]
    output = _Output(out)
    _outputs.append(output)
    atexit.register(output.flush)
    # A forked worker must not write the parent's pending lines a second time.
    os.register_at_fork(before=output.flush)
    shared = _shared_processors()
    renderer: Processor
    # Every writer goes through `output`, so that lines keep their order.
    if console:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
        logger_factory: Any = structlog.WriteLoggerFactory(file=cast(TextIO, _TextOut(output)))
        _json = None
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        logger_factory = structlog.BytesLoggerFactory(file=cast(BinaryIO, _BytesOut(output)))
        _json = _JsonLines(output, threshold)
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=logger_factory,
        cache_logger_on_first_use=True,
    )
    _route_stdlib(shared, console, output, threshold)


class _BytesOut:
    """A file for structlog's loggers that writes through an _Output (which flushes itself)."""

    def __init__(self, output: _Output) -> None:
        self._output = output

    def write(self, data: bytes) -> None:
        self._output.write(data)

    def flush(self) -> None:
        return None


class _TextOut:
    """The same for text, so that both renderers share one file."""

    def __init__(self, output: _Output) -> None:
        self._bytes = _BytesOut(output)
        self.flush = self._bytes.flush

    def write(self, text: str) -> None:
        self._bytes.write(text.encode("utf-8", "replace"))


class _BytesHandler(logging.Handler):
    def __init__(self, output: _Output) -> None:
        super().__init__()
        self._output = output

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # Through the same buffer as telchat's own lines, so the two keep their order.
            self._output.write(self.format(record).encode("utf-8", "replace") + b"\n")
        except Exception:  # a failing log write must never kill a session
            self.handleError(record)


def _route_stdlib(shared: list[Processor], console: bool, output: _Output, threshold: int) -> None:
    final: Processor = (
        structlog.dev.ConsoleRenderer(colors=False)
        if console
        else structlog.processors.JSONRenderer(serializer=lambda e, **_: orjson.dumps(e, default=str).decode())
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, structlog.processors.format_exc_info],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _drop_color_message, final],
    )
    handler = _BytesHandler(output)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    # telnetlib3 logs every connection at INFO; operators want its warnings (or less) only.
    level = max(threshold, logging.WARNING)
    root.setLevel(level)
    logging.getLogger("telnetlib3").setLevel(level)
    logging.getLogger("asyncio").setLevel(level)


def get_logger(name: str) -> Logger:
    return Logger(name)
