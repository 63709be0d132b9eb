"""Command parsing and dispatch.

A line starting with `/` is always a command (`//text` says `/text`). A bare first word is
a command only when it names one that allows bare use and the argument count fits
(`join x`); otherwise the line is an ordinary message (`join the party now`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from telchat import charsets, replies
from telchat.rooms import Chat, ChatError, User


class Context(Protocol):
    """What a command may touch: the chat, its own user, and its own connection's end."""

    chat: Chat
    user: User

    def quit(self, message: str) -> None: ...


Handler = Callable[[Context, list[str]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    usage: str
    summary: str
    words: int
    optional: int
    rest: bool
    bare: frozenset[int]
    handler: Handler
    aliases: tuple[str, ...] = ()

    def split(self, text: str) -> list[str] | None:
        """Split the argument text, or None when the count does not fit the syntax."""
        parts = text.split(None, self.words - 1) if self.rest else text.split()
        if not self.words - self.optional <= len(parts) <= self.words:
            return None
        return parts


@dataclass(frozen=True, slots=True)
class Say:
    text: str


@dataclass(frozen=True, slots=True)
class Invocation:
    command: Command
    args: list[str] | None


@dataclass(frozen=True, slots=True)
class Unknown:
    name: str


Parsed = Say | Invocation | Unknown


async def _login(ctx: Context, args: list[str]) -> None:
    await ctx.chat.set_nick(ctx.user, args[0])


async def _join(ctx: Context, args: list[str]) -> None:
    await ctx.chat.join(ctx.user, args[0])


async def _leave(ctx: Context, args: list[str]) -> None:
    ctx.chat.leave(ctx.user, args[0] if args else None)


async def _say(ctx: Context, args: list[str]) -> None:
    ctx.chat.say(ctx.user, args[0])


async def _me(ctx: Context, args: list[str]) -> None:
    ctx.chat.emote(ctx.user, args[0])


async def _msg(ctx: Context, args: list[str]) -> None:
    await ctx.chat.private(ctx.user, args[0], args[1])


async def _who(ctx: Context, args: list[str]) -> None:
    ctx.user.send(await ctx.chat.who(ctx.user, args[0] if args else None))


async def _rooms(ctx: Context, args: list[str]) -> None:
    ctx.user.send(await ctx.chat.room_list())


async def _history(ctx: Context, args: list[str]) -> None:
    count = ctx.chat.history_replay
    if args:
        if not args[0].isdigit() or not 1 <= int(args[0]) <= 1000:
            raise ChatError(replies.USAGE.format(usage=HISTORY.usage) + " (N from 1 to 1000)")
        count = int(args[0])
    for line in await ctx.chat.history(ctx.user, count):
        ctx.user.send(line)


async def _help(ctx: Context, args: list[str]) -> None:
    if not args:
        ctx.user.send(replies.HELP_LIST.format(names=", ".join(c.name for c in COMMANDS)))
        return
    command = BY_NAME.get(args[0].lstrip("/").lower())
    if command is None:
        raise ChatError(replies.NO_SUCH_COMMAND.format(name=args[0]))
    ctx.user.send(replies.HELP_ONE.format(usage=command.usage, summary=command.summary))
    if command.aliases:
        ctx.user.send(f"*** Also: {', '.join(command.aliases)}")


async def _quit(ctx: Context, args: list[str]) -> None:
    ctx.quit(args[0] if args else "quit")


async def _set(ctx: Context, args: list[str]) -> None:
    setting, value = args
    if setting.lower() != "charset":
        raise ChatError(replies.NO_SUCH_SETTING.format(name=setting))
    charset = charsets.resolve(value)
    if charset is None:
        raise ChatError(replies.BAD_CHARSET.format(name=value, names=", ".join(charsets.SUPPORTED)))
    ctx.user.charset = charset
    ctx.user.send(replies.CHARSET_SET.format(charset=charset))


def _command(
    name: str,
    usage: str,
    summary: str,
    handler: Handler,
    *,
    words: int = 0,
    optional: int = 0,
    rest: bool = False,
    bare: tuple[int, ...] = (),
    aliases: tuple[str, ...] = (),
) -> Command:
    return Command(name, usage, summary, words, optional, rest, frozenset(bare), handler, aliases)


LOGIN = _command("login", "login <nick>", "set or change your nick", _login, words=1, bare=(1,), aliases=("nick",))
JOIN = _command("join", "join <room>", "join a room (creating it) and make it current", _join, words=1, bare=(1,))
LEFT = _command(
    "left",
    "left [room]",
    "leave a room (default: the current one)",
    _leave,
    words=1,
    optional=1,
    bare=(0, 1),
    aliases=("leave", "part"),
)
SAY_CMD = _command("say", "say <text>", "say something in the current room", _say, words=1, rest=True)
ME = _command("me", "me <action>", "act something out in the current room", _me, words=1, rest=True)
MSG = _command("msg", "msg <nick> <text>", "send a private message", _msg, words=2, rest=True, aliases=("tell",))
WHO = _command("who", "who [room]", "members of a room, or everyone online", _who, words=1, optional=1, bare=(0, 1))
ROOMS_CMD = _command("rooms", "rooms", "rooms with their member counts", _rooms, bare=(0,), aliases=("list",))
HISTORY = _command(
    "history", "history [N]", "the current room's last N lines", _history, words=1, optional=1, bare=(0, 1)
)
HELP = _command("help", "help [command]", "list commands, or show one's usage", _help, words=1, optional=1, bare=(0, 1))
QUIT = _command("quit", "quit [reason]", "leave the chat", _quit, words=1, optional=1, rest=True, bare=(0,))
SET = _command(
    "set", "set charset <name>", "use another charset: utf-8, cp1251, koi8-r or latin-1", _set, words=2, bare=(2,)
)

COMMANDS: tuple[Command, ...] = (LOGIN, JOIN, LEFT, SAY_CMD, ME, MSG, WHO, ROOMS_CMD, HISTORY, HELP, QUIT, SET)
BY_NAME: dict[str, Command] = {name: command for command in COMMANDS for name in (command.name, *command.aliases)}


def parse(line: str) -> Parsed:
    """Classify one sanitized, stripped, non-empty line."""
    if line.startswith("//"):
        return Say(line[1:])
    if line.startswith("/"):
        word, _, rest = line[1:].partition(" ")
        command = BY_NAME.get(word.lower())
        if command is None:
            return Unknown(word)
        return Invocation(command, command.split(rest))
    word, _, rest = line.partition(" ")
    command = BY_NAME.get(word)
    if command is not None and command.bare:
        args = command.split(rest)
        if args is not None and len(args) in command.bare:
            return Invocation(command, args)
    return Say(line)


async def execute(ctx: Context, parsed: Parsed) -> None:
    """Run one parsed line; a refused request becomes one `*** ` line to its sender."""
    try:
        if isinstance(parsed, Say):
            ctx.chat.say(ctx.user, parsed.text)
        elif isinstance(parsed, Unknown):
            raise ChatError(replies.UNKNOWN_COMMAND.format(name=parsed.name))
        elif parsed.args is None:
            raise ChatError(replies.USAGE.format(usage=parsed.command.usage))
        else:
            await parsed.command.handler(ctx, parsed.args)
    except ChatError as exc:
        ctx.user.send(str(exc))
