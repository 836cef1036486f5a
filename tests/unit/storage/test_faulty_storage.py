"""The fault plan does what it says, on the call it says, and nothing else."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from freezeframe.errors import NotFound, StorageError, TransientStorageError
from freezeframe.storage.base import Kind
from freezeframe.storage.faults import Effect, Fault, FaultyStorage, random_plan
from freezeframe.storage.local import LocalStorage


def _faulty(tmp_path: Path, plan: list[Fault]) -> tuple[FaultyStorage, list[float]]:
    local = LocalStorage(tmp_path / "repo")
    local.create_layout()
    for i in range(4):
        local.put(Kind.INDEX, f"{i}" * 64, b"0123456789")
    slept: list[float] = []
    return FaultyStorage(local, plan, sleep=slept.append), slept


def test_an_error_hits_the_nth_call_of_its_kind_only(tmp_path: Path) -> None:
    storage, _ = _faulty(tmp_path, [Fault("get", Effect.ERROR, kind=Kind.INDEX, nth=3)])
    storage.get(Kind.INDEX, "0" * 64)
    with pytest.raises(NotFound):
        storage.get(Kind.SNAPSHOTS, "0" * 64)  # not counted: another kind
    storage.get(Kind.INDEX, "1" * 64)
    with pytest.raises(StorageError, match=f"injected fault: get index/{'2' * 64} failed") as e:
        storage.get(Kind.INDEX, "2" * 64)
    assert not isinstance(e.value, TransientStorageError)
    storage.get(Kind.INDEX, "3" * 64)  # once only
    assert [(f.call, f.what) for f in storage.fired] == [(3, f"index/{'2' * 64}")]
    assert storage.calls["get"] == 5


def test_a_failed_put_writes_nothing_and_a_lost_reply_writes_all(tmp_path: Path) -> None:
    plan = [Fault("put", Effect.TRANSIENT, times=2), Fault("put", Effect.LOST_REPLY, nth=3)]
    storage, _ = _faulty(tmp_path, plan)
    for _ in range(2):
        with pytest.raises(TransientStorageError, match="timed out"):
            storage.put(Kind.SNAPSHOTS, "a" * 64, b"x")
        assert os.listdir(tmp_path / "repo" / "snapshots") == []
    with pytest.raises(TransientStorageError, match="lost its reply"):
        storage.put(Kind.SNAPSHOTS, "a" * 64, b"x")
    assert os.listdir(tmp_path / "repo" / "snapshots") == ["a" * 64]
    storage.put(Kind.SNAPSHOTS, "b" * 64, b"x")


def test_truncated_reads_and_short_listings(tmp_path: Path) -> None:
    plan = [
        Fault("get", Effect.TRUNCATE, times=None),
        Fault("list", Effect.EMPTY),
        Fault("list", Effect.PARTIAL, nth=2),
    ]
    storage, _ = _faulty(tmp_path, plan)
    assert storage.get(Kind.INDEX, "0" * 64) == b"01234"
    assert storage.get(Kind.INDEX, "0" * 64, 2, 4) == b"23"
    assert list(storage.list(Kind.INDEX)) == []
    assert len(list(storage.list(Kind.INDEX))) == 2
    assert len(list(storage.list(Kind.INDEX))) == 4


def test_slow_calls_wait_then_succeed(tmp_path: Path) -> None:
    storage, slept = _faulty(tmp_path, [Fault("exists", Effect.SLOW, delay=2.5, times=2)])
    assert storage.exists(Kind.INDEX, "0" * 64)
    assert storage.exists(Kind.INDEX, "0" * 64)
    assert storage.exists(Kind.INDEX, "0" * 64)
    assert slept == [2.5, 2.5]


def test_every_operation_can_fail(tmp_path: Path) -> None:
    ops = ["create_layout", "put", "get", "list", "delete", "exists", "remove_stale_temporaries"]
    storage, _ = _faulty(tmp_path, [Fault(op, Effect.ERROR) for op in ops])
    calls = [
        storage.create_layout,
        lambda: storage.put(Kind.INDEX, "9" * 64, b"x"),
        lambda: storage.get(Kind.INDEX, "0" * 64),
        lambda: list(storage.list(Kind.INDEX)),
        lambda: storage.delete(Kind.INDEX, "0" * 64),
        lambda: storage.exists(Kind.INDEX, "0" * 64),
        storage.remove_stale_temporaries,
    ]
    for call in calls:
        with pytest.raises(StorageError) as raised:
            call()
        assert "\n" not in str(raised.value)
    assert len(storage.fired) == len(ops)
    assert sorted(os.listdir(tmp_path / "repo" / "index")) == [f"{i}" * 64 for i in range(4)]


@pytest.mark.parametrize(
    "fault",
    [
        dict(op="rename"),
        dict(op="put", effect=Effect.TRUNCATE),
        dict(op="get", effect=Effect.EMPTY),
        dict(op="get", nth=0),
        dict(op="get", times=0),
    ],
)
def test_impossible_faults_are_refused(fault: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Fault(**fault)  # type: ignore[arg-type]


def test_a_seed_gives_one_plan() -> None:
    assert random_plan(7) == random_plan(7)
    assert random_plan(7) != random_plan(8)
    plan = random_plan(3, count=10, ops=("get", "list"), effects=tuple(Effect))
    assert len(plan) == 10
    assert all(f.op in ("get", "list") for f in plan)
