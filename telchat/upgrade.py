"""Upgrade in place: SIGUSR2 runs the code on disk in the same process, and drops no one.

The running image first checks the new code: a child process of the new code compiles and
imports it, parses the command line, and reads a preview of the state (`verify`); if it
fails, the log says why and nothing else happens. Then the image pauses (`App.pause`: stops
accepting and reading, lets running lines finish, commits and writes what was accepted),
writes its state (`STATE_VERSION`) to a memfd, clears close-on-exec on the memfd, the
listeners and every client socket, and exec()s its own command line: same PID, so systemd
and container runtimes see no restart. The new image finds the memfd named in
`TELCHAT_HANDOVER`, takes up the sockets (`App.start(carried)`), rebuilds each session and
reads again; it logs one `upgrade` event.

Each layer carries its own state as plain data: the telnet options in telnet/protocol.py,
the terminal's line editor in clients/terminal.py and rules/lineedit.py, the session in
session/session.py. TLS sessions cannot be carried (their keys live in this process's
OpenSSL): they are told so and closed cleanly before the exec.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import stat
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

import telchat
from telchat import __version__
from telchat.app import App, Carried, HandoverError, until
from telchat.config import parse_config
from telchat.obs.logs import flush_logs, get_logger
from telchat.workers import report_upgrade

log = get_logger(__name__)

#: The state's format. A new image refuses any it cannot read (`incompatible`), so its
#: check fails and the old image goes on. Version 2 leaves empty values out of each
#: record (rules/plain.py): an image that reads version 1 only would take them for missing.
STATE_VERSION = 2
READABLE_VERSIONS = frozenset({1, STATE_VERSION})
HANDOVER_ENV = "TELCHAT_HANDOVER"
CHECK_ENV = "TELCHAT_HANDOVER_CHECK"
CHECK_TIMEOUT = 30.0
#: How long the pause waits for running lines to finish and clients to take their output.
PAUSE_GRACE = 0.5
UPGRADES_COUNTER = "upgrades"

# The check: the new code, from where this image's code was imported, in a fresh interpreter.
_CHECK = "import sys; sys.path.insert(0, sys.argv[1]); import telchat.upgrade as u; sys.exit(u.verify(sys.argv[2:]))"
BYTECODE_ENV = "PYTHONPYCACHEPREFIX"
_UNCHECKED = frozenset({HANDOVER_ENV, "PYTHONDONTWRITEBYTECODE"})
_ROOT = str(Path(telchat.__file__).resolve().parent.parent)


@dataclass(slots=True)
class Handover:
    """What the new image found in its memfd."""

    carried: Carried
    state: dict[str, Any]

    @property
    def sessions(self) -> int:
        return sum(1 for record in self.state["connections"] if "session" in record)


class Upgrader:
    """SIGUSR2's handler: one upgrade at a time."""

    def __init__(self, app: App, handover: Handover | None = None) -> None:
        self._app = app
        self._upgrades = int(handover.state["upgrades"]) if handover is not None else 0
        self._task: asyncio.Task[None] | None = None

    def install(self) -> None:
        """Handle SIGUSR2 from now on."""
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, self.request)

    def request(self) -> None:
        if self._task is not None:
            log.warning("upgrade_ignored", reason="an upgrade is already under way")
            return
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            await self._upgrade()
        except Exception as exc:
            log.exception("upgrade_failed", stage="handover", error=repr(exc))
            self._app.telemetry.counters.inc(UPGRADES_COUNTER, result="failed")
        finally:
            # Still here: the upgrade failed (a success exec()s and never returns).
            self._task = None
            report_upgrade()

    async def _upgrade(self) -> None:
        app = self._app
        # Sessions the previous upgrade left dormant are built first: only a session is carried.
        await app.awake()
        log.info("upgrade_started", sessions=len(app.sessions))
        try:
            listeners = app.listeners()
        except HandoverError as exc:
            self._failed("handover", str(exc))
            return
        problem = await check_new_code(self._state(app.carry(take_output=False), listeners, time.time()))
        if problem is not None or app.stopping:
            for listener in listeners.values():
                listener.close()
            if problem is not None:
                self._failed("check", problem)
            return
        paused = time.time()
        log.info("upgrade_paused", sessions=len(app.sessions))
        try:
            await app.pause(listeners, PAUSE_GRACE)
        except HandoverError as exc:
            # Nothing was carried: everyone reads again on the old code, their lines run here.
            await app.resume(listeners)
            self._failed("pause", str(exc))
            return
        if app.stopping:  # SIGTERM meanwhile: the shutdown goes on, without us
            return
        try:
            # Nothing made from here to the exec is garbage: no full passes over every session.
            gc.disable()
            execute(self._state(app.carry(), listeners, paused))
        except Exception as exc:
            # Everyone is still here, paused: read and accept again, on the old code.
            gc.enable()
            self.install()
            await app.resume(listeners)
            self._failed("exec", repr(exc))

    def _state(
        self, records: list[dict[str, Any]], listeners: dict[str, socket.socket], paused: float
    ) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "telchat": __version__,
            "paused_at": paused,
            "listeners": {door: listener.fileno() for door, listener in listeners.items()},
            "last_conn_id": self._app.telemetry.last_conn_id,
            "upgrades": self._upgrades + 1,
            "failed": self._app.telemetry.counters.value(UPGRADES_COUNTER, result="failed"),
            "connections": records,
            "store": self._app.store.carry(),
        }

    def _failed(self, stage: str, error: str) -> None:
        log.error("upgrade_failed", stage=stage, error=error, sessions=len(self._app.sessions))
        self._app.telemetry.counters.inc(UPGRADES_COUNTER, result="failed")

    async def resumed(self, handover: Handover) -> None:
        """In the new image: once every carried session runs again (dormant or built: the
        pause is over), open the web and SSH doors, build the dormant sessions, then log the
        upgrade."""
        app = self._app
        # Polled finely: when it ends is the pause's end, as measured.
        await until(lambda: app.session_count >= handover.sessions, time.monotonic() + 2.0, poll=0.005)
        resumed = time.time()
        dormant = app.session_count - len(app.sessions)
        await app.open_late_doors()
        await app.awake()
        state = handover.state
        # Every object made since the collector was turned off is in its youngest generation:
        # the first collection would pass over millions of them, holding every session a few
        # hundred milliseconds more. Frozen, they are left out; thawed a turn later, they go
        # to the oldest generation, which a full collection looks at in its own time.
        gc.freeze()
        gc.enable()
        asyncio.get_running_loop().call_soon(gc.unfreeze)
        counters = app.telemetry.counters
        counters.inc(UPGRADES_COUNTER, amount=self._upgrades, result="ok")
        if state["failed"]:
            counters.inc(UPGRADES_COUNTER, amount=int(state["failed"]), result="failed")
        log.info(
            "upgrade",
            pid=os.getpid(),
            upgrades=self._upgrades,
            old_version=state["telchat"],
            new_version=__version__,
            sessions=len(app.sessions),
            connections=len(state["connections"]),
            pause_ms=_ms(resumed - float(state["paused_at"])),
            # Its parts: the old image settling and writing its state, the exec and the new
            # image's start, and taking everything up.
            handover_ms=_ms(float(state["written_at"]) - float(state["paused_at"])),
            start_ms=_ms(float(state["read_at"]) - float(state["written_at"])),
            adopt_ms=_ms(resumed - float(state["read_at"])),
            # Sessions back in the chat before their protocol and session were built, and
            # the time taken to build them all after the pause.
            dormant=dormant,
            awake_ms=_ms(time.time() - resumed),
            unsent_bytes=sum(len(record["telnet"].get("unsent", "")) for record in state["connections"]),
            lost_bytes=sum(int(record["telnet"].get("lost", 0)) for record in state["connections"]),
        )
        report_upgrade()


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _memfd(state: dict[str, Any]) -> int:
    fd = os.memfd_create("telchat-handover")
    data = orjson.dumps(state)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _read(fd: int) -> dict[str, Any]:
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    state = orjson.loads(b"".join(chunks))
    if not isinstance(state, dict):
        raise ValueError("the handover state is not an object")
    return state


