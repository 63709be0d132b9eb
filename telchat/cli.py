"""`telchat`, `python -m telchat` and `python server.py`: parse options, run until a signal."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Sequence

from telchat.app import App
from telchat.config import Config, parse_config
from telchat.logs import configure_logging, get_logger
from telchat.store import StoreError

EXIT_OK = 0
EXIT_START_FAILED = 2


async def serve(config: Config) -> int:
    log = get_logger("telchat.cli")
    try:
        app = App(config)
        await app.start()
    except StoreError as exc:
        log.error("start_failed", error=str(exc), store=config.store)
        print(f"telchat: {exc}", file=sys.stderr)
        return EXIT_START_FAILED
    except OSError as exc:
        log.error("start_failed", error=str(exc), host=config.host, port=config.port)
        print(f"telchat: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_START_FAILED
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("signal", action="shutting down")
    await app.stop()
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    configure_logging(config.log_format, config.log_level)
    return asyncio.run(serve(config))
