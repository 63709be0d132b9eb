"""Command parsing and dispatch.

A line starting with `/` is always a command (`//text` says `/text`). A bare first word
(in any case) is a command when it names one that allows bare use and the argument count
fits (`join x`). A line whose first word takes a password or a private text (`login`,
`nick`, `register`, `password`, `msg`, `tell`) is never a message: it gets its usage if it does not
fit. A first word that is a command name with two neighbouring letters swapped (`jion x`),
followed by arguments that fit that command, gets a hint. Every other line is an ordinary
message (`join the party now`). docs/PROTOCOL.md states the same rules.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from telchat.chat.rooms import Chat, ChatError, User
from telchat.features.accounts import GHOST, Answer
from telchat.features.search import SEARCH_USAGE
from telchat.features.services import Services
from telchat.obs.logs import get_logger
from telchat.rules import replies
from telchat.rules.pages import wrap
from telchat.store.base import StoreError

log = get_logger(__name__)


class Context(Protocol):
    """What a command may touch: the chat, its services, its own user, and its own
    connection's end (quitting, and asking for a secret that the client does not echo)."""

    chat: Chat
    services: Services
    user: User

    def quit(self, message: str) -> None: ...

    def ask_secret(self, prompt: str, answer: Answer) -> None: ...


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
    # Only operators may use it: `help` lists it to them alone.
    operator: bool = False
    # Whether arguments that fit `bare` make a bare line this command (default: any do).
    bare_if: Callable[[list[str]], bool] | None = None

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
    # The command the name is probably a typo of.
    suggestion: str | None = None


Parsed = Say | Invocation | Unknown


async def _login(ctx: Context, args: list[str]) -> None:
    ghost = len(args) == 3
    if ghost and args[2].lower() != GHOST:
        raise ChatError(replies.USAGE.format(usage=LOGIN.usage))
    await ctx.services.accounts.login(ctx, args[0], args[1] if len(args) > 1 else None, ghost=ghost)


async def _join(ctx: Context, args: list[str]) -> None:
    await ctx.chat.join(ctx.user, args[0])


async def _leave(ctx: Context, args: list[str]) -> None:
    ctx.chat.leave(ctx.user, args[0] if args else None)


async def _say(ctx: Context, args: list[str]) -> None:
    ctx.chat.say(ctx.user, args[0])


async def _me(ctx: Context, args: list[str]) -> None:
    ctx.chat.emote(ctx.user, args[0])


async def _msg(ctx: Context, args: list[str]) -> None:
    await ctx.services.mailbox.msg(ctx.user, args[0], args[1])


async def _search(ctx: Context, args: list[str]) -> None:
    await ctx.services.search.search(ctx.user, args[0].split())


async def _mentions(ctx: Context, args: list[str]) -> None:
    await ctx.services.mailbox.mentions(ctx.user)


async def _who(ctx: Context, args: list[str]) -> None:
    page = _page(args[1], WHO) if len(args) > 1 else 1
    _send_lines(ctx, await ctx.chat.who(ctx.user, args[0] if args else None, page))


async def _rooms(ctx: Context, args: list[str]) -> None:
    _send_lines(ctx, await ctx.chat.room_list(ctx.user, _page(args[0], ROOMS_CMD) if args else 1))


def _page(text: str, command: Command) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ChatError(replies.USAGE.format(usage=command.usage))
    return int(text)


def _send_lines(ctx: Context, lines: list[str]) -> None:
    for line in lines:
        ctx.user.send(line)


async def _history(ctx: Context, args: list[str]) -> None:
    if len(args) == 2 and args[0].lower() == "since":
        await ctx.services.search.history_since(ctx.user, args[1])
        return
    if len(args) == 2:
        raise ChatError(replies.USAGE.format(usage=HISTORY.usage))
    count = ctx.chat.history_replay
    if args:
        if not args[0].isdigit() or not 1 <= int(args[0]) <= 1000:
            raise ChatError(replies.USAGE.format(usage=HISTORY.usage) + " (N from 1 to 1000)")
        count = int(args[0])
    await ctx.chat.history(ctx.user, count)


async def _help(ctx: Context, args: list[str]) -> None:
    if not args:
        _send_lines(ctx, help_lines(ctx.user.operator, ctx.user.columns))
        return
    command = BY_NAME.get(args[0].lstrip("/").lower())
    if command is None:
        raise ChatError(replies.NO_SUCH_COMMAND.format(name=args[0]))
    ctx.user.send(replies.HELP_ONE.format(usage=command.usage, summary=command.summary))
    if command.aliases:
        ctx.user.send(f"*** Also: {', '.join(command.aliases)}")


