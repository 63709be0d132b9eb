"""Real terminal programs in tmux: type with send-keys, read the screen with capture-pane.

Each Pane runs on a private tmux server (its own socket), so tests never touch a person's
tmux sessions, and closing a Pane stops only that server. The calls are asynchronous so
that a server running in the test's own event loop keeps serving while we wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
from collections.abc import Callable

import pytest

_sockets = itertools.count(1)


def require(*programs: str) -> None:
    """Skip when a program is missing, except under CI, where that is a broken setup."""
    missing = [p for p in programs if shutil.which(p) is None]
    if not missing:
        return
    message = f"missing {', '.join(missing)}: ./scripts/test.sh installs them"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


class Pane:
    def __init__(self, socket: str) -> None:
        self.socket = socket

    @classmethod
    async def start(cls, command: list[str], width: int = 100, height: int = 30, term: str = "xterm") -> Pane:
        pane = cls(f"telchat-test-{os.getpid()}-{next(_sockets)}")
        env = ["-e", "LANG=C.UTF-8", "-e", f"TERM={term}"]
        # tmux sets TERM for the program itself (from default-terminal): `env` overrides it.
        await pane.tmux("new-session", "-d", "-x", str(width), "-y", str(height), *env, "env", f"TERM={term}", *command)
        return pane

    async def tmux(self, *args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            "tmux", "-L", self.socket, "-f", "/dev/null", *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)}: {err.decode(errors='replace')}")
        return out.decode("utf-8", "replace")

    async def keys(self, *keys: str, literal: bool = False) -> None:
        await self.tmux("send-keys", *(["-l"] if literal else []), *keys)

    async def type(self, text: str) -> None:
        await self.keys(text, literal=True)

    async def screen(self) -> list[str]:
        """The visible lines, trailing blanks removed."""
        lines = (await self.tmux("capture-pane", "-p", "-J")).split("\n")
        while lines and not lines[-1].strip():
            lines.pop()
        return [line.rstrip() for line in lines]

    async def cursor(self) -> tuple[int, int]:
        x, y = (await self.tmux("display-message", "-p", "#{cursor_x} #{cursor_y}")).split()
        return int(x), int(y)

    async def wait(self, check: Callable[[list[str]], bool], what: str, timeout: float = 5.0) -> list[str]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        screen = await self.screen()
        while not check(screen):
            if loop.time() > deadline:
                raise AssertionError(f"screen never showed {what}:\n" + "\n".join(screen))
            await asyncio.sleep(0.05)
            screen = await self.screen()
        return screen

    async def wait_line(self, text: str, timeout: float = 5.0) -> list[str]:
        return await self.wait(lambda screen: any(text in line for line in screen), repr(text), timeout)

    async def close(self) -> None:
        # The program may have exited already and taken its tmux server with it.
        with contextlib.suppress(RuntimeError):
            await self.tmux("kill-server")
