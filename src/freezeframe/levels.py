"""The consistency levels a capture reaches, in order: ``none`` < ``crash`` < ``filesystem`` <
``application``. The one definition of their names and their order; a level is a ``str`` (a
``StrEnum``), so it is written to JSON, the CLI and the plans file as its name.

- ``none``: the files are read live;
- ``crash``: one instant, as a power cut would leave it (an atomic snapshot);
- ``filesystem``: each file system at rest for its snapshot (frozen, or its writers paused);
- ``application``: the applications themselves held (quiesced) across the snapshots.

A bottom layer: imports nothing of freezeframe but ``errors``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final, Literal, TypeAlias

from freezeframe.errors import UsageError

AUTO: Final = "auto"  # asked for instead of a level: the highest every source reaches


class Level(StrEnum):
    """Ordered by rank (``Level.CRASH < Level.FILESYSTEM``); equal to, and hashed as, its name
    (``Level.CRASH == "crash"``). Comparing by order with a plain string is a TypeError: it
    would otherwise compare the names alphabetically."""

    NONE = "none"
    CRASH = "crash"
    FILESYSTEM = "filesystem"
    APPLICATION = "application"

    @property
    def rank(self) -> int:
        """0 for ``none`` ... 3 for ``application``."""
        return _RANK[self]

    @property
    def at_rest(self) -> bool:
        """Whether the file systems are at rest for their snapshots (``filesystem`` and up)."""
        return self.rank >= _RANK[Level.FILESYSTEM]

    @classmethod
    def parse(cls, text: str) -> Level:
        """The level named ``text``; UsageError for any other text (``auto`` too)."""
        try:
            return cls(text)
        except ValueError:
            raise UsageError(f"unknown consistency level {text!r}") from None

    @classmethod
    def recorded(cls, text: object) -> Level:
        """The level a record (a snapshot's ``achieved``, a child's JSON) names; ``none`` for
        anything else, so a record never claims more than it proves."""
        return cls(text) if isinstance(text, str) and text in _RANK else cls.NONE

    @classmethod
    def highest(cls) -> Level:
        return cls.APPLICATION

    @classmethod
    def lowest(cls) -> Level:
        return cls.NONE

    @classmethod
    def ascending(cls) -> tuple[Level, ...]:
        """``none`` first."""
        return tuple(cls)

    @classmethod
    def descending(cls) -> tuple[Level, ...]:
        """``application`` first, as ``doctor`` lists them."""
        return tuple(reversed(cls))

    @classmethod
    def choices(cls) -> list[str]:
        """What may be asked for (``--consistency``, a plan's ``consistency``): ``auto``, then
        the levels from the highest down."""
        return [AUTO, *(level.value for level in cls.descending())]

    def _other(self, other: object) -> Level:
        if not isinstance(other, Level):
            raise TypeError(f"a consistency level compares only with a Level, not {other!r}")
        return other

    def __lt__(self, other: object) -> bool:
        return self.rank < self._other(other).rank

    def __le__(self, other: object) -> bool:
        return self.rank <= self._other(other).rank

    def __gt__(self, other: object) -> bool:
        return self.rank > self._other(other).rank

    def __ge__(self, other: object) -> bool:
        return self.rank >= self._other(other).rank


_RANK: Final[dict[str, int]] = {level.value: rank for rank, level in enumerate(Level)}
# What a capture is asked for: a level, or the highest reachable.
Requested: TypeAlias = Level | Literal["auto"]


def parse_requested(text: str) -> Requested:
    """``auto`` or a level; UsageError for anything else."""
    return AUTO if text == AUTO else Level.parse(text)
