"""Plain data for a server upgrade's state (telchat/upgrade.py), which thousands of session
records make large: every key written is written, read and parsed again within the pause."""

from __future__ import annotations

from typing import Any


def sparse(state: dict[str, Any], *optional: str) -> dict[str, Any]:
    """`state` without those of its `optional` keys whose value is empty (None, False, 0, ""
    or an empty collection); whoever reads it takes a key left out as that empty value."""
    for name in optional:
        if not state[name]:
            del state[name]
    return state
