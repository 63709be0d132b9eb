"""structlog set-up: JSON lines on stdout (console on a TTY), stdlib logs in the same pipeline."""

from __future__ import annotations

import logging
import sys
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


def configure_logging(fmt: str = "auto", level: str = "info", stream: IO[bytes] | None = None) -> None:
    """Configure structlog and route the stdlib (telnetlib3) logger through it.

    `stream` is a binary stream; stdout's buffer by default.
    """
    out = stream if stream is not None else sys.stdout.buffer
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    threshold = _LEVELS[level]
    shared = _shared_processors()
    renderer: Processor
    if console:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
        logger_factory: Any = structlog.WriteLoggerFactory(file=cast(TextIO, _TextOut(out)))
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        logger_factory = structlog.BytesLoggerFactory(file=cast(BinaryIO, out))
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
    _route_stdlib(shared, console, out, threshold)


class _TextOut:
    """A text facade over a binary stream, so both renderers share one file."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out

    def write(self, text: str) -> None:
        self._out.write(text.encode("utf-8", "replace"))

    def flush(self) -> None:
        self._out.flush()


class _BytesHandler(logging.Handler):
    def __init__(self, out: IO[bytes]) -> None:
        super().__init__()
        self._out = out

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._out.write(self.format(record).encode("utf-8", "replace") + b"\n")
            self._out.flush()
        except Exception:  # a failing log write must never kill a session
            self.handleError(record)


def _route_stdlib(shared: list[Processor], console: bool, out: IO[bytes], threshold: int) -> None:
    final: Processor = (
        structlog.dev.ConsoleRenderer(colors=False)
        if console
        else structlog.processors.JSONRenderer(serializer=lambda e, **_: orjson.dumps(e, default=str).decode())
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _drop_color_message, final],
    )
    handler = _BytesHandler(out)
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


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