def help_lines(operator: bool, columns: int) -> list[str]:
    """The command list, in lines that fit `columns`; operator commands only for operators."""
    width = max(MIN_HELP_WIDTH, columns - 1)  # a full-width line would wrap on some terminals
    lines = wrap(replies.HELP_LIST, [c.name for c in COMMANDS if not c.operator], width=width)
    if operator:
        lines += wrap(replies.HELP_OPERATORS, [c.name for c in COMMANDS if c.operator], width=width)
    return [*lines, replies.HELP_MORE]


async def _quit(ctx: Context, args: list[str]) -> None:
    ctx.quit(ctx.services.moderation.quit_reason(ctx.user, args[0]) if args else replies.QUIT_PLAIN)


async def _register(ctx: Context, args: list[str]) -> None:
    await ctx.services.accounts.register(ctx.user, args[0])


async def _password(ctx: Context, args: list[str]) -> None:
    await ctx.services.accounts.change_password(ctx.user, args[0], args[1])


KEY_ACTIONS = frozenset({"add", "list", "remove"})


async def _key(ctx: Context, args: list[str]) -> None:
    accounts, action, rest = ctx.services.accounts, args[0].lower(), args[1:]
    if action == "add" and rest:
        await accounts.key_add(ctx.user, rest[0])
    elif action == "list" and not rest:
        await accounts.key_list(ctx.user)
    elif action == "remove" and len(rest) == 1 and len(rest[0].split()) == 1:
        await accounts.key_remove(ctx.user, rest[0])
    else:
        raise ChatError(replies.USAGE.format(usage=KEY.usage))


async def _away(ctx: Context, args: list[str]) -> None:
    ctx.services.social.away(ctx.user, args[0] if args else "")


async def _back(ctx: Context, args: list[str]) -> None:
    ctx.services.social.back(ctx.user)


async def _ignore(ctx: Context, args: list[str]) -> None:
    await ctx.services.social.ignore(ctx.user, args[0] if args else None)


async def _unignore(ctx: Context, args: list[str]) -> None:
    await ctx.services.social.unignore(ctx.user, args[0])


async def _set(ctx: Context, args: list[str]) -> None:
    if len(args) == 1:
        raise ChatError(replies.USAGE.format(usage=SET.usage))
    name, value = (args[0], args[1]) if args else (None, None)
    await ctx.services.social.setting(ctx.user, name, value)


async def _whois(ctx: Context, args: list[str]) -> None:
    await ctx.services.social.whois(ctx.user, args[0])


async def _topic(ctx: Context, args: list[str]) -> None:
    await ctx.services.moderation.topic(ctx.user, args[0] if args else None)


async def _kick(ctx: Context, args: list[str]) -> None:
    await ctx.services.moderation.kick(ctx.user, args[0], args[1] if len(args) > 1 else "")


async def _ban(ctx: Context, args: list[str]) -> None:
    await ctx.services.moderation.ban(ctx.user, args[0], args[1:])


async def _unban(ctx: Context, args: list[str]) -> None:
    await ctx.services.moderation.unban(ctx.user, args[0])


async def _bans(ctx: Context, args: list[str]) -> None:
    ctx.user.send(ctx.services.moderation.list_bans(ctx.user))


async def _mute(ctx: Context, args: list[str]) -> None:
    await ctx.services.moderation.mute(ctx.user, args[0], args[1:])


async def _unmute(ctx: Context, args: list[str]) -> None:
    await ctx.services.moderation.unmute(ctx.user, args[0], args[1] if len(args) > 1 else None)


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
    operator: bool = False,
    bare_if: Callable[[list[str]], bool] | None = None,
) -> Command:
    return Command(name, usage, summary, words, optional, rest, frozenset(bare), handler, aliases, operator, bare_if)


