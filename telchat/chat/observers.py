"""What the room manager tells a client besides text lines, through a narrow socket-free port.

A user may carry an `events` sink (GMCP for MUD clients: see telchat/clients/gmcp.py); the
room manager tells it when the user's rooms, a room's members or a room's talk change (the
"observers" section of telchat/chat/rooms.py). Each room keeps its members that have a sink
as `listeners`, so a message costs nothing extra in a room where nobody has one. The port
names no room-manager type, so the room manager and its observers do not import each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

Players = list[tuple[str, list[str]]]


class ChatEvents(Protocol):
    def channels(self, rooms: list[str]) -> None:
        """The user's rooms changed; `rooms` is all of them, current one first."""

    def channel_text(self, channel: str, talker: str, text: str) -> None:
        """`talker` said `text` (the line as shown) in `channel`."""

    def players(self, players: Callable[[], Players]) -> None:
        """Who shares a room with the user changed: `players()` lists them, (nick, the
        shared rooms) each. It costs the size of the user's rooms: a sink that coalesces
        changes calls it only when it sends."""
