"""The commands around backup and restore: keys, forget, diff, stats, locks, --json errors."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ffharness import Cli
from freezeframe.repository.locks import RepositoryLock
from freezeframe.repository.repository import Repository
from freezeframe.repository.snapshot import list_snapshots, save_snapshot
from freezeframe.storage.local import LocalStorage


def _open(repo: Path) -> Repository:
    return Repository.open(LocalStorage(repo), os.environ["FREEZEFRAME_PASSWORD"].encode())


def test_keys_add_list_passwd_remove(repo: Path, cli: Cli, tmp_path: Path) -> None:
    """Several passwords open one repository; a removed password no longer does."""
    second = tmp_path / "second.pw"
    second.write_text("second secret\n")
    added = cli("key", "add", "--new-password-file", second)
    keys = cli("key", "list")
    assert len(keys) == 2 and sum(k["current"] for k in keys) == 1
    assert len(cli("--password-file", second, "key", "list")) == 2
    third = tmp_path / "third.pw"
    third.write_text("third secret\n")
    cli("--password-file", second, "key", "passwd", "--new-password-file", third)
    out = cli("--password-file", second, "snapshots", expect=12)
    assert out["error"]["code"] == "wrong_password"
    assert len(cli("--password-file", third, "key", "list")) == 2
    original = next(k["id"] for k in cli("key", "list") if k["current"])
    refused = cli("key", "remove", original[:8], expect=2)
    assert "in use" in refused["error"]["message"]
    cli("--password-file", third, "key", "remove", original[:8])
    assert cli("snapshots", expect=12)["error"]["code"] == "wrong_password"
    assert added["id"] != original


def test_forget_applies_the_policy_per_host_and_paths(repo: Path, cli: Cli, tmp_path: Path) -> None:
    """A synthetic history of 40 daily snapshots plus today's: keep-last 2 + keep-weekly 3 keeps
    exactly the newest two and the newest of each of the last three ISO weeks."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data")
    cli("backup", src)
    r = _open(repo)
    (template,) = list_snapshots(r)
    start = datetime(2026, 1, 1, 12, tzinfo=UTC)
    for day in range(40):
        template.time = start + timedelta(days=day)
        save_snapshot(r, template)
    cli("forget", "--keep-last", "99", "--dry-run")  # nothing to do, nothing changes
    assert len(cli("snapshots")) == 41
    result = cli("forget", "--keep-last", "2", "--keep-weekly", "3")
    kept = {s["time"][:10] for s in cli("snapshots")}
    assert len(result["removed"]) == 41 - len(cli("snapshots"))
    today = datetime.now(UTC).date().isoformat()
    # last 2: today's real backup and Monday 2026-02-09; weekly 3: today's week, the week of
    # 02-09, and the week before it, whose newest snapshot is Sunday 2026-02-08.
    assert kept == {today, "2026-02-09", "2026-02-08"}


def test_forget_without_a_policy_refuses(repo: Path, cli: Cli) -> None:
    out = cli("forget", expect=2)
    assert out["error"]["code"] == "usage"


def test_forget_prune_then_check(repo: Path, cli: Cli, tmp_path: Path) -> None:
    """Forgetting a snapshot and pruning frees its unique data; what remains checks clean and
    restores."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "gone.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    cli("backup", src)
    (src / "gone.bin").unlink()
    (src / "kept.bin").write_bytes(os.urandom(1024 * 1024))
    cli("backup", src)
    before = sum(f.stat().st_size for f in repo.rglob("*") if f.is_file())
    cli("forget", "--keep-last", "1", "--prune")
    after = sum(f.stat().st_size for f in repo.rglob("*") if f.is_file())
    assert after < before - 2 * 1024 * 1024
    assert cli("check", "--read-data")["ok"]
    cli("restore", "latest", "--target", tmp_path / "out")
    restored = tmp_path / "out" / str(src).lstrip("/")
    assert (restored / "kept.bin").read_bytes() == (src / "kept.bin").read_bytes()


def test_diff_lists_changes(repo: Path, cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "same").write_bytes(b"same")
    (src / "changes").write_bytes(b"one")
    (src / "goes").write_bytes(b"bye")
    first = cli("backup", src)["snapshot_id"]
    (src / "changes").write_bytes(b"two")
    (src / "goes").unlink()
    (src / "new").write_bytes(b"hi")
    second = cli("backup", src)["snapshot_id"]
    changes = {(c["path"], c["change"]) for c in cli("diff", first[:8], second[:8])["changes"]}
    assert (str(src / "changes"), "modified") in changes
    assert (str(src / "goes"), "removed") in changes
    assert (str(src / "new"), "added") in changes
    assert not [c for c in changes if c[0] == str(src / "same")]


def test_stats_reports_sizes(repo: Path, cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "text").write_bytes(b"compressible text " * 100_000)
    cli("backup", src)
    stats = cli("stats")
    assert stats["snapshots"] == 1
    assert stats["stored_bytes"] < stats["raw_bytes"]


def test_a_held_exclusive_lock_blocks_backup_until_unlocked(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    """A live lock blocks with a clear message; a stale one (dead process) is ignored; unlock
    --remove-all clears a live one."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    r = _open(repo)
    with RepositoryLock(r, exclusive=True):
        out = cli("backup", src, expect=11)
        assert out["error"]["code"] == "locked"
        assert "unlock" in out["error"]["message"]
        assert cli("unlock")["removed"] == []  # the holder is alive: not stale
        assert len(cli("unlock", "--remove-all")["removed"]) == 1
        cli("backup", src)


def test_usage_errors_exit_2_without_traceback(repo: Path, cli: Cli) -> None:
    cli("backup", json=False, expect=2)
    assert "Traceback" not in cli.stderr
    cli("no-such-command", json=False, expect=2)


def test_missing_repository_is_one_clear_error(cli: Cli, tmp_path: Path) -> None:
    out = cli("snapshots", expect=10)
    assert out["error"]["code"] == "repository_not_found"
    assert cli.stderr.count("\n") == 1


def test_prune_removes_temporaries_left_by_crashed_writers(repo: Path, cli: Cli) -> None:
    leftover = repo / "data" / "ab" / ".abcd.tmp-999-1"
    leftover.write_bytes(b"half a pack")
    cli("prune")
    assert not leftover.exists()
