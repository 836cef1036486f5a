"""Rate limits: the bytes moved per second stay at the limit, measured on an injected clock
(each sleep advances it), so the tests neither wait nor depend on the machine's speed."""

from __future__ import annotations

from pathlib import Path

import pytest

from freezeframe.storage.base import Kind
from freezeframe.storage.local import LocalStorage
from freezeframe.storage.ratelimit import RateLimitedStorage, RateLimits, TokenBucket

MiB = 1024 * 1024


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _storage(tmp_path: Path, limits: RateLimits, clock: FakeClock) -> RateLimitedStorage:
    local = LocalStorage(tmp_path / "repo")
    local.create_layout()
    return RateLimitedStorage(local, limits, clock=clock, sleep=clock.sleep)


def test_uploads_run_at_the_limit(tmp_path: Path) -> None:
    clock = FakeClock()
    storage = _storage(tmp_path, RateLimits(upload=2 * MiB), clock)
    start = clock()
    for i in range(20):
        storage.put(Kind.DATA, f"{i:02x}" + "0" * 62, bytes(MiB // 2))
    elapsed = clock() - start
    # 10 MiB at 2 MiB/s, less the first second's burst (2 MiB): 4 s.
    assert 4.0 - 1e-6 <= elapsed <= 4.0 + 1e-6
    assert 10 * MiB / elapsed <= 2 * MiB * 1.25 + 1  # within the burst of the limit


def test_downloads_have_their_own_limit(tmp_path: Path) -> None:
    clock = FakeClock()
    storage = _storage(tmp_path, RateLimits(upload=None, download=MiB), clock)
    for i in range(4):
        storage.put(Kind.DATA, f"{i:02x}" + "0" * 62, bytes(MiB))
    assert clock.slept == []  # uploads are unlimited
    for i in range(4):
        assert len(storage.get(Kind.DATA, f"{i:02x}" + "0" * 62)) == MiB
        storage.get(Kind.DATA, f"{i:02x}" + "0" * 62, 0, MiB // 4)
    # 5 MiB at 1 MiB/s less a burst of 1 MiB.
    assert clock.now - 1000.0 == pytest.approx(4.0)


def test_an_idle_link_refills_only_up_to_the_burst(tmp_path: Path) -> None:
    clock = FakeClock()
    bucket = TokenBucket(100.0, clock=clock, sleep=clock.sleep)
    clock.now += 3600  # an hour idle earns one second's burst, no more
    bucket.take(100)
    assert clock.slept == []
    bucket.take(300)
    assert clock.slept == [pytest.approx(3.0)]


def test_an_object_larger_than_the_burst_passes_at_the_rate(tmp_path: Path) -> None:
    clock = FakeClock()
    bucket = TokenBucket(10.0, burst=5.0, clock=clock, sleep=clock.sleep)
    bucket.take(105)
    assert clock.slept == [pytest.approx(10.0)]
    bucket.take(10)  # the debt was paid by the wait, not twice
    assert clock.slept[-1] == pytest.approx(1.0)


def test_unlimited_is_no_wrapper_cost(tmp_path: Path) -> None:
    clock = FakeClock()
    storage = _storage(tmp_path, RateLimits(), clock)
    storage.put(Kind.INDEX, "a" * 64, bytes(10 * MiB))
    assert storage.get(Kind.INDEX, "a" * 64) == bytes(10 * MiB)
    assert clock.slept == []


@pytest.mark.parametrize("rate", [0.0, -1.0])
def test_a_limit_must_be_positive(rate: float) -> None:
    with pytest.raises(ValueError):
        RateLimits(upload=rate)
