"""Limits on JSON documents read from places we do not control (a repository, a guest).

``json.loads`` takes nesting as deep as the interpreter's stack allows, but everything that later
walks the value recursively (``dataclasses.asdict``, ``json.dumps``, pydantic) fails far sooner,
with RecursionError in the middle of an unrelated command. Checking the depth once, where the
document enters, turns that into the reader's own "malformed" error.
"""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 32
"""Deeper than any document freezeframe writes (a snapshot nests five levels)."""


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether lists and objects in ``value`` nest more than ``limit`` levels (no recursion)."""
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth >= limit:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False
