"""Defects a hostile tester found, each pinned: loose modes under a permissive umask, an
unauthenticated config, restores that looked complete, argument errors without a JSON document,
bad patterns and paths, and a late SIGTERM that ended the process by the signal."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ffharness import (
    FAST_INIT,
    PASSWORD,
    WITH_DEFAULT_SIGINT,
    Cli,
    is_root,
    privileged_required,
    run_freezeframe,
    subprocess_argv,
)
from freezeframe.repository.keys import KeyFile
from freezeframe.repository.repository import add_key, unlock_master_key
from freezeframe.storage.base import Kind
from freezeframe.storage.local import LocalStorage
from fsfixtures import shared_workdir

pytestmark = pytest.mark.timeout(120)

KiB = 1024
NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--")


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.strip().splitlines() if "warning:" not in line]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("freezeframe: error:"), lines[0]
    return lines[0]


def _modes(root: Path) -> dict[str, int]:
    modes = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        modes[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return modes


def _tree(root: Path, files: int = 5, size: int = 100 * KiB) -> Path:
    rng = random.Random(11)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (root / f"f{i}.bin").write_bytes(rng.randbytes(size))
    return root


@pytest.fixture
def shared() -> Iterator[Path]:
    with shared_workdir("ffperm") as work:
        yield work


# -- modes ------------------------------------------------------------------------------------


def test_a_permissive_umask_still_makes_a_private_repository(shared: Path) -> None:
    """Under umask 000 every directory is 0700 and every file 0600, so another user can neither
    list nor delete snapshots (before, `snapshots/` was 0777 and `nobody` emptied it)."""
    if not is_root():
        privileged_required("needs root to act as another user")
    repo = shared / "repo"
    source = _tree(shared / "src")
    umask = ("sh", "-c", 'umask 000; exec "$@"', "sh")
    for args in ((*FAST_INIT,), ("backup", str(source))):
        done = run_freezeframe(*args, repo=repo, prefix=umask)
        assert done.returncode == 0, done.stderr
    modes = _modes(repo)
    loose = {p: oct(m) for p, m in modes.items() if m & 0o077}
    assert loose == {}
    assert modes["."] == 0o700 and modes["snapshots"] == 0o700 and modes["config"] == 0o600
    snapshot = next((repo / "snapshots").iterdir())
    attempt = subprocess.run([*NOBODY, "rm", "-f", str(snapshot)], capture_output=True, check=False)
    assert attempt.returncode != 0 and snapshot.exists()
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "freezeframe"
    cache_modes = {p: oct(m) for p, m in _modes(cache).items() if m & 0o077}
    assert cache_modes == {}


def test_a_group_readable_repository_stays_group_readable(shared: Path) -> None:
    """`init --group-readable` gives 0750/0640, and later writers follow the config's mode
    whatever their umask (as restic infers it)."""
    repo = shared / "repo"
    source = _tree(shared / "src", files=2)
    assert run_freezeframe(*FAST_INIT, "--group-readable", repo=repo).returncode == 0
    strict = ("sh", "-c", 'umask 077; exec "$@"', "sh")
    assert run_freezeframe("backup", str(source), repo=repo, prefix=strict).returncode == 0
    modes = _modes(repo)
    for path, mode in modes.items():
        wanted = 0o750 if (repo / path).is_dir() else 0o640
        assert mode == wanted, (path, oct(mode))


def test_check_warns_about_loose_modes_and_init_tightens_a_loose_directory(
    tmp_path: Path, make_cli: Callable[[Path], Cli]
) -> None:
    place = tmp_path / "repo"
    place.mkdir()
    place.chmod(0o777)
    cli = make_cli(place)
    cli(*FAST_INIT)
    assert "was mode 0777" in cli.stderr
    assert stat.S_IMODE(place.stat().st_mode) == 0o700
    (place / "keys").chmod(0o755)
    result = cli("check")
    assert result["ok"]
    assert any(w.endswith("keys is mode 0755 (a repository's is 0700)") for w in result["warnings"])


def test_the_plans_history_is_private(tmp_path: Path) -> None:
    from freezeframe.plans.history import History

    old = os.umask(0)
    try:
        History(str(tmp_path / "state" / "history.db"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "state" / "history.db").stat().st_mode) == 0o600


# -- the config -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("original", "tampered"),
    [
        (b'"avg_size": 524288', b'"avg_size": 524688'),  # accepted before: changed the chunks
        (b'"min_size": 262144', b'"min_size": 962144'),  # before: every backup failed internally
        (b'"pack_size": 16777216', b'"pack_size": 16777217'),
    ],
)
def test_a_tampered_config_is_refused_at_open_and_named_by_check(
    repo: Path, cli: Cli, original: bytes, tampered: bytes
) -> None:
    config = repo / "config"
    config.write_bytes(config.read_bytes().replace(original, tampered))
    for command in (("backup", str(repo.parent)), ("check", "--read-data"), ("snapshots",)):
        failed = cli(*command, expect=1)
        assert failed["error"]["code"] == "integrity"
        assert "repository config" in failed["error"]["message"]
        _one_error_line(cli.stderr)


def test_a_version_1_config_is_read_with_a_warning_and_migrated(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    """A repository written before the config had a MAC opens (with one warning), `migrate`
    seals it, and putting the version 1 config back afterwards is refused as a downgrade."""
    source = _tree(tmp_path / "src", files=2)
    cli("backup", source)
    _as_written_by_version_1(repo)
    config = repo / "config"
    old = config.read_bytes()
    assert len(cli("snapshots")) == 1
    assert "not authenticated (format version 1)" in cli.stderr
    done = cli("migrate")
    assert (done["from_version"], done["to_version"]) == (1, 2)
    assert json.loads(config.read_bytes())["version"] == 2
    assert "not authenticated" not in (cli("snapshots") and cli.stderr)
    config.write_bytes(old)
    failed = cli("snapshots", expect=1)
    assert "replaced without the key" in failed["error"]["message"]


def _as_written_by_version_1(repo: Path) -> None:
    """The config without its MAC, and the key without its format mark, as freezeframe wrote
    them before format version 2."""
    storage = LocalStorage(repo)
    master, name = unlock_master_key(storage, PASSWORD.encode())
    old_key = KeyFile.from_bytes(storage.get(Kind.KEYS, name), name)
    add_key(storage, dataclasses.replace(master, config_format=1), PASSWORD.encode(), old_key.kdf)
    storage.delete(Kind.KEYS, name)
    doc = json.loads((repo / "config").read_bytes())
    old = {k: v for k, v in doc.items() if k != "mac"} | {"version": 1}
    (repo / "config").write_bytes(json.dumps(old, indent=1).encode())


# -- restores of damaged data -----------------------------------------------------------------


def test_a_restore_of_damaged_data_leaves_no_file_that_looks_complete(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    """Before: exit 3 and a full-size, all-zero file at the original path. Now the file is
    removed, named with its damaged byte range, the exit status is 1, and everything else
    (the directory's recorded mtime too) is restored."""
    source = _tree(tmp_path / "src", files=4)
    os.utime(source, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    cli("backup", source)
    pack = max((repo / "data").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)
    data = bytearray(pack.read_bytes())
    data[len(data) // 3] ^= 0xFF
    pack.write_bytes(bytes(data))
    target = tmp_path / "out"
    result = cli("restore", "latest", "--target", target, expect=1)
    assert len(result["damaged"]) == 1
    damaged = result["damaged"][0]
    ((start, end),) = damaged["ranges"]
    assert 0 <= start < end <= 100 * KiB
    restored = target / str(source).lstrip("/")
    lost = restored / Path(damaged["path"]).name
    assert not lost.exists()
    survivors = sorted(p.name for p in restored.iterdir())
    assert len(survivors) == 3
    for name in survivors:
        assert (restored / name).read_bytes() == (source / name).read_bytes()
    assert restored.stat().st_mtime_ns == 1_600_000_000_000_000_000
    assert f"damaged bytes {start}-{end - 1}" in cli.stderr


# -- bad arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ("forget", "--keep-last", "-5"),
        ("snapshots", "--bogus"),
        ("check", "--read-data-subset", "150"),
        ("repair",),
        ("restore", "latest"),
    ],
)
def test_argument_errors_give_the_json_error_document(
    repo: Path, cli: Cli, argv: tuple[str, ...]
) -> None:
    failed = cli(*argv, expect=2)
    assert failed["error"]["code"] == "usage" and failed["error"]["message"]
    _one_error_line(cli.stderr)


def test_a_bad_exclude_pattern_is_a_usage_error(repo: Path, cli: Cli, tmp_path: Path) -> None:
    source = _tree(tmp_path / "src", files=1)
    failed = cli("backup", source, "--exclude", "[", expect=2)
    assert failed["error"]["code"] == "usage" and "'['" in failed["error"]["message"]
    assert list((repo / "snapshots").iterdir()) == []


def test_ls_of_a_missing_path_fails(repo: Path, cli: Cli, tmp_path: Path) -> None:
    source = _tree(tmp_path / "src", files=1)
    cli("backup", source)
    failed = cli("ls", "latest", "/nonexistent", expect=1)
    assert failed["error"]["code"] == "not_found"
    listed = cli("ls", "latest", str(source))["nodes"]
    assert [n["path"] for n in listed] == [str(source), f"{source}/f0.bin"]


# -- a late signal ----------------------------------------------------------------------------


@pytest.mark.parametrize("trial", range(4))
def test_sigterm_after_the_snapshot_is_saved_ends_with_0_or_130(
    repo: Path, tmp_path: Path, trial: int
) -> None:
    """SIGTERM fired over and over from the moment the snapshot file appears until the process
    ends: it exits 0 or 130, never by the signal (the interpreter's shutdown restores the
    default action, which killed it before)."""
    source = _tree(tmp_path / "src", files=40, size=256 * KiB)
    proc = subprocess.Popen(
        [*WITH_DEFAULT_SIGINT, *subprocess_argv("backup", source, repo=repo)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    snapshots = repo / "snapshots"
    deadline = time.monotonic() + 60
    while not any(not p.name.startswith(".") for p in snapshots.iterdir()):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.0005)
    signals = 0
    while proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        signals += 1
        time.sleep(0.0005 * (1 + trial % 2))
    proc.communicate()
    assert signals > 0
    assert proc.returncode in (0, 130), f"ended with {proc.returncode} after {signals} SIGTERMs"