def incompatible(state: dict[str, Any]) -> str | None:
    """Why this code cannot take up `state`, or None."""
    version = state.get("version")
    if version not in READABLE_VERSIONS:
        readable = ", ".join(map(str, sorted(READABLE_VERSIONS)))
        return f"state format version {version!r}; this code reads versions {readable} only"
    return None


async def check_new_code(state: dict[str, Any]) -> str | None:
    """Have the code on disk, in a child process, compile itself and read `state`: None
    if it says OK, else what went wrong."""
    fd = _memfd(state)
    # It keeps the bytecode it compiles (see `bytecode_env`), from its first import on: the
    # modules the interpreter imports at its start are the new image's too.
    env = {key: value for key, value in os.environ.items() if key not in _UNCHECKED} | bytecode_env()
    env[CHECK_ENV] = str(fd)
    try:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _CHECK,
            _ROOT,
            *sys.argv[1:],
            pass_fds=(fd,),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(child.communicate(), CHECK_TIMEOUT)
        except TimeoutError:
            child.kill()
            await child.wait()
            return f"the new code's check did not answer within {CHECK_TIMEOUT:g} s"
    finally:
        os.close(fd)
    if child.returncode == 0 and out.strip() == b"OK":
        return None
    said = (err or out).decode(errors="replace").strip().splitlines()
    return " | ".join(said[-3:]) or f"the new code's check exited with {child.returncode}"


