"""``copy`` and ``init --copy-chunker-params`` through the CLI, on real repositories (local
directories, and once a local one into an S3 bucket of ``rclone serve s3``): the copy restores
byte for byte and keeps the snapshot's metadata; a second copy adds nothing; a related target
that already holds the data adds no data; a wrong source password, a damaged source pack and
unrelated repositories each end with one line, the target still passing ``check --read-data``.
And the service function called directly, with a target whose storage fails half-way."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import random
import subprocess
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest

from ffharness import FAST_INIT, PASSWORD, Cli, is_root, run_freezeframe
from freezeframe.cli.reporting import render_copy
from freezeframe.errors import (
    EXIT_FATAL,
    EXIT_LOCKED,
    EXIT_USAGE,
    EXIT_WRONG_PASSWORD,
    Interrupted,
    StorageError,
    UsageError,
    WrongPassword,
)
from freezeframe.repository.config import ChunkerParams
from freezeframe.repository.crypto import config_mac_key
from freezeframe.repository.locks import RepositoryLock
from freezeframe.repository.repository import Repository
from freezeframe.service.copy import CopyProgress, CopyRequest, copy
from freezeframe.service.reporter import Cancel, SilentReporter
from freezeframe.storage.base import Kind
from freezeframe.storage.faults import Effect, Fault, FaultyStorage
from freezeframe.storage.local import LocalStorage
from servers.base import S3Server
from treeutil import assert_same_tree, build_odd_tree, restored_path

SOURCE_PASSWORD = "the source repository's own password"
# Metadata a copy keeps as it is (``parent`` names a snapshot of the source: it is dropped).
KEPT = ("time", "host", "user", "paths", "tags", "excludes", "tree", "summary", "consistency")


@pytest.fixture
def source_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The source's password in a file the copy reads through FREEZEFRAME_FROM_PASSWORD_FILE;
    every target uses FREEZEFRAME_PASSWORD (another password)."""
    path = tmp_path / "source-password"
    path.write_text(SOURCE_PASSWORD + "\n")
    monkeypatch.setenv("FREEZEFRAME_FROM_PASSWORD_FILE", str(path))
    monkeypatch.delenv("FREEZEFRAME_FROM_PASSWORD", raising=False)
    monkeypatch.delenv("FREEZEFRAME_FROM_REPOSITORY", raising=False)
    return path


@dataclasses.dataclass
class Run:
    """The source repository: ``source("backup", ...)`` runs a command on it (its password)."""

    cli: Cli
    password_file: Path

    @property
    def path(self) -> Path:
        return self.cli.repo

    def __call__(self, *args: str | os.PathLike[str], expect: int | None = 0) -> Any:
        return self.cli("--password-file", self.password_file, *args, expect=expect)


