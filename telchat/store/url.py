"""`--store URL` -> a Store: memory://, sqlite:///PATH, redis://HOST:PORT/DB."""

from __future__ import annotations

from urllib.parse import urlsplit

from telchat.store.base import MemoryStore, Store, StoreError
from telchat.store.sqlite import SqliteStore

SCHEMES = ("memory://", "sqlite:///PATH", "redis://HOST:PORT/DB")


def make_store(url: str, keep: int, node_ttl: float = 15.0) -> Store:
    """Build (not open) the store `url` names; raise StoreError for a bad URL."""
    parts = urlsplit(url)
    if parts.scheme == "memory" and not (parts.netloc or parts.path):
        return MemoryStore(keep)
    if parts.scheme == "sqlite" and not parts.netloc and parts.path not in ("", "/"):
        # sqlite:///telchat.db is relative to the working directory; sqlite:////data/x.db absolute.
        return SqliteStore(parts.path[1:], keep)
    if parts.scheme == "redis":
        from telchat.store.redis import RedisStore

        return RedisStore(url, keep, node_ttl)
    raise StoreError(f"unsupported store URL {url!r}; use one of: {', '.join(SCHEMES)}")