def bytecode_env() -> dict[str, str]:
    """Where the check leaves the new code's bytecode for the new image, as environment.

    A process that writes no bytecode (PYTHONDONTWRITEBYTECODE, common in container images)
    would have its new image compile every module again within the pause (some 200 ms):
    the check, which has just compiled them, keeps them in a cache directory of this user's
    own that the new image reads. A process that writes bytecode needs nothing: the check
    writes it where this one would, next to the source or under its PYTHONPYCACHEPREFIX.
    """
    if not sys.dont_write_bytecode or sys.pycache_prefix is not None:
        return {}
    directory = Path(tempfile.gettempdir()) / f"telchat-bytecode-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700)
    # Bytecode found there is run: only a directory of ours that no one else can write to.
    found = directory.lstat()
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid() or found.st_mode & 0o022:
        log.warning("upgrade_bytecode_uncached", directory=str(directory), reason="not a private directory")
        return {}
    return {BYTECODE_ENV: str(directory)}


def check_code() -> str | None:
    """`check_new_code` for a process with no connections (the --workers parent)."""
    return asyncio.run(check_new_code({"version": STATE_VERSION}))


def verify(argv: list[str]) -> int:
    """The check, run by the new code in a child: compile every module, read the command
    line and the state; print OK. A failure raises, printing its traceback."""
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        compile(path.read_bytes(), str(path), "exec")
    parse_config(argv)
    problem = incompatible(_read(int(os.environ[CHECK_ENV])))
    if problem is not None:
        print(f"refused: {problem}", file=sys.stderr)
        return 1
    print("OK")
    return 0


def execute(state: dict[str, Any]) -> None:
    """exec() this process's own command line with `state` and its sockets inherited."""
    state["written_at"] = time.time()
    fd = _memfd(state)
    for inherited in (fd, *state["listeners"].values(), *(record["fd"] for record in state["connections"])):
        os.set_inheritable(inherited, True)
    env = {**os.environ, HANDOVER_ENV: str(fd)} | bytecode_env()
    log.info("upgrade_exec", connections=len(state["connections"]))
    flush_logs()
    # An ignored signal stays ignored across exec: a SIGUSR2 before the new image handles
    # it is ignored, as during the rest of the upgrade, instead of killing the process.
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    # orig_argv, not argv: `python -m telchat` must run as a module again, not as a file.
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def inherited() -> Handover | None:
    """In a new image: the state and sockets the previous one handed over, if it did."""
    value = os.environ.pop(HANDOVER_ENV, None)
    if value is None:
        return None
    # Signals the old image blocked while it exec'd would stay blocked here.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2, signal.SIGTERM, signal.SIGINT})
    fd = int(value)
    # Taking up thousands of sessions allocates millions of objects, and the parsed state
    # holds a million more: the collector's full passes over them are most of the time it
    # would take. Nothing made meanwhile is garbage yet; `resumed` collects again.
    gc.disable()
    try:
        state = _read(fd)
    finally:
        os.close(fd)
    state["read_at"] = time.time()
    problem = incompatible(state)
    if problem is not None:
        # The old image's check ran this same code and passed: only a change between the
        # check and the exec gets here.
        log.error("upgrade_refused", error=problem)
        return None
    listeners = {door: _adopted(fd) for door, fd in _listeners(state).items()}
    for record in state["connections"]:
        os.set_inheritable(record["fd"], False)
    carried = Carried(
        listeners=listeners,
        connections=state["connections"],
        last_conn_id=int(state["last_conn_id"]),
        store=state["store"],
    )
    return Handover(carried, state)


def _listeners(state: dict[str, Any]) -> dict[str, int]:
    """The listeners' descriptors by door; an image before the web and SSH listeners were
    carried too handed over a list, the plain one first, then the TLS one."""
    listeners = state["listeners"]
    if isinstance(listeners, list):
        return dict(zip(("telnet", "tls"), listeners, strict=False))
    return {str(door): int(fd) for door, fd in listeners.items()}


def _adopted(fd: int) -> socket.socket:
    os.set_inheritable(fd, False)
    return socket.socket(fileno=fd)
