"""What the room manager tells a client besides text lines, through a narrow socket-free port.

A user may carry an `events` sink (GMCP for MUD clients: see gmcp.py); the room manager
calls the functions here when a user's rooms, a room's members or a room's talk change,
and they do nothing for users without one. Each room keeps its members that have a sink
as `listeners`, so a message costs nothing extra in a room where nobody has one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from telchat.chat.rooms import Room, User

Players = list[tuple[str, list[str]]]


class ChatEvents(Protocol):
    def channels(self, rooms: list[str]) -> None:
        """The user's rooms changed; `rooms` is all of them, current one first."""

    def channel_text(self, channel: str, talker: str, text: str) -> None:
        """`talker` said `text` (the line as shown) in `channel`."""

    def players(self, players: Players) -> None:
        """Who shares a room with the user: (nick, the shared rooms) each."""


def rooms_of(user: User) -> list[str]:
    current = user.current
    names = [room.name for room in user.rooms.values() if room is not current]
    return [current.name, *names] if current is not None else names


def players_of(user: User) -> Players:
    shared: dict[User, list[str]] = {}
    for room in user.rooms.values():
        for member in room.members:
            if member.logged_in:
                shared.setdefault(member, []).append(room.name)
    return sorted(((member.nick, rooms) for member, rooms in shared.items()), key=lambda p: p[0].casefold())


def channels_changed(user: User) -> None:
    if user.events is not None:
        user.events.channels(rooms_of(user))


def membership_changed(user: User, room: Room) -> None:
    """`user` joined or left `room`: its rooms changed, and so did who shares a room with whom."""
    channels_changed(user)
    players_changed((room,), also=user)


def players_changed(rooms: Iterable[Room], also: User | None = None) -> None:
    listeners: dict[User, None] = {also: None} if also is not None else {}
    for room in rooms:
        listeners.update(room.listeners)
    for listener in listeners:
        if listener.events is not None:
            listener.events.players(players_of(listener))


def channel_text(listeners: Iterable[User], channel: str, talker: str, text: str) -> None:
    for listener in listeners:
        if listener.events is not None:
            listener.events.channel_text(channel, talker, text)