LOGIN = _command(
    "login",
    "login <nick> [password [ghost]]",
    "set or change your nick; a registered nick needs its password (asked for if not given);"
    " ghost ends the account's other sessions instead of joining them",
    _login,
    words=3,
    optional=2,
    bare=(1, 2, 3),
    aliases=("nick",),
)
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
MSG = _command(
    "msg", "msg <nick> <text>", "send a private message", _msg, words=2, rest=True, bare=(2,), aliases=("tell",)
)
WHO = _command(
    "who",
    "who [room|*] [page]",
    "members of a room, or everyone online (*); long lists come in pages",
    _who,
    words=2,
    optional=2,
    bare=(0, 1),
)
ROOMS_CMD = _command(
    "rooms", "rooms [page]", "rooms with their member counts", _rooms, words=1, optional=1, bare=(0,), aliases=("list",)
)
SEARCH = _command(
    "search",
    SEARCH_USAGE,
    "find lines in the rooms' history, newest first (bare: only search more)",
    _search,
    words=1,
    rest=True,
    bare=(1,),
    bare_if=lambda args: args[0].lower() == "more",
)
MENTIONS = _command("mentions", "mentions", "the lines that named you while you were offline", _mentions, bare=(0,))
HISTORY = _command(
    "history",
    "history [N | since 2h|14:00|2026-12-01]",
    "the current room's last N lines, or its lines since then",
    _history,
    words=2,
    optional=2,
    bare=(0, 1, 2),
    bare_if=lambda args: len(args) < 2 or args[0].lower() == "since",
)
HELP = _command("help", "help [command]", "list commands, or show one's usage", _help, words=1, optional=1, bare=(0, 1))
QUIT = _command("quit", "quit [reason]", "leave the chat", _quit, words=1, optional=1, rest=True, bare=(0,))
REGISTER = _command(
    "register",
    "register <password>",
    "register your current nick (6-128 characters, no spaces)",
    _register,
    words=1,
    bare=(1,),
)
PASSWORD = _command("password", "password <old> <new>", "change your account's password", _password, words=2, bare=(2,))
KEY = _command(
    "key",
    "key add <openssh public key> | key list | key remove <fingerprint|number>",
    "the SSH public keys that log in to your registered nick (ssh -p PORT nick@host)",
    _key,
    words=2,
    optional=1,
    rest=True,
    bare=(1, 2),
    # "key points are..." is a message: bare, only the three actions make the command.
    bare_if=lambda args: args[0].lower() in KEY_ACTIONS,
)
AWAY = _command("away", "away [message]", "mark yourself away", _away, words=1, optional=1, rest=True, bare=(0,))
BACK = _command("back", "back", "clear your away mark", _back, bare=(0,))
IGNORE = _command(
    "ignore",
    "ignore [nick]",
    "hide a nick's messages from you, or list whom you ignore",
    _ignore,
    words=1,
    optional=1,
    bare=(0, 1),
)
UNIGNORE = _command("unignore", "unignore <nick>", "see a nick's messages again", _unignore, words=1, bare=(1,))
SET = _command(
    "set",
    "set [charset <name> | timestamps|bell|highlight|catchup on|off | tz <zone>]",
    "show or change your settings; charsets: utf-8, cp1251, koi8-r, latin-1",
    _set,
    words=2,
    optional=2,
    bare=(0, 2),
)
WHOIS = _command("whois", "whois <nick>", "a user's rooms, idle time and away message", _whois, words=1, bare=(1,))
TOPIC = _command(
    "topic",
    "topic [text|-]",
    "show the room's topic; operators set it (- clears it)",
    _topic,
    words=1,
    optional=1,
    rest=True,
    bare=(0,),
)
KICK = _command(
    "kick", "kick <nick> [reason]", "operators: disconnect a user", _kick, words=2, optional=1, rest=True, operator=True
)
BAN = _command(
    "ban",
    "ban <nick|address> [duration] [reason]",
    "operators: ban a nick or an address (10m, 2h, 7d; default: until unban)",
    _ban,
    words=3,
    optional=2,
    rest=True,
    operator=True,
)
UNBAN = _command("unban", "unban <nick|address>", "operators: lift a ban", _unban, words=1, operator=True)
BANS = _command("bans", "bans", "operators: list the bans", _bans, operator=True)
MUTE = _command(
    "mute",
    "mute <nick> [duration] [#room|*]",
    "operators: silence a user in the current room, a room, or everywhere (*)",
    _mute,
    words=3,
    optional=2,
    operator=True,
)
UNMUTE = _command(
    "unmute", "unmute <nick> [#room|*]", "operators: lift a mute", _unmute, words=2, optional=1, operator=True
)

