"""Real server processes for tests that need a whole `python server.py`."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class ServerProcess:
    def __init__(self, *args: str, env: dict[str, str] | None = None, command: list[str] | None = None) -> None:
        """`python server.py ARGS`, or `python COMMAND ARGS` (`-m telchat`, another tree's server.py)."""
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        # A working directory of its own: the default store, sqlite:///telchat.db, is then
        # this server's alone, not a file every test (and xdist worker) would share.
        self.home = tempfile.mkdtemp(prefix="telchat-test-")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                *(command or [str(ROOT / "server.py")]),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--log-format",
                "json",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            cwd=self.home,
        )
        self.events: list[dict[str, Any]] = []
        self._lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        self.port = int(self.wait_event("listening")["port"])

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(b"")

    def wait_event(self, event: str, timeout: float = 10.0) -> dict[str, Any]:
        return self.wait_for(lambda record: record["event"] == event, event, timeout)

    def wait_for(self, match: Callable[[dict[str, Any]], bool], what: str, timeout: float = 10.0) -> dict[str, Any]:
        """Read log lines until one matches; every line must be JSON."""
        for seen in self.events:
            if match(seen):
                return seen
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if not line:
                break
            record = json.loads(line)
            self.events.append(record)
            if match(record):
                return record
        raise AssertionError(f"no {what!r} log event; stderr: {self.stderr()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        while (line := self._lines.get(timeout=timeout)) != b"":
            self.events.append(json.loads(line))
        return code

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace")

    def end(self, timeout: float = 10.0) -> None:
        """SIGTERM, then `kill`: a --workers parent stops its workers, which a SIGKILL would orphan."""
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.home, ignore_errors=True)


def run_server(*args: str) -> subprocess.CompletedProcess[str]:
    """`python server.py ARGS` to completion: for start-up failures and --help."""
    with tempfile.TemporaryDirectory(prefix="telchat-test-") as home:
        return subprocess.run(
            [sys.executable, str(ROOT / "server.py"), *args],
            cwd=home,
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
