"""A connection carried over a server upgrade whose telnet protocol and session are not
built yet: its socket, and the way out for its user's output meanwhile.

Building them is most of what an upgrade's pause costs (some 150 µs a session), so the new
image first takes up only what the chat needs: each user, back in its rooms, with its
output written straight to its socket through a `Dormant`, and its socket watched for
input. Its protocol and session are built in the background, or at once when it sends
something, is sent more than its socket takes, or is hung up on (`App._wake`). A dormant
connection never reads: its input waits in the kernel for the protocol that will. Like the
rest of this layer, it holds no chat state: the App keeps its user.
"""

from __future__ import annotations

import asyncio
import os
import select
from collections.abc import Callable
from typing import Any


class Dormant:
    """The socket and record of one carried connection, and its user's Sink meanwhile."""

    __slots__ = ("_pending", "_wake", "_woken", "fd", "record")

    def __init__(self, record: dict[str, Any], wake: Callable[[Dormant], object]) -> None:
        # The bare descriptor: a socket object is made when the protocol is. The old image's
        # event loop made it non-blocking; the flag is the open file's, kept across the exec.
        self.fd = int(record["fd"])
        self.record = record
        self._wake = wake
        # Output the socket did not take, or written since waking: the protocol writes it first.
        # None while everything written went out.
        self._pending: bytearray | None = None
        self._woken = False

    @property
    def conn_id(self) -> int:
        return int(self.record["conn_id"])

    def write(self, data: bytes) -> int:
        pending = self._pending
        if pending is not None:
            pending += data
            return len(pending)
        try:
            sent = os.write(self.fd, data)
        except BlockingIOError:
            sent = 0
        except OSError:
            # The peer is gone: its protocol, built now, finds out and ends the session.
            self.wake()
            return 0
        if sent < len(data):
            self._pending = bytearray(data[sent:])
            self.wake()
        return self.buffered()

    def wake(self) -> None:
        """Have its protocol and session built now."""
        self._wake(self)

    def buffered(self) -> int:
        return len(self._pending) if self._pending is not None else 0

    def wake_up(self) -> bool:
        """Note that its protocol is being built; False if it was already. From now on what
        it is sent waits for the protocol, which must write it after anything the socket
        did not take, never beside it."""
        if self._woken:
            return False
        self._woken = True
        if self._pending is None:
            self._pending = bytearray()
        return True

    def take_pending(self) -> bytes:
        pending, self._pending = self._pending, None
        return bytes(pending or b"")


class Watch:
    """The dormant connections' sockets, watched for input in an epoll set of their own,
    whose one descriptor the event loop watches. Watching each socket with the loop itself
    costs uvloop a poll handle and four system calls (some 8 µs, half of taking a dormant
    connection up); adding it to this set is one. A socket with input, or whose peer left
    (epoll always reports a hang-up), is passed to `ready` until it is `forget`-ten."""

    __slots__ = ("_epoll", "_loop", "_ready", "_watched")

    def __init__(self, ready: Callable[[Dormant], object]) -> None:
        self._ready = ready
        self._loop = asyncio.get_running_loop()
        self._epoll = select.epoll()
        self._watched: dict[int, Dormant] = {}
        self._loop.add_reader(self._epoll.fileno(), self._input)

    def watch(self, dormant: Dormant) -> None:
        self._epoll.register(dormant.fd, select.EPOLLIN)
        self._watched[dormant.fd] = dormant

    def forget(self, dormant: Dormant) -> None:
        if self._watched.pop(dormant.fd, None) is not None:
            self._epoll.unregister(dormant.fd)

    def close(self) -> None:
        self._loop.remove_reader(self._epoll.fileno())
        self._epoll.close()
        self._watched.clear()

    def _input(self) -> None:
        for fd, _ in self._epoll.poll(0):
            dormant = self._watched.get(fd)
            if dormant is not None:
                self._ready(dormant)


def can_sleep(telnet: dict[str, Any]) -> bool:
    """Whether a carried connection's telnet state (`protocol.carry`) lets it wait dormant:
    it holds no input to process and no output its socket had not taken."""
    return not (telnet.get("unread") or telnet.get("unsent") or telnet.get("unprocessed") or telnet.get("lost"))