COMMANDS: tuple[Command, ...] = (
    LOGIN,
    JOIN,
    LEFT,
    SAY_CMD,
    ME,
    MSG,
    WHO,
    ROOMS_CMD,
    HISTORY,
    HELP,
    QUIT,
    REGISTER,
    PASSWORD,
    KEY,
    AWAY,
    BACK,
    IGNORE,
    UNIGNORE,
    SET,
    WHOIS,
    TOPIC,
    KICK,
    BAN,
    UNBAN,
    BANS,
    MUTE,
    UNMUTE,
    MENTIONS,
    SEARCH,
)
BY_NAME: dict[str, Command] = {name: command for command in COMMANDS for name in (command.name, *command.aliases)}


# Bare first words that always make a command: what follows is a password or private text,
# which must never reach the room (or a log line of it) because of a wrong word count.
NEVER_SAID = frozenset({"login", "nick", "register", "password", "msg", "tell"})
# Narrower clients get lines this wide anyway: one command name must fit.
MIN_HELP_WIDTH = 20
# A bare word this short that is a swapped-letter typo of a command is too often a word.
MIN_TYPO = 4


# The commands whose words hold a password, and how many words come before it: a line
# giving one stays out of the line editor's history, where Up would show it again.
WORDS_BEFORE_PASSWORD = {LOGIN.name: 1, REGISTER.name: 0, PASSWORD.name: 0}


def holds_password(line: str) -> bool:
    """Whether `line`, as typed, gives a command a password."""
    words = line.split()
    if not words or words[0].startswith("//"):
        return False
    command = BY_NAME.get(words[0].removeprefix("/").lower())
    before = WORDS_BEFORE_PASSWORD.get(command.name) if command is not None else None
    return before is not None and len(words) > before + 1


def parse(line: str) -> Parsed:
    """Classify one sanitized, stripped, non-empty line."""
    if line.startswith("//"):
        return Say(line[1:])
    if line.startswith("/"):
        word, _, rest = line[1:].partition(" ")
        command = BY_NAME.get(word.lower())
        if command is None:
            return Unknown(word, _typo_of(word.lower()))
        return Invocation(command, command.split(rest))
    word, _, rest = line.partition(" ")
    name = word.lower()
    command = BY_NAME.get(name)
    if command is None:
        typo = _typo_of(name) if len(name) >= MIN_TYPO else None
        if typo is not None and _fits_bare(BY_NAME[typo], rest) is not None:
            return Unknown(word, typo)
        return Say(line)
    args = _fits_bare(command, rest)
    if args is not None:
        return Invocation(command, args)
    return Invocation(command, None) if name in NEVER_SAID else Say(line)


def _fits_bare(command: Command, rest: str) -> list[str] | None:
    args = command.split(rest) if command.bare else None
    if args is None or len(args) not in command.bare:
        return None
    return args if command.bare_if is None or command.bare_if(args) else None


def _typo_of(name: str) -> str | None:
    """The command name that `name` is with two neighbouring letters swapped, if any."""
    for at in range(len(name) - 1):
        swapped = name[:at] + name[at + 1] + name[at] + name[at + 2 :]
        if swapped != name and swapped in BY_NAME:
            return swapped
    return None


async def execute(ctx: Context, parsed: Parsed) -> None:
    """Run one parsed line; a refused request becomes one `*** ` line to its sender."""
    if not isinstance(parsed, Say):
        await run(ctx, _dispatch(ctx, parsed))
        return
    say(ctx, parsed)


def say(ctx: Context, parsed: Say) -> None:
    """A plain message: it never waits, so it needs none of a command's coroutines."""
    try:
        ctx.chat.say(ctx.user, parsed.text)
    except ChatError as exc:
        ctx.user.send(str(exc))


async def run(ctx: Context, action: Awaitable[None]) -> None:
    """Await `action`; a refused request, or a store that cannot answer it, becomes one
    `*** ` line to its sender."""
    try:
        await action
    except ChatError as exc:
        ctx.user.send(str(exc))
    except StoreError as exc:
        user = ctx.user
        log.warning(
            "store_error",
            during="command",
            error=str(exc),
            **user.identity,
        )
        user.send(replies.STORE_UNAVAILABLE)


async def _dispatch(ctx: Context, parsed: Invocation | Unknown) -> None:
    if isinstance(parsed, Unknown):
        if parsed.suggestion is not None:
            raise ChatError(replies.DID_YOU_MEAN.format(name=parsed.name, suggestion=parsed.suggestion))
        raise ChatError(replies.UNKNOWN_COMMAND.format(name=parsed.name))
    if parsed.args is None:
        raise ChatError(replies.USAGE.format(usage=parsed.command.usage))
    await parsed.command.handler(ctx, parsed.args)
