"""Tab completion for the character-mode line editor: commands, nicks and rooms.

The first word completes to a command (with its `/` if one was typed; operator commands
only for operators). A later word completes to what the command's usage names at that
place (`join <room>`: rooms; `msg <nick>`: nicks); a word starting with `#` is a room;
anything else a nick, as in `hi fr<Tab>`. Only this node's users and rooms are known.
"""

from __future__ import annotations

from telchat.chat.rooms import Chat, User
from telchat.session import commands


def candidates(chat: Chat, user: User, before: str, word: str) -> list[str]:
    """What `word` (typed after `before` on the input line) may complete to."""
    words = before.split()
    if not words:
        return _commands(user, word)
    if word.startswith("#") or _argument(words) == "room":
        hash_ = "#" if word.startswith("#") else ""
        prefix = word[len(hash_) :].lower()
        return [hash_ + room.name for room in chat.rooms.values() if room.name.lower().startswith(prefix)]
    prefix = word.lower()
    return [u.nick for u in chat.users if u.logged_in and u.nick.lower().startswith(prefix)]


def _commands(user: User, word: str) -> list[str]:
    slash = "/" if word.startswith("/") else ""
    prefix = word[len(slash) :].lower()
    return [
        slash + command.name
        for command in commands.COMMANDS
        if command.name.startswith(prefix) and (user.operator or not command.operator)
    ]


def _argument(words: list[str]) -> str:
    """What the command in `words` takes next, by its usage: "room", "nick" or ""."""
    command = commands.BY_NAME.get(words[0].removeprefix("/").lower())
    if command is None:
        return ""
    params = command.usage.split()[1:]
    place = len(words) - 1
    if place >= len(params):
        return ""
    param = params[place]
    return "room" if "room" in param else "nick" if "nick" in param else ""
