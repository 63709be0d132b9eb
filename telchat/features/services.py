"""The services a command may use beside the chat itself, built once per server."""

from __future__ import annotations

from dataclasses import dataclass

from telchat.chat.rooms import Chat
from telchat.config import Config
from telchat.features.accounts import Accounts, Hasher
from telchat.features.continuity import Continuity
from telchat.features.mailbox import Mailbox
from telchat.features.moderation import Moderation
from telchat.features.search import Search
from telchat.features.social import Social
from telchat.rules.names import nick_key


@dataclass(frozen=True, slots=True)
class Services:
    accounts: Accounts
    moderation: Moderation
    social: Social
    mailbox: Mailbox
    continuity: Continuity
    search: Search


def operator_keys(operators: str) -> frozenset[str]:
    return frozenset(nick_key(nick.strip()) for nick in operators.split(",") if nick.strip())


def make_services(chat: Chat, config: Config) -> Services:
    hasher = Hasher(
        config.argon2_time_cost, config.argon2_memory_kib, config.argon2_parallelism, config.hash_concurrency
    )
    moderation = Moderation(chat, operator_keys(config.operators))
    accounts = Accounts(chat, moderation, hasher, config.login_failures)
    # Registered in this order, they run at login in this order: what waited, then the rooms.
    mailbox = Mailbox(chat, accounts, config.mail_max, config.mail_per_sender)
    continuity = Continuity(chat, accounts, config.catchup_max, config.marker_flush)
    return Services(accounts, moderation, Social(chat, accounts), mailbox, continuity, Search(chat))
