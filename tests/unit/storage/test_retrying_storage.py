"""Retries: transient errors are retried with bounded, jittered exponential waits; final errors
and missing objects are not; a put retried after a lost reply still leaves one whole object."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from freezeframe.errors import NotFound, StorageError, TransientStorageError
from freezeframe.storage.base import Kind
from freezeframe.storage.faults import Effect, Fault, FaultyStorage
from freezeframe.storage.local import LocalStorage
from freezeframe.storage.retry import RetryingStorage, RetryPolicy

NAME = "ab" + "0" * 62


def _stack(
    tmp_path: Path, plan: list[Fault], policy: RetryPolicy, draw: float = 0.5
) -> tuple[RetryingStorage, FaultyStorage, list[float]]:
    local = LocalStorage(tmp_path / "repo")
    local.create_layout()
    local.put(Kind.DATA, NAME, b"0123456789")
    faulty = FaultyStorage(local, plan)
    waits: list[float] = []
    return RetryingStorage(faulty, policy, sleep=waits.append, draw=lambda: draw), faulty, waits


def test_transient_errors_are_retried_with_growing_bounded_waits(tmp_path: Path) -> None:
    policy = RetryPolicy(attempts=6, base_delay=1.0, max_delay=4.0)
    storage, faulty, waits = _stack(tmp_path, [Fault("get", Effect.TRANSIENT, times=5)], policy)
    assert storage.get(Kind.DATA, NAME, 2, 3) == b"234"
    assert faulty.calls["get"] == 6
    # cap = min(4, 1 * 2**n); the wait is drawn from [cap/2, cap]: 0.5 gives three quarters.
    assert waits == [0.75, 1.5, 3.0, 3.0, 3.0]


@pytest.mark.parametrize("draw", [0.0, 0.999999])
def test_each_wait_stays_within_half_to_all_of_its_cap(tmp_path: Path, draw: float) -> None:
    policy = RetryPolicy(attempts=8, base_delay=0.1, max_delay=2.0)
    storage, _, waits = _stack(tmp_path, [Fault("list", Effect.TRANSIENT, times=7)], policy, draw)
    assert [i.name for i in storage.list(Kind.DATA)] == [NAME]
    caps = [min(2.0, 0.1 * 2**n) for n in range(7)]
    assert all(cap / 2 <= wait <= cap for wait, cap in zip(waits, caps, strict=True))
    assert sum(waits) <= 2.0 * 7


def test_the_last_transient_error_is_raised_when_attempts_run_out(tmp_path: Path) -> None:
    policy = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.01)
    storage, faulty, waits = _stack(tmp_path, [Fault("put", Effect.TRANSIENT, times=None)], policy)
    with pytest.raises(TransientStorageError, match="injected fault: put index/") as raised:
        storage.put(Kind.INDEX, "c" * 64, b"x")
    assert "\n" not in str(raised.value)
    assert faulty.calls["put"] == 3
    assert len(waits) == 2
    assert not (tmp_path / "repo" / "index" / ("c" * 64)).exists()


def test_final_errors_are_not_retried(tmp_path: Path) -> None:
    policy = RetryPolicy(attempts=5, base_delay=0.01, max_delay=0.01)
    storage, faulty, waits = _stack(tmp_path, [Fault("delete", Effect.ERROR)], policy)
    with pytest.raises(StorageError) as raised:
        storage.delete(Kind.DATA, NAME)
    assert not isinstance(raised.value, TransientStorageError)
    assert (faulty.calls["delete"], waits) == (1, [])


def test_a_missing_object_passes_through_at_once(tmp_path: Path) -> None:
    storage, faulty, waits = _stack(tmp_path, [], RetryPolicy(attempts=5))
    with pytest.raises(NotFound):
        storage.get(Kind.SNAPSHOTS, "f" * 64)
    assert (faulty.calls["get"], waits) == (1, [])


def test_a_put_retried_after_a_lost_reply_leaves_one_whole_object(tmp_path: Path) -> None:
    policy = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.01)
    storage, faulty, _ = _stack(tmp_path, [Fault("put", Effect.LOST_REPLY)], policy)
    storage.put(Kind.SNAPSHOTS, "d" * 64, b"whole snapshot")
    assert faulty.calls["put"] == 2
    assert storage.get(Kind.SNAPSHOTS, "d" * 64) == b"whole snapshot"
    assert os.listdir(tmp_path / "repo" / "snapshots") == ["d" * 64]  # no temporary left


def test_a_busy_local_file_system_is_transient_and_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = LocalStorage(tmp_path / "repo")
    local.create_layout()
    real_fsync, failures = os.fsync, [errno.EAGAIN]

    def flaky_fsync(fd: int) -> None:
        if failures:
            raise OSError(failures.pop(), os.strerror(errno.EAGAIN))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", flaky_fsync)
    waits: list[float] = []
    RetryingStorage(local, RetryPolicy(attempts=2), sleep=waits.append).put(
        Kind.INDEX, "e" * 64, b"x"
    )
    assert local.get(Kind.INDEX, "e" * 64) == b"x"
    assert len(waits) == 1
    assert os.listdir(tmp_path / "repo" / "index") == ["e" * 64]


def test_a_full_local_disk_is_final(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = LocalStorage(tmp_path / "repo")
    local.create_layout()

    def full(_fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageError, match="No space left on device") as raised:
        local.put(Kind.INDEX, "e" * 64, b"x")
    assert not isinstance(raised.value, TransientStorageError)


@pytest.mark.parametrize(
    "policy",
    [dict(attempts=0), dict(base_delay=-1.0), dict(base_delay=2.0, max_delay=1.0)],
)
def test_nonsense_policies_are_refused(policy: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**policy)  # type: ignore[arg-type]
