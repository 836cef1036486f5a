"""A storage that misbehaves on purpose, by a plan written down in advance, so tests and the
bench can show what every operation does when the storage fails half-way (it lives in src/ so
both can use it; nothing in the product stacks it).

A plan is a list of ``Fault``: which operation (and kind) to hit, on which matching call, how
many times, and how::

    FaultyStorage(LocalStorage(path), [
        Fault("get", Effect.TRUNCATE, kind=Kind.DATA, nth=3),
        Fault("put", Effect.TRANSIENT, kind=Kind.INDEX, times=2),
    ])

``random_plan(seed, ...)`` draws a plan from a seed, so a failing draw can be replayed.
"""

from __future__ import annotations

import builtins
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from freezeframe.errors import StorageError, TransientStorageError
from freezeframe.storage.base import Kind, ObjectInfo, Storage
from freezeframe.storage.wrapper import StorageWrapper

_T = TypeVar("_T")

OPS = ("create_layout", "put", "get", "list", "delete", "exists", "remove_stale_temporaries")


class Effect(StrEnum):
    ERROR = "error"
    """StorageError (final) before the call reaches the inner storage: nothing is done."""
    TRANSIENT = "transient"
    """TransientStorageError before the call: nothing is done, a retry may succeed."""
    LOST_REPLY = "lost_reply"
    """The call is done, then TransientStorageError: the caller cannot tell it was."""
    TRUNCATE = "truncate"
    """get returns the first half of the data (a short read that was not reported)."""
    EMPTY = "empty"
    """list yields nothing (an eventually consistent listing, or a lying one)."""
    PARTIAL = "partial"
    """list yields the first half of what is there."""
    SLOW = "slow"
    """The call waits ``delay`` seconds, then is done."""


_ONLY_FOR = {Effect.TRUNCATE: "get", Effect.EMPTY: "list", Effect.PARTIAL: "list"}


@dataclass(frozen=True)
class Fault:
    """Hit the ``nth`` call (from 1) of ``op`` on ``kind`` (None: any kind) and the
    ``times - 1`` matching calls after it (``times`` None: every one from the nth on)."""

    op: str
    effect: Effect = Effect.ERROR
    kind: Kind | None = None
    nth: int = 1
    times: int | None = 1
    delay: float = 0.0

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"unknown storage operation {self.op!r}")
        only = _ONLY_FOR.get(self.effect)
        if only is not None and self.op != only:
            raise ValueError(f"{self.effect} applies to {only}, not {self.op}")
        if self.nth < 1 or (self.times is not None and self.times < 1):
            raise ValueError("nth and times count from 1")

    def hits(self, call: int) -> bool:
        """Whether the ``call``-th matching call (from 1) is hit."""
        return call >= self.nth and (self.times is None or call < self.nth + self.times)


@dataclass(frozen=True)
class Fired:
    """A fault that took effect: on which call, of what."""

    fault: Fault
    call: int
    what: str


class FaultyStorage(StorageWrapper):
    """Carries out ``plan`` over ``inner``; ``fired`` records every fault that took effect and
    ``calls`` counts the calls of each operation (with no plan it is a probe for tests)."""

    def __init__(
        self,
        inner: Storage,
        plan: Sequence[Fault] = (),
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(inner)
        self.plan = builtins.list(plan)
        self.fired: builtins.list[Fired] = []
        self.calls: Counter[str] = Counter()
        self._sleep = sleep
        self._counts = [0] * len(self.plan)
        self._lock = threading.Lock()

    def _due(self, op: str, kind: Kind | None, what: str) -> builtins.list[Fault]:
        """Count this call for every fault it matches; the faults that hit it."""
        due = []
        with self._lock:
            self.calls[op] += 1
            for i, fault in enumerate(self.plan):
                if fault.op != op or (fault.kind is not None and fault.kind is not kind):
                    continue
                self._counts[i] += 1
                if fault.hits(self._counts[i]):
                    due.append(fault)
                    self.fired.append(Fired(fault, self._counts[i], what))
        return due

    def _run(
        self, op: str, kind: Kind | None, what: str, fn: Callable[[], _T]
    ) -> tuple[_T, frozenset[Effect]]:
        """Carry out the call with the faults due on it; its result and their effects (for
        what only the caller can do to the result)."""
        due = self._due(op, kind, what)
        effects = frozenset(fault.effect for fault in due)
        for fault in due:
            if fault.effect is Effect.SLOW:
                self._sleep(fault.delay)
        if Effect.ERROR in effects:
            raise StorageError(f"injected fault: {op} {what} failed")
        if Effect.TRANSIENT in effects:
            raise TransientStorageError(f"injected fault: {op} {what} timed out")
        result = fn()
        if Effect.LOST_REPLY in effects:
            raise TransientStorageError(f"injected fault: {op} {what} lost its reply")
        return result, effects

    def create_layout(self, *, group_readable: bool = False) -> builtins.list[str]:
        notes, _ = self._run(
            "create_layout",
            None,
            self.location,
            lambda: self.inner.create_layout(group_readable=group_readable),
        )
        return notes

    def put(self, kind: Kind, name: str, data: bytes) -> None:
        self._run("put", kind, f"{kind.value}/{name}", lambda: self.inner.put(kind, name, data))

    def get(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        what = f"{kind.value}/{name}"
        data, effects = self._run(
            "get", kind, what, lambda: self.inner.get(kind, name, offset, length)
        )
        return data[: len(data) // 2] if Effect.TRUNCATE in effects else data

    def list(self, kind: Kind) -> Iterator[ObjectInfo]:
        listed, effects = self._run(
            "list", kind, kind.value, lambda: builtins.list(self.inner.list(kind))
        )
        if Effect.EMPTY in effects:
            return iter(())
        if Effect.PARTIAL in effects:
            return iter(listed[: len(listed) // 2])
        return iter(listed)

    def delete(self, kind: Kind, name: str) -> None:
        self._run("delete", kind, f"{kind.value}/{name}", lambda: self.inner.delete(kind, name))

    def exists(self, kind: Kind, name: str) -> bool:
        what = f"{kind.value}/{name}"
        found, _ = self._run("exists", kind, what, lambda: self.inner.exists(kind, name))
        return found

    def remove_stale_temporaries(self) -> int:
        removed, _ = self._run(
            "remove_stale_temporaries", None, self.location, self.inner.remove_stale_temporaries
        )
        return removed


def random_plan(
    seed: int,
    *,
    count: int = 3,
    ops: Sequence[str] = ("get", "put", "list"),
    effects: Sequence[Effect] = (Effect.ERROR, Effect.TRANSIENT),
    max_nth: int = 20,
) -> builtins.list[Fault]:
    """``count`` faults drawn from ``seed``: the same seed gives the same plan."""
    rng = random.Random(seed)
    plan: builtins.list[Fault] = []
    while len(plan) < count:
        op, effect = rng.choice(ops), rng.choice(effects)
        if _ONLY_FOR.get(effect, op) != op:
            continue
        plan.append(Fault(op, effect, nth=rng.randint(1, max_nth)))
    return plan
