"""`--workers N`: N server processes on one port (SO_REUSEPORT), kept alive by a parent.

The kernel spreads new connections across the workers; the shared Redis store makes them
one chat. The parent forwards SIGTERM/SIGINT, restarts a worker that dies on its own, and
gives up (exit 1) when workers keep dying.
"""

from __future__ import annotations

import multiprocessing
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.process import BaseProcess
from types import FrameType

from telchat.config import Config
from telchat.obs.logs import get_logger

log = get_logger(__name__)

MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
STOP_TIMEOUT = 8.0


def supervise(config: Config, run: Callable[[Config], int]) -> int:
    """Run `run(config)` in config.workers processes until a signal; return the exit code."""
    ctx = multiprocessing.get_context("fork")
    stopping = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    workers = [_spawn(ctx, run, _worker_config(config, i)) for i in range(config.workers)]
    restarts: list[float] = []
    while not stopping:
        time.sleep(0.2)
        for i, worker in enumerate(workers):
            if worker.is_alive() or stopping:
                continue
            log.error("worker_died", pid=worker.pid, exitcode=worker.exitcode)
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < RESTART_WINDOW] + [now]
            if len(restarts) > MAX_RESTARTS:
                log.error("workers_failing", restarts=len(restarts), window=RESTART_WINDOW)
                _stop_all(workers)
                return 1
            workers[i] = _spawn(ctx, run, _worker_config(config, i))
    _stop_all(workers)
    return 0


def _worker_config(config: Config, index: int) -> Config:
    """Worker `index` serves metrics on --metrics-port + index: one port per process's numbers."""
    if not config.metrics_port:  # off, or 0 (a free port each)
        return config
    return replace(config, metrics_port=config.metrics_port + index)


def _spawn(ctx: multiprocessing.context.ForkContext, run: Callable[[Config], int], config: Config) -> BaseProcess:
    process = ctx.Process(target=_worker_main, args=(run, config), daemon=False)
    process.start()
    log.info("worker_started", pid=process.pid)
    return process


def _worker_main(run: Callable[[Config], int], config: Config) -> None:
    # The parent's Python-level handlers must not run in the child: asyncio installs its own.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    raise SystemExit(run(config))


def _stop_all(workers: list[BaseProcess]) -> None:
    for worker in workers:
        if worker.is_alive() and worker.pid is not None:
            worker.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            worker.kill()
