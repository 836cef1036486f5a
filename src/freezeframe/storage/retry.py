"""Retrying transient storage errors, so a timeout or a busy server does not end a backup that
has run for hours; everything else (a missing object, a full disk) fails at once.

Every call the Protocol makes is safe to repeat: a put is atomic and names are either content
hashes or rewritten whole, so a put retried after a lost reply stores the same object again.
"""

from __future__ import annotations

import builtins
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from freezeframe.errors import TransientStorageError
from freezeframe.storage.base import Kind, ObjectInfo, Storage
from freezeframe.storage.wrapper import StorageWrapper

_T = TypeVar("_T")


@dataclass(frozen=True)
class RetryPolicy:
    """At most ``attempts`` calls in all; the n-th wait (from 0) is drawn from
    [cap/2, cap] with cap = min(max_delay, base_delay * 2**n): exponential, bounded, and
    jittered so that clients failing together do not retry together."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 10.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_delay < 0 or self.max_delay < self.base_delay:
            raise ValueError(f"invalid retry policy {self}")

    def delay(self, retry: int, draw: float) -> float:
        """The wait before retry number ``retry`` (0 is the first), ``draw`` in [0, 1)."""
        cap = min(self.max_delay, self.base_delay * 2.0**retry)
        return cap / 2 + draw * cap / 2


class RetryingStorage(StorageWrapper):
    """Repeats calls that fail with TransientStorageError, waiting per ``policy``; the last
    error is raised when the attempts run out. ``sleep`` and ``draw`` are injectable for tests."""

    def __init__(
        self,
        inner: Storage,
        policy: RetryPolicy | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        draw: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(inner)
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        self._draw = draw

    def _call(self, fn: Callable[[], _T]) -> _T:
        retry = 0
        while True:
            try:
                return fn()
            except TransientStorageError:
                if retry + 1 >= self.policy.attempts:
                    raise
            self._sleep(self.policy.delay(retry, self._draw()))
            retry += 1

    def create_layout(self, *, group_readable: bool = False) -> builtins.list[str]:
        return self._call(lambda: self.inner.create_layout(group_readable=group_readable))

    def put(self, kind: Kind, name: str, data: bytes) -> None:
        self._call(lambda: self.inner.put(kind, name, data))

    def get(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._call(lambda: self.inner.get(kind, name, offset, length))

    def list(self, kind: Kind) -> Iterator[ObjectInfo]:
        # Whole listings are retried: a listing that failed half-way cannot be resumed.
        return iter(self._call(lambda: builtins.list(self.inner.list(kind))))

    def delete(self, kind: Kind, name: str) -> None:
        self._call(lambda: self.inner.delete(kind, name))

    def exists(self, kind: Kind, name: str) -> bool:
        return self._call(lambda: self.inner.exists(kind, name))

    def remove_stale_temporaries(self) -> int:
        return self._call(self.inner.remove_stale_temporaries)
