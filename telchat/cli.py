"""`telchat`, `python -m telchat` and `python server.py`: parse options, run until a signal."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import structlog

from telchat import upgrade
from telchat.app import App
from telchat.config import Config, parse_config
from telchat.obs.logs import configure_logging, get_logger
from telchat.store.base import StoreError, masked
from telchat.store.url import make_store
from telchat.telnet.tls import server_context
from telchat.workers import WORKER_ENV, supervise, worker_config

EXIT_OK = 0
EXIT_START_FAILED = 2

# A session keeps some sixty container objects for as long as it lasts, so a busy server
# holds millions, and CPython's default thresholds (700, 10, 10) make it scan all of them
# again every time the heap grows by a quarter: setting up 10 000 sessions took 9 full
# collections, up to 0.5 s each, a quarter of the set-up time (and the worst greetings).
# With young collections every 2000 allocations and a full one considered only after 100
# of the middle generation, the set-up ran none. Closed sessions are cyclic garbage (the
# telnetlib3 objects refer to each other) and are still collected by the full collections.
GC_THRESHOLDS = (2000, 20, 100)


async def serve(config: Config) -> int:
    log = get_logger(__name__)
    if config.workers > 1:
        # Every worker counts conn_id from 1: the pid tells their log lines apart.
        structlog.contextvars.bind_contextvars(worker=os.getpid())
    handover = upgrade.inherited()
    app: App | None = None
    try:
        app = App(config)
        await app.start(handover.carried if handover is not None else None)
    except StoreError as exc:
        log.error("start_failed", error=str(exc), store=masked(config.store))
        print(f"telchat: {exc}", file=sys.stderr)
        return EXIT_START_FAILED
    except OSError as exc:
        log.error("start_failed", error=str(exc), host=config.host, port=config.port, metrics_port=config.metrics_port)
        print(f"telchat: cannot listen: {exc}", file=sys.stderr)
        # The store is open: closed, its tasks end as asked, not cancelled by the exit
        # (which its watcher would log as died).
        if app is not None:
            await app.stop()
        return EXIT_START_FAILED
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    upgrader = upgrade.Upgrader(app, handover)
    upgrader.install()
    if handover is not None:
        await upgrader.resumed(handover)
    await stop.wait()
    log.info("signal", action="shutting down")
    await app.stop()
    return EXIT_OK


def run(config: Config) -> int:
    return loop_runner(config.loop)(serve(config))


def loop_runner(name: str) -> Callable[[Coroutine[Any, Any, int]], int]:
    """asyncio.run or uvloop.run. uvloop's transports and loop are written in C: sends,
    reads and callbacks cost less, which is most of what a busy chat server does."""
    if name == "asyncio":
        return asyncio.run
    try:
        import uvloop
    except ImportError:
        if name == "uvloop":
            raise LoopUnavailable("--loop uvloop: uvloop is not installed") from None
        return asyncio.run
    return uvloop.run


class LoopUnavailable(Exception):
    pass


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    configure_logging(config.log_format, config.log_level)
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        loop_runner(config.loop)
    except LoopUnavailable as exc:
        print(f"telchat: {exc}", file=sys.stderr)
        return EXIT_START_FAILED
    if config.workers == 1:
        return run(config)
    worker = os.environ.get(WORKER_ENV)
    if worker is not None:
        # A worker that upgraded in place comes back as that worker, not as a new parent.
        return run(worker_config(config, int(worker)))
    if not config.store.startswith("redis://") or config.port == 0:
        print("telchat: --workers above 1 needs a redis:// --store and a fixed --port", file=sys.stderr)
        return EXIT_START_FAILED
    try:
        probe_tls(config)
        asyncio.run(probe_store(config))
    except (StoreError, OSError) as exc:
        print(f"telchat: {exc}", file=sys.stderr)
        return EXIT_START_FAILED
    return supervise(config, run, upgrade.check_code)


def probe_tls(config: Config) -> None:
    """Fail before forking workers when a TLS certificate or key is unusable (OSError):
    workers would each fail to start, over and over, until the parent gave up."""
    for cert, key in ((config.tls_cert, config.tls_key), (config.web_tls_cert, config.web_tls_key)):
        if cert:
            server_context(cert, key)


async def probe_store(config: Config) -> None:
    """Fail before forking workers when the store is unusable: one error, not N."""
    store = make_store(config.store, config.history_keep, config.node_ttl)
    await store.open(lambda _event: None)
    await store.close()
