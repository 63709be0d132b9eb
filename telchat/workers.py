"""`--workers N`: N server processes on one port (SO_REUSEPORT), kept alive by a parent.

The kernel spreads new connections across the workers; the shared Redis store makes them
one chat. The parent forwards SIGTERM/SIGINT, restarts a worker that dies on its own, and
gives up (exit 1) when workers keep dying.

SIGUSR2 upgrades in place (telchat/upgrade.py): the parent signals the workers one at a
time, each handing its connections over to the new code and reporting back (SIGUSR1), and
then exec()s itself, keeping its workers: they are still its children, and the new image
takes them up from `SUPERVISED_ENV`.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import FrameType

from telchat.config import Config
from telchat.obs.logs import flush_logs, get_logger

log = get_logger(__name__)

MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
STOP_TIMEOUT = 8.0
#: How long the parent waits for one worker's upgrade before it goes on to the next.
UPGRADE_TIMEOUT = 40.0
#: prctl(2): the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1
#: Set in a worker (its index): an upgraded worker must come back as that worker.
WORKER_ENV = "TELCHAT_WORKER"
#: Set for the parent's new image: `index:pid,...` of the workers it keeps.
SUPERVISED_ENV = "TELCHAT_SUPERVISED"


@dataclass(slots=True)
class Worker:
    index: int
    pid: int
    exitcode: int | None = None

    def alive(self) -> bool:
        if self.exitcode is not None:
            return False
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            return True
        self.exitcode = os.waitstatus_to_exitcode(status)
        return False


class Signals:
    """What the parent was told since it last looked."""

    def __init__(self) -> None:
        self.stopping = False
        self.upgrade = False
        self.reported = False
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGUSR2, self._upgrade)
        signal.signal(signal.SIGUSR1, self._report)

    def _stop(self, _signum: int, _frame: FrameType | None) -> None:
        self.stopping = True

    def _upgrade(self, _signum: int, _frame: FrameType | None) -> None:
        self.upgrade = True

    def _report(self, _signum: int, _frame: FrameType | None) -> None:
        self.reported = True


def supervise(config: Config, run: Callable[[Config], int], check: Callable[[], str | None]) -> int:
    """Run `run(config)` in config.workers processes until a signal; return the exit code.
    `check` checks the code on disk before the parent upgrades itself (None: fine)."""
    signals = Signals()
    workers = _kept() or [_spawn(run, config, i) for i in range(config.workers)]
    restarts: list[float] = []
    while not signals.stopping:
        time.sleep(0.2)
        if signals.upgrade:
            _upgrade(workers, signals, check)
            signals.upgrade = False
        for i, worker in enumerate(workers):
            if worker.alive() or signals.stopping:
                continue
            log.error("worker_died", pid=worker.pid, exitcode=worker.exitcode)
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < RESTART_WINDOW] + [now]
            if len(restarts) > MAX_RESTARTS:
                log.error("workers_failing", restarts=len(restarts), window=RESTART_WINDOW)
                _stop_all(workers)
                return 1
            workers[i] = _spawn(run, config, worker.index)
    _stop_all(workers)
    return 0


def worker_config(config: Config, index: int) -> Config:
    """Worker `index` serves metrics on --metrics-port + index: one port per process's numbers."""
    if not config.metrics_port:  # off, or 0 (a free port each)
        return config
    return replace(config, metrics_port=config.metrics_port + index)


def _spawn(run: Callable[[Config], int], config: Config, index: int) -> Worker:
    flush_logs()  # the child must not write the parent's pending lines a second time
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = _worker_main(run, worker_config(config, index), index, parent)
        finally:
            flush_logs()
            os._exit(code)
    log.info("worker_started", pid=pid)
    return Worker(index, pid)


def _worker_main(run: Callable[[Config], int], config: Config, index: int, parent: int) -> int:
    # The parent's Python-level handlers must not run in the child: asyncio installs its own.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # until the worker's loop handles it
    _end_with(parent)
    os.environ[WORKER_ENV] = str(index)
    return run(config)


def _end_with(parent: int) -> None:
    """Have the kernel stop this worker (SIGTERM: it says goodbye, as on a stop) when its
    parent dies, SIGKILLed say: an orphan would go on serving the port beside the next
    server's workers, on its old code. Linux; the setting outlives the worker's upgrades
    (exec), not a fork."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        log.warning("worker_orphan_guard_failed", errno=ctypes.get_errno())
    elif os.getppid() != parent:  # it died before the prctl
        os.kill(os.getpid(), signal.SIGTERM)


def _upgrade(workers: list[Worker], signals: Signals, check: Callable[[], str | None]) -> None:
    """Each worker hands over in place, one at a time; then this process does."""
    for worker in workers:
        if signals.stopping or not worker.alive():
            continue
        signals.reported = False
        os.kill(worker.pid, signal.SIGUSR2)
        deadline = time.monotonic() + UPGRADE_TIMEOUT
        while not (signals.reported or signals.stopping) and time.monotonic() < deadline and worker.alive():
            time.sleep(0.05)
    problem = check()
    if problem is not None:
        log.error("upgrade_failed", stage="check", error=problem, sessions=0)
        return
    log.info("upgrade_exec", connections=0)
    flush_logs()
    env = {**os.environ, SUPERVISED_ENV: ",".join(f"{w.index}:{w.pid}" for w in workers)}
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # ignored across the exec, as in a worker
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def _kept() -> list[Worker]:
    """The workers the previous image of this parent handed over, if it just upgraded."""
    kept = os.environ.pop(SUPERVISED_ENV, "")
    workers = [
        Worker(int(index), int(pid)) for index, _, pid in (item.partition(":") for item in kept.split(",") if item)
    ]
    if workers:
        log.info("supervisor_upgraded", pid=os.getpid(), workers=[w.pid for w in workers])
    return workers


def report_upgrade() -> None:
    """In a worker: tell the parent that this worker's upgrade is over, one way or the other."""
    if WORKER_ENV in os.environ:
        os.kill(os.getppid(), signal.SIGUSR1)


def _stop_all(workers: list[Worker]) -> None:
    for worker in workers:
        if worker.alive():
            os.kill(worker.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for worker in workers:
        while worker.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if worker.alive():
            os.kill(worker.pid, signal.SIGKILL)
            os.waitpid(worker.pid, 0)