@pytest.fixture
def source(tmp_path: Path, make_cli: Callable[[Path], Cli], source_password: Path) -> Run:
    run = Run(make_cli(tmp_path / "source-repo"), source_password)
    run(*FAST_INIT)
    return run


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Odd names, modes, links and holes, and a few MiB of incompressible data: many blobs."""
    root = tmp_path / "data"
    build_odd_tree(root, root_privileges=is_root())
    rng = random.Random(7)
    for i in range(3):
        (root / f"random-{i}.bin").write_bytes(rng.randbytes(1_500_000 + i * 300_000))
    return root


def _related(make_cli: Callable[[Path], Cli], path: Path, source: Run) -> Cli:
    target = make_cli(path)
    target(*FAST_INIT, "--copy-chunker-params", "--from-repo", source.path)
    return target


def _copy(target: Cli, source: Run, *args: str, expect: int = 0) -> Any:
    return target("copy", "--from-repo", source.path, *args, expect=expect)


def _open(path: Path, password: str = PASSWORD) -> closing[Repository]:
    return closing(Repository.open(LocalStorage(path), password.encode()))


def _stored(repo: Path) -> tuple[int, int]:
    """(packs, bytes) in the data directory."""
    packs = [p for p in (repo / "data").rglob("*") if p.is_file()]
    return len(packs), sum(p.stat().st_size for p in packs)


def _one_line(cli: Cli) -> str:
    lines = cli.stderr.strip().splitlines()
    assert len(lines) == 1, cli.stderr
    assert lines[0].startswith("freezeframe: error: "), cli.stderr
    assert "Traceback" not in cli.stderr
    return lines[0]


def test_init_copy_chunker_params_shares_chunker_and_ids_but_not_the_key(
    source: Run, make_cli: Callable[[Path], Cli], tmp_path: Path
) -> None:
    # A source whose chunker is not the default, so taking it over shows.
    with closing(Repository.open(LocalStorage(source.path), SOURCE_PASSWORD.encode())) as repo:
        odd = ChunkerParams(64 * 1024, 128 * 1024, 1024 * 1024)
        config = dataclasses.replace(repo.config, chunker=odd)
        sealed = config.sealed(config_mac_key(repo.master.encryption_key))
        repo.storage.put(Kind.CONFIG, "config", sealed.to_bytes())
    made = _related(make_cli, tmp_path / "target", source).stdout
    with (
        closing(Repository.open(LocalStorage(source.path), SOURCE_PASSWORD.encode())) as src,
        _open(tmp_path / "target") as dst,  # opens: its config's MAC holds
    ):
        assert json.loads(made)["chunker_params_from"] == src.config.repository_id
        assert dst.config.chunker == odd
        assert dst.master.id_key == src.master.id_key
        assert dst.master.chunker_seed == src.master.chunker_seed
        assert dst.master.encryption_key != src.master.encryption_key
        assert dst.config.repository_id != src.config.repository_id
        assert dst.blob_id(b"same data") == src.blob_id(b"same data")
    # The target's password is its own: the source's does not open it.
    with pytest.raises(WrongPassword):
        Repository.open(LocalStorage(tmp_path / "target"), SOURCE_PASSWORD.encode())


def test_init_from_repo_needs_copy_chunker_params(
    source: Run, make_cli: Callable[[Path], Cli], tmp_path: Path
) -> None:
    target = make_cli(tmp_path / "target")
    target(*FAST_INIT, "--from-repo", source.path, expect=EXIT_USAGE)
    _one_line(target)
    target(*FAST_INIT, "--copy-chunker-params", expect=EXIT_USAGE)
    _one_line(target)
    assert not (tmp_path / "target").exists()


def test_copy_restores_byte_exact_keeps_metadata_and_a_second_copy_adds_nothing(
    source: Run, data: Path, make_cli: Callable[[Path], Cli], tmp_path: Path
) -> None:
    source("backup", data, "--tag", "daily", "--tag", "db", "--host", "web1")
    source("backup", data, "--host", "web1")  # all deduplicated: only the snapshot is new
    target = _related(make_cli, tmp_path / "target", source)

    first = _copy(target, source)
    assert len(first["copied"]) == 2 and first["skipped"] == []
    assert first["blobs_added"] > 10 and first["packs_written"] >= 1
    assert first["bytes_written"] == _stored(tmp_path / "target")[1]
    before = _stored(tmp_path / "target")

    second = _copy(target, source)
    assert second["copied"] == []
    assert [s["snapshot_id"] for s in second["skipped"]] == [
        s["snapshot_id"] for s in first["copied"]
    ]
    assert (second["blobs_added"], second["bytes_added"], second["packs_written"]) == (0, 0, 0)
    assert _stored(tmp_path / "target") == before
    assert len(target("snapshots")) == 2

    originals = {s["id"]: s for s in source("snapshots")}
    for copied in target("snapshots"):
        original = originals[copied["original"]]
        assert {k: copied[k] for k in KEPT} == {k: original[k] for k in KEPT}
        assert copied["consistency"]["achieved"]  # the capture's record came along
    assert {s["original"] for s in target("snapshots")} == set(originals)

    restore = tmp_path / "restore"
    target("restore", first["copied"][0]["snapshot_id"], "--target", restore)
    assert_same_tree(data, restored_path(restore, data))
    target("check", "--read-data")


def test_a_copy_of_a_copy_is_skipped_where_the_original_is(
    source: Run, data: Path, make_cli: Callable[[Path], Cli], tmp_path: Path, monkeypatch: Any
) -> None:
    """A -> B, then B -> C and A -> C: C gets the snapshot once (a copy names the first one)."""
    source("backup", data)
    b = _related(make_cli, tmp_path / "b", source)
    _copy(b, source)
    c = _related(make_cli, tmp_path / "c", source)
    monkeypatch.setenv("FREEZEFRAME_FROM_PASSWORD", PASSWORD)  # B's
    monkeypatch.delenv("FREEZEFRAME_FROM_PASSWORD_FILE")
    monkeypatch.setenv("FREEZEFRAME_FROM_REPOSITORY", str(tmp_path / "b"))
    assert len(c("copy")["copied"]) == 1
    monkeypatch.delenv("FREEZEFRAME_FROM_REPOSITORY")
    monkeypatch.setenv("FREEZEFRAME_FROM_PASSWORD", SOURCE_PASSWORD)
    again = _copy(c, source)
    assert again["copied"] == [] and len(again["skipped"]) == 1


def test_a_related_target_holding_the_data_gets_no_data(
    source: Run, data: Path, make_cli: Callable[[Path], Cli], tmp_path: Path
) -> None:
    target = _related(make_cli, tmp_path / "target", source)
    source("backup", data)
    target("backup", data)  # the same files backed up into the target on its own
    before = _stored(tmp_path / "target")
    result = _copy(target, source)
    assert len(result["copied"]) == 1
    # Every data blob was there (same chunks, same ids); at most a tree differs (atimes).
    assert result["bytes_added"] < 64 * 1024, result
    packs, size = _stored(tmp_path / "target")
    assert size - before[1] < 64 * 1024 and packs - before[0] <= 1
    target("check", "--read-data")


def test_selection_by_id_latest_host_tag_and_path(
    source: Run, data: Path, make_cli: Callable[[Path], Cli], tmp_path: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "f").write_text("other")
    a = source("backup", data, "--host", "h1", "--tag", "a")["snapshot_id"]
    b = source("backup", other, "--host", "h2", "--tag", "b")["snapshot_id"]
    c = source("backup", other, "--host", "h1", "--tag", "b")["snapshot_id"]

    targets = itertools.count()

    def copied(*args: str) -> list[str]:
        target = _related(make_cli, tmp_path / f"target-{next(targets)}", source)
        return [s["source_id"] for s in _copy(target, source, *args)["copied"]]

    assert copied("--host", "h1") == [a, c]
    assert copied("--tag", "b") == [b, c]
    assert copied("--path", str(data)) == [a]
    assert copied("latest") == [c]
    assert copied("latest", "--host", "h2") == [b]
    assert copied(a[:8], b) == [a, b]
    assert copied("--host", "nobody") == []


def test_a_wrong_source_password_is_one_line_and_copies_nothing(
    source: Run, data: Path, make_cli: Callable[[Path], Cli], tmp_path: Path, monkeypatch: Any
) -> None:
    source("backup", data)
    target = _related(make_cli, tmp_path / "target", source)
    monkeypatch.setenv("FREEZEFRAME_FROM_PASSWORD_FILE", str(tmp_path / "wrong"))
    (tmp_path / "wrong").write_text("not it\n")
    _copy(target, source, expect=EXIT_WRONG_PASSWORD)
    line = _one_line(target)
    assert "source repository" in line and "wrong password" in line
    assert "not it" not in target.stderr + target.stdout
    assert target("snapshots") == []


def test_no_source_password_is_a_usage_error(
    source: Run, make_cli: Callable[[Path], Cli], tmp_path: Path, monkeypatch: Any
) -> None:
    target = _related(make_cli, tmp_path / "target", source)
    monkeypatch.delenv("FREEZEFRAME_FROM_PASSWORD_FILE")
    _copy(target, source, expect=EXIT_USAGE)
    assert "--from-password-file" in _one_line(target)


def test_unrelated_repositories_are_refused_with_one_line(
    source: Run, data: Path, make_cli: Callable[[Path], Cli], tmp_path: Path
) -> None:
    source("backup", data)
    target = make_cli(tmp_path / "target")
    target(*FAST_INIT)
    _copy(target, source, expect=EXIT_USAGE)
    assert "init --copy-chunker-params" in _one_line(target)
    assert json.loads(target.stdout)["error"]["code"] == "usage"
    assert target("snapshots") == [] and _stored(tmp_path / "target") == (0, 0)


@pytest.mark.parametrize("held", ["source", "target"])
def test_an_exclusive_lock_on_either_repository_stops_the_copy(
    source: Run, data: Path, make_cli: Callable[[Path], Cli], tmp_path: Path, held: str
) -> None:
    """What a running forget or prune holds: the copy does not start (exit 11, one line)."""
    source("backup", data)
    target = _related(make_cli, tmp_path / "target", source)
    path, password = (
        (source.path, SOURCE_PASSWORD) if held == "source" else (tmp_path / "target", PASSWORD)
    )
    with _open(path, password) as repo, RepositoryLock(repo, exclusive=True):
        _copy(target, source, expect=EXIT_LOCKED)
        assert "locked" in _one_line(target)
    assert target("snapshots") == []


def _flip_middle(pack: Path) -> None:
    raw = bytearray(pack.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    pack.write_bytes(bytes(raw))


def test_a_damaged_source_pack_stops_the_copy_and_the_target_stays_valid(
    source: Run, data: Path, make_cli: Callable[[Path], Cli], tmp_path: Path
) -> None:
    """Two snapshots in one run, the second's new data damaged in the source: the first is
    copied, the second is not, and the target passes check --read-data."""
    first = source("backup", data)["snapshot_id"]
    packs_before = set((source.path / "data").rglob("*"))
    (data / "new.bin").write_bytes(random.Random(3).randbytes(3_000_000))
    second = source("backup", data)["snapshot_id"]
    new_packs = [
        p for p in (source.path / "data").rglob("*") if p.is_file() and p not in packs_before
    ]
    _flip_middle(max(new_packs, key=lambda p: p.stat().st_size))
    target = _related(make_cli, tmp_path / "target", source)

    _copy(target, source, expect=EXIT_FATAL)
    line = _one_line(target)
    assert "source repository" in line and "failed authentication" in line
    assert f"snapshot {second[:8]} was not copied (the 1 copied before it stay)" in line
    assert [s["original"] for s in target("snapshots")] == [first]
    assert target("check", "--read-data")["errors"] == []


def test_service_copy_and_a_failing_target_storage(
    source: Run, data: Path, make_cli: Callable[[Path], Cli], tmp_path: Path
) -> None:
    source("backup", data)
    source("backup", data, "--tag", "second")
    _related(make_cli, tmp_path / "target", source)
    src_path: Path = source.path

    def opened(storage: Any, password: str) -> closing[Repository]:
        return closing(Repository.open(storage, password.encode(), load_index=False))

    # The second pack put fails (the trees', after the data's): the copy stops, and no
    # snapshot names missing data.
    faulty = FaultyStorage(
        LocalStorage(tmp_path / "target"), [Fault("put", Effect.ERROR, kind=Kind.DATA, nth=2)]
    )
    with (
        opened(LocalStorage(src_path), SOURCE_PASSWORD) as src,
        opened(faulty, PASSWORD) as dst,
        pytest.raises(StorageError),
    ):
        copy(src, dst, CopyRequest(), SilentReporter())
    with _open(tmp_path / "target") as dst:
        assert list(dst.list_names(Kind.SNAPSHOTS)) == []
        assert list(dst.list_names(Kind.LOCKS)) == []

    # A cancelled copy (an API call, a stopping agent) stops before committing anything.
    cancel = Cancel()
    cancel.request()
    with (
        opened(LocalStorage(src_path), SOURCE_PASSWORD) as src,
        opened(LocalStorage(tmp_path / "target"), PASSWORD) as dst,
        pytest.raises(Interrupted),
    ):
        copy(src, dst, CopyRequest(), SilentReporter(), cancel)
    with _open(tmp_path / "target") as dst:
        assert list(dst.list_names(Kind.SNAPSHOTS)) == []
        assert list(dst.list_names(Kind.LOCKS)) == []

    with (
        opened(LocalStorage(src_path), SOURCE_PASSWORD) as src,
        opened(LocalStorage(tmp_path / "target"), PASSWORD) as dst,
    ):
        reporter = _Recording()
        outcome = copy(src, dst, CopyRequest(("latest",)), reporter)
        assert [c.source.tags for c in outcome.copied] == [["second"]]
        assert outcome.blobs_added == dst.blobs_added > 0
        # What a terminal shows: the progress object the phase was given, at the end.
        [(name, progress)] = reporter.phases
        assert name == "copy" and isinstance(progress, CopyProgress)
        assert (progress.snapshots_done, progress.blobs_added) == (1, outcome.blobs_added)
        assert f"snapshot 1/1 {outcome.copied[0].source.short_id}" in render_copy(progress, 1.0)
        with pytest.raises(UsageError, match="same repository"):
            copy(src, src, CopyRequest(), SilentReporter())
    target = make_cli(tmp_path / "target")
    target("check", "--read-data")


class _Recording(SilentReporter):
    def __init__(self) -> None:
        super().__init__()
        self.phases: list[tuple[str, object]] = []

    @contextmanager
    def phase(self, name: str, progress: object) -> Iterator[None]:
        self.phases.append((name, progress))
        yield


def test_local_to_s3(
    source: Run,
    data: Path,
    rclone_s3_server: S3Server,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    rclone_s3_server.apply(monkeypatch)
    place = rclone_s3_server.fresh_place()
    source("backup", data, "--tag", "offsite")

    def run(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
        result = run_freezeframe(
            *args, repo=None, json=True, env={"FREEZEFRAME_REPOSITORY": place.location}, timeout=300
        )
        assert result.returncode == 0, (result.stdout, result.stderr)
        return result

    run(*FAST_INIT, "--copy-chunker-params", "--from-repo", source.path)
    first = json.loads(run("copy", "--from-repo", source.path).stdout)
    assert len(first["copied"]) == 1 and first["blobs_added"] > 0
    again = json.loads(run("copy", "--from-repo", source.path).stdout)
    assert again["copied"] == [] and again["packs_written"] == 0
    restore = tmp_path / "restore"
    run("restore", "latest", "--target", restore)
    assert_same_tree(data, restored_path(restore, data))
    run("check", "--read-data")
    assert json.loads(run("snapshots").stdout)[0]["tags"] == ["offsite"]
