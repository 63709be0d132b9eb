"""Long answers as lines a client can take: lists wrapped into short lines, and paged.

One `rooms` or `who` answer could otherwise be a single line of hundreds of kilobytes, which
cuts its asker off for a full output queue (and no terminal shows it usefully anyway).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Items per page: a page of room names or nicks is then a few KiB.
PAGE_ITEMS = 100
# Characters per line before the list goes on in the next one.
LINE_CHARS = 400
CONTINUED = "***  "


@dataclass(frozen=True, slots=True)
class Page:
    number: int
    count: int
    items: Sequence[str]

    @property
    def last(self) -> bool:
        return self.number >= self.count


def page_count(items: Sequence[str], size: int = PAGE_ITEMS) -> int:
    return max(1, -(-len(items) // size))


def page_of(items: Sequence[str], number: int, size: int = PAGE_ITEMS) -> Page | None:
    """Page `number` (from 1) of `items`, or None if there is no such page."""
    count = page_count(items, size)
    if not 1 <= number <= count:
        return None
    return Page(number, count, items[(number - 1) * size : number * size])


def wrap(head: str, items: Sequence[str], tail: str = "", width: int = LINE_CHARS) -> list[str]:
    """`head`, then `items` joined with ", ", then `tail`, in lines of about `width`
    characters: a line breaks only between items, and the next goes on after CONTINUED."""
    lines: list[str] = []
    line, fresh = head, True
    for at, item in enumerate(items):
        text = item + ("," if at < len(items) - 1 else "")
        if not fresh and len(line) + 1 + len(text) > width:
            lines.append(line)
            line = CONTINUED
        line, fresh = f"{line} {text}", False
    lines.append(line + tail)
    return lines
