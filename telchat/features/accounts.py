"""Accounts: registered nicks, argon2id password hashes and login throttling.

A registered nick can be taken only by a connection that proves its password, or that
already proved it for that account since the password last changed: a change ends every
other connection linked to the account. Hashes are computed in worker threads, a few at a
time (`--hash-concurrency`), so a burst of logins neither stalls the event loop nor takes
every core. Failed logins are counted in the store, per address (an IPv6 address by its /64)
and per address and nick, so every node of a cluster throttles alike; never per nick alone,
so that strangers cannot lock an owner out. An attempt is reserved in the store, for every
node to count, before its password is verified, so parallel guesses cannot all pass the
check before any fails. No password is ever logged, stored or echoed.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from telchat.chat.profile import SETTINGS, zone_named
from telchat.chat.rooms import Chat, ChatError, User, check_nick_or_error, host_of
from telchat.features.moderation import Moderation, disconnect_event
from telchat.obs.logs import get_logger
from telchat.rules import replies
from telchat.rules.addresses import group_key
from telchat.rules.names import legacy_nick_key, look_key, nick_key
from telchat.store import events
from telchat.store.base import Record

log = get_logger(__name__)

ACCOUNT = "account"
# The control event that tells every node of a new account (features/mailbox.py).
REGISTERED: Final = "registered"
# `login NICK PASSWORD ghost`: end the account's other sessions instead of joining them.
GHOST = "ghost"
FAILURE_WINDOW = 60.0
MIN_PASSWORD = 6
MAX_PASSWORD = 128
# How long a login with the right password waits for the nick's old holder to go.
GHOST_POLL = 0.05
GHOST_POLLS = 60
# SSH keys per account: enough for a person's machines, small enough for one record.
MAX_KEYS = 10

Answer = Callable[[str], Awaitable[None]]


class Asker(Protocol):
    """A connection that can ask its user for a secret: the next line, not echoed."""

    user: User

    def ask_secret(self, prompt: str, answer: Answer) -> None: ...


class Hasher:
    def __init__(self, time_cost: int, memory_kib: int, parallelism: int, concurrency: int) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism, type=Type.ID
        )
        self._slots = asyncio.Semaphore(concurrency)

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, hashed: str, password: str) -> bool:
        async with self._slots:
            try:
                return await asyncio.to_thread(self._hasher.verify, hashed, password)
            except VerificationError:
                return False
            except InvalidHashError:
                log.error("account_hash_invalid")
                return False

    def outdated(self, hashed: str) -> bool:
        """Whether `hashed` was made with other parameters than the configured ones."""
        try:
            return self._hasher.check_needs_rehash(hashed)
        except InvalidHashError:
            return True


def check_password(password: str) -> None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD or any(ch.isspace() for ch in password):
        raise ChatError(replies.PASSWORD_RULE)


def parse_public_key(text: str) -> Record:
    """An OpenSSH public key line (`ssh-ed25519 AAAA... comment`), as the account stores it:
    its OpenSSH text, SHA256 fingerprint (as `ssh-keygen -l` shows it) and comment."""
    # Imported here: asyncssh (and cryptography) cost time and memory, paid only when used.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cryptography's DSA deprecation, on import
        import asyncssh
    try:
        key = asyncssh.import_public_key(text.strip())
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise ChatError(replies.KEY_INVALID) from exc
    comment = key.get_comment() or ""
    key.set_comment(None)
    return {
        "key": key.export_public_key("openssh").decode().strip(),
        "fingerprint": key.get_fingerprint(),
        "comment": comment,
    }


class Accounts:
    def __init__(self, chat: Chat, moderation: Moderation, hasher: Hasher, max_failures: int) -> None:
        self.chat = chat
        self.store = chat.store
        self.moderation = moderation
        self.hasher = hasher
        self.max_failures = max_failures
        # Run, in order, once a user proved their password and took the nick (mail, rooms).
        self.logins: list[Callable[[User], Awaitable[None]]] = []
        # Run once a user registered their nick: what they already have becomes the account's.
        self.registrations: list[Callable[[User], None]] = []

    async def login(self, asker: Asker, raw_nick: str, password: str | None, *, ghost: bool = False) -> None:
        """`login NICK [PASSWORD [ghost]]`: a registered nick without a password asks for one.
        A nick its account holds elsewhere gets one more session, or with `ghost` this one alone."""
        user = asker.user
        self.moderation.check_login(user, raw_nick)
        nick = check_nick_or_error(raw_nick)
        key = nick_key(nick)
        record = await self._account(nick)
        if record is None:
            if password is not None:
                raise ChatError(replies.NOT_REGISTERED.format(nick=nick))
            look = look_key(nick)
            if look != key and await self.store.get_record(ACCOUNT, look) is not None:
                raise ChatError(replies.NICK_TAKEN.format(nick=nick))  # reads as a registered nick
            await self.chat.set_nick(user, nick)
        elif user.account == key:
            await self._take(user, nick, ghost=ghost)
        elif password is None:
            prompt = replies.PASSWORD_PROMPT.format(nick=nick)
            asker.ask_secret(prompt, lambda answer: self.identify(user, nick, answer))
        else:
            await self.identify(user, nick, password, ghost=ghost)

    async def identify(self, user: User, nick: str, password: str, *, ghost: bool = False) -> None:
        """Check `password` for the account `nick`; on success take the nick."""
        if not password:
            raise ChatError(replies.LOGIN_CANCELLED)
        key = nick_key(nick)
        record = await self._verified(user.identity, key, nick, password)
        await self._rehash(key, record, password)
        await self._enter(user, nick, key, record, ghost=ghost)

    async def login_proven(self, user: User, raw_nick: str) -> None:
        """Log in to the account `raw_nick` whose ownership another door proved (an SSH key
        or password): what `identify` does once the password is verified."""
        self.moderation.check_login(user, raw_nick)
        nick = check_nick_or_error(raw_nick)
        record = await self._account(nick)
        if record is None:
            raise ChatError(replies.NOT_REGISTERED.format(nick=nick))
        # As a password login: one more session if the account is online elsewhere.
        await self._enter(user, nick, nick_key(nick), record, ghost=False)

    async def password_proves(self, raw_nick: str, password: str, peer: str, door: str) -> bool:
        """Whether `password` is the account's, for a door that asks it before any session
        (SSH): the same hasher and the same failure throttling as `login`."""
        try:
            nick = check_nick_or_error(raw_nick)
            # No session yet, so no conn_id: the address and the door name the attempt.
            record = await self._verified({"peer": peer, "transport": door}, nick_key(nick), nick, password)
        except ChatError:
            return False
        await self._rehash(nick_key(nick), record, password)
        return True

    async def key_proves(self, raw_nick: str, fingerprint: str) -> bool:
        """Whether the account `raw_nick` has added the public key with `fingerprint`."""
        try:
            nick = check_nick_or_error(raw_nick)
        except ChatError:
            return False
        record = await self._account(nick)
        return record is not None and any(held["fingerprint"] == fingerprint for held in record.get("keys", []))

    async def key_add(self, user: User, text: str) -> None:
        """`key add <openssh public key>`: one more key that logs in to the account over SSH."""
        key, record = await self._own_record(user)
        added = parse_public_key(text)
        keys: list[Record] = record.setdefault("keys", [])
        if any(held["fingerprint"] == added["fingerprint"] for held in keys):
            raise ChatError(replies.KEY_ALREADY_ADDED.format(fingerprint=added["fingerprint"]))
        if len(keys) >= MAX_KEYS:
            raise ChatError(replies.KEY_LIMIT.format(limit=MAX_KEYS))
        keys.append(added)
        await self.store.put_record(ACCOUNT, key, record)
        log.info(
            "account_key_added",
            **user.identity,
            account=key,
            fingerprint=added["fingerprint"],
        )
        user.send(replies.KEY_ADDED.format(fingerprint=added["fingerprint"]))

    async def key_list(self, user: User) -> None:
        """`key list`: the account's keys, numbered, by fingerprint and comment."""
        _, record = await self._own_record(user)
        keys = record.get("keys", [])
        if not keys:
            user.send(replies.KEYS_NONE)
        for number, held in enumerate(keys, 1):
            user.send(replies.KEY_LINE.format(number=number, fingerprint=held["fingerprint"], comment=held["comment"]))

    async def key_remove(self, user: User, which: str) -> None:
        """`key remove <fingerprint|number>`."""
        key, record = await self._own_record(user)
        keys: list[Record] = record.get("keys", [])
        numbered = int(which) - 1 if which.isdigit() else -1
        found = [held for number, held in enumerate(keys) if number == numbered or held["fingerprint"] == which]
        if not found:
            raise ChatError(replies.KEY_NOT_FOUND.format(which=which))
        keys.remove(found[0])
        await self.store.put_record(ACCOUNT, key, record)
        log.info(
            "account_key_removed",
            **user.identity,
            account=key,
            fingerprint=found[0]["fingerprint"],
        )
        user.send(replies.KEY_REMOVED.format(fingerprint=found[0]["fingerprint"]))

    async def _own_record(self, user: User) -> tuple[str, Record]:
        """The account record of the user's proven account."""
        if user.account is None:
            raise ChatError(replies.NICK_NOT_REGISTERED)
        record = await self.store.get_record(ACCOUNT, user.account)
        if record is None:
            raise ChatError(replies.NICK_NOT_REGISTERED)
        return user.account, record

    async def _rehash(self, key: str, record: Record, password: str) -> None:
        if self.hasher.outdated(record["hash"]):
            record["hash"] = await self.hasher.hash(password)
            await self.store.put_record(ACCOUNT, key, record)

    async def _enter(self, user: User, nick: str, key: str, record: Record, *, ghost: bool) -> None:
        """Log in to an account whose ownership is proven."""
        self._grant(user, key, record)
        log.info("login", **user.identity, account=key, operator=user.operator)
        await self._take(user, nick, ghost=ghost)
        # The nick change first: what the hooks show comes after it.
        await self.store.settled()
        for welcome in self.logins:
            await welcome(user)

    async def register(self, user: User, password: str) -> None:
        if user.key is None:
            raise ChatError(replies.LOGIN_FIRST)
        check_password(password)
        key, nick = user.key, user.nick
        if await self._account(nick) is not None:
            raise ChatError(replies.ALREADY_REGISTERED.format(nick=nick))
        record: Record = {"nick": nick, "hash": await self.hasher.hash(password), "created": time.time()}
        await self.store.put_record(ACCOUNT, key, record)
        self.store.publish(events.control(REGISTERED, key))
        self._grant(user, key, record)
        await self.remember(user)
        for registration in self.registrations:
            registration(user)
        log.info("account_registered", **(user.identity | {"nick": nick}), account=key)
        user.send(replies.REGISTERED.format(nick=nick))

    async def change_password(self, user: User, old: str, new: str) -> None:
        if user.account is None:
            raise ChatError(replies.NICK_NOT_REGISTERED)
        check_password(new)
        key = user.account
        record = await self._verified(user.identity, key, user.nick, old)
        record["hash"] = await self.hasher.hash(new)
        await self.store.put_record(ACCOUNT, key, record)
        log.info("password_changed", **user.identity, account=key)
        user.send(replies.PASSWORD_CHANGED)
        # Whoever proved the old password (on any node) must prove the new one.
        notice = replies.PASSWORD_CHANGED_NOTICE.format(nick=record.get("nick", user.nick))
        self.store.publish(disconnect_event(f"account:{key}", notice, replies.PASSWORD_CHANGED_REASON, spare=user))

    async def registered(self, raw_nick: str) -> bool:
        """Whether `raw_nick` names a registered account."""
        return await self.record_of(raw_nick) is not None

    async def record_of(self, raw_nick: str) -> Record | None:
        """The account record `raw_nick` names, or None."""
        try:
            nick = check_nick_or_error(raw_nick)
        except ChatError:
            return None
        return await self._account(nick)

    async def _account(self, nick: str) -> Record | None:
        """The account record of `nick`; one stored under the key it had before keys came
        from the confusables data is moved to its key now."""
        key = nick_key(nick)
        record = await self.store.get_record(ACCOUNT, key)
        legacy = legacy_nick_key(nick)
        if record is not None or legacy == key:
            return record
        record = await self.store.get_record(ACCOUNT, legacy)
        if record is not None and nick_key(record["nick"]) == key:
            await self.store.put_record(ACCOUNT, key, record)
            await self.store.put_record(ACCOUNT, legacy, None)
            log.info("account_key_migrated", account=key, legacy=legacy)
            return record
        return None

    async def remember(self, user: User) -> None:
        """Save the user's settings and ignores with their account, if they have one."""
        if user.account is None:
            return
        record = await self.store.get_record(ACCOUNT, user.account)
        if record is None:
            return
        record["settings"] = user.profile.settings()
        record["ignored"] = sorted(user.profile.ignored)
        record["tz"] = user.profile.zone.key if user.profile.zone is not None else None
        await self.store.put_record(ACCOUNT, user.account, record)

    async def _verified(self, who: dict[str, Any], key: str, nick: str, password: str) -> Record:
        """The account record, once `password` proved right; throttled per address, and per
        address and nick, counting attempts still being verified. `who` tries, as log events
        name it (`User.identity`)."""
        group = group_key(host_of(who["peer"]))
        counters = (f"login:ip:{group}", f"login:ip-nick:{group} {key}")
        # Each attempt counts as a failure, on every node, until it is known not to be one.
        reserved: list[tuple[str, str]] = []
        try:
            for counter in counters:
                count, token = await self.store.reserve_attempt(counter, FAILURE_WINDOW)
                reserved.append((counter, token))
                if count > self.max_failures:
                    self.chat.telemetry.limit("login_failures", **who, account=key)
                    raise ChatError(replies.TOO_MANY_FAILURES)
            record = await self.store.get_record(ACCOUNT, key)
            if record is None:
                raise ChatError(replies.NOT_REGISTERED.format(nick=nick))
            if not await self.hasher.verify(record["hash"], password):
                for counter in counters:
                    await self.store.add_failure(counter, FAILURE_WINDOW)
                log.warning("login_failed", **who, account=key)
                raise ChatError(replies.WRONG_PASSWORD.format(nick=nick))
            return record
        finally:
            for counter, token in reserved:
                self.store.release_attempt(counter, token)

    def _grant(self, user: User, key: str, record: Record) -> None:
        user.account = key
        user.operator = self.moderation.is_operator(key, record)
        settings = record.get("settings", {})
        for name in SETTINGS:
            if name in settings:
                user.profile.change(name, bool(settings[name]))
        if "ignored" in record:
            # Keys saved before confusables data are brought to today's form.
            user.profile.ignored = {nick_key(ignored) for ignored in record["ignored"]} - {key}
        if record.get("tz"):
            user.profile.zone = zone_named(record["tz"])
        self.chat.refresh(user)

    async def _take(self, user: User, nick: str, *, ghost: bool) -> None:
        """Take `nick`: as one more session of its account if another connection (here or on
        another node) holds it, or, with `ghost`, after disconnecting that connection."""
        key = nick_key(nick)
        held = await self._held_by_other(user, key)
        if held and not ghost:
            self.chat.add_session(user, nick)
            return
        if held:
            notice = replies.GHOST_NOTICE.format(nick=nick)
            self.store.publish(disconnect_event(f"nick:{key}", notice, replies.GHOST_REASON, spare=user))
            # The holder may be on another node: poll for the nick coming free.
            for _ in range(GHOST_POLLS):
                if not await self._held_by_other(user, key):
                    break
                await asyncio.sleep(GHOST_POLL)
        await self.chat.set_nick(user, nick)

    async def _held_by_other(self, user: User, key: str) -> bool:
        holder = self.chat.nicks.get(key)
        if holder is not None:
            return holder is not user
        return await self.store.remote_nick(key)
