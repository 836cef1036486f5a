"""Limiting the bytes moved to and from the storage per second, so a backup over a shared link
leaves room for everyone else (upload and download limited separately, as restic's)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from freezeframe.storage.base import Kind, Storage
from freezeframe.storage.wrapper import StorageWrapper


@dataclass(frozen=True)
class RateLimits:
    """Bytes per second; None is unlimited."""

    upload: float | None = None
    download: float | None = None

    def __post_init__(self) -> None:
        for rate in (self.upload, self.download):
            if rate is not None and not rate > 0:
                raise ValueError(f"a rate limit must be positive, not {rate}")


class TokenBucket:
    """Allows ``rate`` tokens per second on average and bursts of up to ``burst`` (one second's
    worth by default). A request larger than what is left goes into debt and waits it off, so an
    object larger than the burst still passes, at the rate."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else rate
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._last = clock()
        self._lock = threading.Lock()

    def take(self, amount: int) -> None:
        """Take ``amount`` tokens, sleeping as long as the bucket is in debt for them."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= amount
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)  # outside the lock: the next caller queues behind the debt


class RateLimitedStorage(StorageWrapper):
    """Uploads (puts) and downloads (gets) each pass through their own bucket."""

    def __init__(
        self,
        inner: Storage,
        limits: RateLimits,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(inner)
        self.limits = limits
        self._up = _bucket(limits.upload, clock, sleep)
        self._down = _bucket(limits.download, clock, sleep)

    def put(self, kind: Kind, name: str, data: bytes) -> None:
        if self._up is not None:
            self._up.take(len(data))
        self.inner.put(kind, name, data)

    def get(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        data = self.inner.get(kind, name, offset, length)
        if self._down is not None:
            self._down.take(len(data))  # the size is known only once read
        return data


def _bucket(
    rate: float | None, clock: Callable[[], float], sleep: Callable[[float], None]
) -> TokenBucket | None:
    return None if rate is None else TokenBucket(rate, clock=clock, sleep=sleep)
