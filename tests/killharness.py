"""Kill freezeframe at the Nth repository event and prove the repository survived.

An inotify watcher follows every directory of a local repository. A "repository event" is a
completed write (IN_CLOSE_WRITE), a rename into place (IN_MOVED_TO) or a delete (IN_DELETE) of
a file in it, temporaries (``.NAME.tmp-PID-TID``) included: the moment between a temporary's
write and its rename is where a crash hurts most. Directories are not counted.

For one operation (a row of ``OPERATIONS``): the row's setup builds a template repository and
its sources once; the operation then runs once to completion on a copy, counting its events
(``n_total``); then, for each chosen N, a fresh copy is made, the operation is started in its own
process group, and SIGKILLed the moment event N is read. The row's verify then proves the
repository intact: by default ``check --read-data`` exits 0 (warnings allowed) and every snapshot
restores byte-exact against the source tree it was taken from (matched by its ``genN`` tag).

Adding a row (e.g. for ``repair index``)::

    Operation(
        "repair-index",
        setup=setup_damaged_index,          # (root: Path) -> Scenario; builds root/template
        argv=("repair", "index"),           # "{live}" and "{new_password_file}" are filled in
        verify=rerun_then_verify,           # re-run the command to completion, then verify
        ci_points=6,
    )

A setup builds ``root/template/repo`` and ``root/template/cache`` (``Builder`` does: init, backups
of deterministic generations, and ``Builder.repo`` left to damage for a repair row) and returns a
``Scenario`` saying which tag restores to which tree and which snapshots must survive.

Used by ``tests/system/test_kill_points.py`` (a sample of N) and ``bench/kill_points.py``
(every N). Nothing is mocked: real processes, real SIGKILL, real file system.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inotify_simple import INotify
from inotify_simple import flags as inflags

from ffharness import FAST_INIT, PASSWORD, subprocess_argv
from treeutil import Entry, manifest_differences, tree_manifest

KiB = 1024
MiB = 1024 * KiB
NEW_PASSWORD = "new password for the kill harness"
RUN_TIMEOUT_S = 120.0

# --------------------------------------------------------------------------------------------
# Deterministic sources: generation g of one live tree

BIG_FILES = 76
SMALL_FILES = 300
ADDED_PER_GENERATION = 4
_BASE_MTIME_NS = 1_700_000_000_123_456_789


def _big_version(i: int, gen: int) -> int:
    """The generation that last rewrote big file i: generation g >= 2 rewrites i % 4 == g - 2."""
    return max([1, *(g for g in range(2, gen + 1) if i % 4 == g - 2)])


def _small_version(j: int, gen: int) -> int:
    return max([1, *(g for g in range(2, gen + 1) if j % 10 == g)])


def generation_files(gen: int) -> dict[str, tuple[str, int]]:
    """What generation ``gen`` holds: relative path -> (content seed, size)."""
    files: dict[str, tuple[str, int]] = {}
    for i in range(BIG_FILES):
        if any(i % 11 == g for g in range(2, gen + 1)):
            continue  # generation g deletes the big files with i % 11 == g
        size = 640 * KiB + (i * 7919 % 11) * 64 * KiB
        files[f"d{i % 6}/f{i:02d}.bin"] = (f"big-{i}-v{_big_version(i, gen)}", size)
    for g in range(2, gen + 1):
        for k in range(ADDED_PER_GENERATION):
            files[f"added{g}/n{k}.bin"] = (f"added-{g}-{k}", MiB + k * 4 * KiB)
    for j in range(SMALL_FILES):
        v = _small_version(j, gen)
        files[f"small/s{j // 100}/t{j:03d}.txt"] = (f"text-{j}-v{v}", -(j % 40 + 10))
    return files


def _content(seed: str, size: int) -> bytes:
    """Incompressible bytes for a positive size; a repeated (compressible) line for negative."""
    if size < 0:
        return f"{seed} says hello\n".encode() * -size
    return random.Random(seed).randbytes(size)


def write_generation(live: Path, gen: int) -> None:
    """Bring ``live`` from generation ``gen - 1`` (or nothing, for 1) to generation ``gen``, in
    place, so an incremental backup sees only what changed (the files cache still holds)."""
    want = generation_files(gen)
    have = generation_files(gen - 1) if gen > 1 else {}
    for rel in sorted(have.keys() - want.keys()):
        (live / rel).unlink()
    for index, (rel, spec) in enumerate(sorted(want.items())):
        if have.get(rel) == spec:
            continue
        path = live / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_content(*spec))
        ns = _BASE_MTIME_NS + gen * 10**12 + index * 1_000_003
        os.utime(path, ns=(ns, ns))


# --------------------------------------------------------------------------------------------
# Watching a repository


_HEX_NAME = re.compile(r"([0-9a-f]{8})[0-9a-f]{56}")


@dataclass(frozen=True)
class RepoEvent:
    kind: str  # "write" (IN_CLOSE_WRITE), "rename" (IN_MOVED_TO) or "delete" (IN_DELETE)
    path: str  # relative to the repository

    def describe(self) -> str:
        """Short enough for a report: hex object names cut to 8 digits."""
        return self.kind + " " + _HEX_NAME.sub(r"\1…", self.path)


_COUNTED = {
    inflags.CLOSE_WRITE: "write",
    inflags.MOVED_TO: "rename",
    inflags.DELETE: "delete",
}
_WATCH_MASK = inflags.CLOSE_WRITE | inflags.MOVED_TO | inflags.DELETE | inflags.CREATE


class RepoWatcher:
    """inotify watches on the repository directory and every directory below it; directories
    created later are watched as they appear."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self._inotify = INotify()
        self._dirs: dict[int, str] = {}
        self.overflowed = False
        for dirpath, _dirs, _files in os.walk(repo):
            self._watch(Path(dirpath))

    def _watch(self, directory: Path) -> None:
        wd = self._inotify.add_watch(directory, _WATCH_MASK)
        rel = directory.relative_to(self.repo).as_posix()
        self._dirs[wd] = "" if rel == "." else rel

    def read(self, timeout_ms: int) -> list[RepoEvent]:
        """The repository events queued now, waiting up to ``timeout_ms`` for the first."""
        found = []
        for event in self._inotify.read(timeout=timeout_ms):
            if event.mask & inflags.Q_OVERFLOW:
                self.overflowed = True
                continue
            parent = self._dirs.get(event.wd)
            if parent is None:
                continue
            rel = f"{parent}/{event.name}" if parent else event.name
            if event.mask & inflags.ISDIR:
                if event.mask & inflags.CREATE:
                    self._watch(self.repo / rel)
                continue
            for flag, kind in _COUNTED.items():
                if event.mask & flag:
                    found.append(RepoEvent(kind, rel))
        return found

    def close(self) -> None:
        self._inotify.close()

    def __enter__(self) -> RepoWatcher:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


@dataclass
class WatchedRun:
    """One run of an operation under the watcher."""

    events: list[RepoEvent]
    returncode: int
    kill_at: int | None
    killed_at_event: RepoEvent | None
    ended_first: bool  # the process had ended on its own when event kill_at was read
    events_after_kill: int  # events already queued when the kill was sent, or seen after it
    seconds: float
    stderr_tail: str

    @property
    def landed(self) -> bool:
        """The kill struck a live process (and not one that had finished on its own)."""
        return self.returncode == -signal.SIGKILL


def base_env(password: str, cache: Path) -> dict[str, str]:
    """The environment for every freezeframe process: the caller's, less any repository
    settings, plus the password and a private cache directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FREEZEFRAME_")}
    env["FREEZEFRAME_PASSWORD"] = password
    env["XDG_CACHE_HOME"] = str(cache)
    return env


def run_watched(
    argv: Sequence[str],
    env: dict[str, str],
    repo: Path,
    *,
    kill_at: int | None,
    log_dir: Path,
    timeout: float = RUN_TIMEOUT_S,
) -> WatchedRun:
    """Run argv (its own process group, output to files) while watching ``repo``; SIGKILL the
    group as soon as event ``kill_at`` is read (None: let it finish)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    events: list[RepoEvent] = []
    killed: RepoEvent | None = None
    ended_first = False
    after = 0
    started = time.monotonic()
    with (
        RepoWatcher(repo) as watcher,
        open(log_dir / "stdout", "wb") as out,
        open(log_dir / "stderr", "wb") as err,
    ):
        proc = subprocess.Popen(
            list(argv),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        try:
            finished = False
            while killed is None and not finished:
                finished = proc.poll() is not None  # read once more after the end: the queue
                batch = watcher.read(0 if finished else 50)
                for position, event in enumerate(batch):
                    events.append(event)
                    if len(events) == kill_at:
                        killed = event
                        ended_first = finished
                        _kill_group(proc)
                        after = len(batch) - position - 1
                        break
                if time.monotonic() - started > timeout:
                    _kill_group(proc)
                    raise TimeoutError(f"{' '.join(argv)} ran longer than {timeout:g} s")
            proc.wait()
        finally:
            if proc.poll() is None:
                _kill_group(proc)
                proc.wait()
        if killed is not None:
            after += len(watcher.read(0))
        if watcher.overflowed:
            raise RuntimeError("the inotify queue overflowed: the event count is unreliable")
    return WatchedRun(
        events=events,
        returncode=proc.returncode,
        kill_at=kill_at,
        killed_at_event=killed,
        ended_first=ended_first,
        events_after_kill=after,
        seconds=time.monotonic() - started,
        stderr_tail=(log_dir / "stderr").read_text(errors="replace")[-2000:],
    )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):  # already reaped
        os.killpg(proc.pid, signal.SIGKILL)


# --------------------------------------------------------------------------------------------
# Scenarios (what a row's setup builds) and trials


@dataclass
class Scenario:
    """A template repository plus the sources its snapshots were taken from.

    ``root/template/repo`` and ``root/template/cache`` are copied for each run. ``trees`` maps a
    snapshot tag to the tree it must restore to; every snapshot carries exactly one of them.
    ``required`` are the tags whose snapshots must still exist after any kill. Any password of
    ``passwords`` may be the one that opens the repository afterwards (``key passwd``)."""

    root: Path
    trees: dict[str, Path]
    required: frozenset[str]
    values: dict[str, str] = field(default_factory=dict)
    passwords: tuple[str, ...] = (PASSWORD,)
    lost: dict[str, frozenset[bytes]] = field(default_factory=dict)
    """Per tag, files (relative to the source root) a repair truncates: a restored one must be
    a prefix of the source's, and the rest of the tree must match exactly."""
    _manifests: dict[str, dict[bytes, Entry]] = field(default_factory=dict, repr=False)

    @property
    def template(self) -> Path:
        return self.root / "template"

    def manifest(self, tag: str) -> dict[bytes, Entry]:
        """The source tree's manifest, computed once: sources never change after setup."""
        if tag not in self._manifests:
            self._manifests[tag] = tree_manifest(self.trees[tag])
        return self._manifests[tag]

    def new_trial(self, argv: tuple[str, ...]) -> Trial:
        """A fresh copy of the template repository and cache in ``root/trial``."""
        directory = self.root / "trial"
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir()
        shutil.copytree(self.template / "repo", directory / "repo", symlinks=True)
        shutil.copytree(self.template / "cache", directory / "cache", symlinks=True)
        return Trial(self, argv, directory)


@dataclass
class Trial:
    """One run of an operation on a fresh copy of the template."""

    scenario: Scenario
    argv: tuple[str, ...]  # the freezeframe arguments after --repo/--no-progress
    directory: Path

    @property
    def repo(self) -> Path:
        return self.directory / "repo"

    @property
    def cache(self) -> Path:
        return self.directory / "cache"

    def env(self, password: str = PASSWORD) -> dict[str, str]:
        return base_env(password, self.cache)

    def freezeframe(
        self, *args: str | os.PathLike[str], password: str = PASSWORD, json: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run freezeframe on this trial's repository to completion."""
        return subprocess.run(
            subprocess_argv(*args, repo=self.repo, json=json),
            env=self.env(password),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )


@dataclass
class Verdict:
    """What the verification found; empty problem lists mean the repository is intact."""

    check_ran: bool = False
    opened_with: str | None = None
    snapshots_restored: int = 0
    check_failures: list[str] = field(default_factory=list)
    restore_mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.check_failures or self.restore_mismatches)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "check_ran": self.check_ran,
            "opened_with": self.opened_with,
            "snapshots_restored": self.snapshots_restored,
            "check_failures": self.check_failures,
            "restore_mismatches": self.restore_mismatches,
        }


def _error_code(stdout: str) -> str | None:
    try:
        return str(json.loads(stdout)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


def _check_with_any_password(
    trial: Trial,
) -> tuple[str | None, subprocess.CompletedProcess[str] | None, list[str]]:
    """``check --read-data`` with the first of the scenario's passwords that opens the
    repository (a wrong one is refused before anything is read), and why others did not."""
    why: list[str] = []
    for password in trial.scenario.passwords:
        check = trial.freezeframe("check", "--read-data", password=password)
        if _error_code(check.stdout) != "wrong_password":
            return password, check, why
        why.append(f"exit {check.returncode}: {check.stderr.strip()[-500:]}")
    return None, None, why


def verify_repository(trial: Trial) -> Verdict:
    """``check --read-data`` exits 0, every snapshot restores exactly to its source, and every
    required snapshot is still there."""
    verdict = Verdict()
    password, check, why = _check_with_any_password(trial)
    if password is None or check is None:
        verdict.check_failures.append("no password opens the repository: " + "; ".join(why))
        return verdict
    verdict.opened_with = "old" if password == PASSWORD else "new"
    verdict.check_ran = True
    if check.returncode != 0:
        verdict.check_failures.append(
            f"check --read-data exited {check.returncode}\nstdout: {check.stdout[-3000:]}\n"
            f"stderr: {check.stderr[-2000:]}"
        )
    listed = trial.freezeframe("snapshots", password=password)
    if listed.returncode != 0:
        verdict.restore_mismatches.append(
            f"snapshots exited {listed.returncode}: {listed.stderr[-2000:]}"
        )
        return verdict
    seen: set[str] = set()
    for snapshot in json.loads(listed.stdout):
        short = snapshot["id"][:8]
        tags = [t for t in snapshot["tags"] if t in trial.scenario.trees]
        if len(tags) != 1 or len(snapshot["paths"]) != 1:
            verdict.restore_mismatches.append(
                f"snapshot {short} (tags {snapshot['tags']}, paths {snapshot['paths']}) "
                "matches no source tree"
            )
            continue
        tag = tags[0]
        seen.add(tag)
        target = trial.directory / "restore" / short
        restore = trial.freezeframe(
            "restore", snapshot["id"], "--target", target, password=password
        )
        if restore.returncode != 0:
            verdict.restore_mismatches.append(
                f"restore of {short} ({tag}) exited {restore.returncode}: {restore.stderr[-2000:]}"
            )
            continue
        restored = target / snapshot["paths"][0].lstrip("/")
        actual = tree_manifest(restored) if restored.is_dir() else {}
        expected = trial.scenario.manifest(tag)
        lost = trial.scenario.lost.get(tag, frozenset()) if "repaired" in snapshot["tags"] else ()
        problems = [
            f"{os.fsdecode(path)}: the repaired file is not a prefix of the source's"
            for path in lost
            if not _is_prefix(
                restored / os.fsdecode(path), trial.scenario.trees[tag] / os.fsdecode(path)
            )
        ]
        problems += manifest_differences(
            {k: v for k, v in expected.items() if k not in lost},
            {k: v for k, v in actual.items() if k not in lost},
        )
        if problems:
            verdict.restore_mismatches.append(
                f"snapshot {short} ({tag}) restores differently:\n" + "\n".join(problems[:30])
            )
        verdict.snapshots_restored += 1
        shutil.rmtree(target)
    for tag in sorted(trial.scenario.required - seen):
        verdict.restore_mismatches.append(f"the snapshot tagged {tag} is gone")
    return verdict


def _is_prefix(restored: Path, source: Path) -> bool:
    if not restored.exists():
        return True
    data = restored.read_bytes()
    return source.read_bytes()[: len(data)] == data


def rerun_then_verify(trial: Trial) -> Verdict:
    """For commands that repair: run the same command again to completion (it must exit 0),
    then verify as usual."""
    again = trial.freezeframe(*trial.argv, json=False)
    if again.returncode != 0:
        verdict = Verdict()
        verdict.check_failures.append(
            f"re-running {' '.join(trial.argv)} exited {again.returncode}: {again.stderr[-2000:]}"
        )
        return verdict
    return verify_repository(trial)


# --------------------------------------------------------------------------------------------
# Setups


class Builder:
    """Builds a scenario's template: a repository, its cache, and the generations' sources
    (``sources/live`` evolves in place; ``sources/genN`` are exact copies taken after each
    backup)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.repo = root / "template" / "repo"
        self.cache = root / "template" / "cache"
        self.sources = root / "sources"
        self.live = self.sources / "live"
        self.trees: dict[str, Path] = {}
        self.sources.mkdir(parents=True)
        self.cache.mkdir(parents=True)
        self.run(*FAST_INIT)

    def run(self, *args: str | os.PathLike[str]) -> str:
        done = subprocess.run(
            subprocess_argv(*args, repo=self.repo, json=True),
            env=base_env(PASSWORD, self.cache),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"setup: freezeframe {' '.join(map(str, args))} exited {done.returncode}: "
                f"{done.stderr[-2000:]}"
            )
        return done.stdout

    def next_generation(self) -> str:
        """Write the next generation into ``live`` (not backed up yet); returns its tag."""
        gen = len(self.trees) + 1
        write_generation(self.live, gen)
        tag = f"gen{gen}"
        self.trees[tag] = self.live
        return tag

    def backup_generations(self, count: int) -> None:
        for _ in range(count):
            tag = self.next_generation()
            self.run(*backup_argv(str(self.live), tag))
            frozen = self.sources / tag
            shutil.copytree(self.live, frozen, symlinks=True)
            self.trees[tag] = frozen

    def scenario(self, required: Sequence[str] = (), **values: str) -> Scenario:
        return Scenario(
            root=self.root,
            trees=dict(self.trees),
            required=frozenset(required),
            values={"live": str(self.live), **values},
        )


def backup_argv(path: str, tag: str) -> tuple[str, ...]:
    """A live read (`none`): the same on every file system, and nothing to probe."""
    return ("backup", path, "--tag", tag, "--consistency", "none")


def setup_backup_initial(root: Path) -> Scenario:
    """An empty repository; gen1 waits in the live tree."""
    b = Builder(root)
    b.next_generation()
    return b.scenario()


def setup_backup_incremental(root: Path) -> Scenario:
    """gen1 and gen2 backed up; gen3 (a quarter of the big files rewritten, some deleted, some
    added) waits in the live tree."""
    b = Builder(root)
    b.backup_generations(2)
    b.next_generation()
    return b.scenario(required=("gen1", "gen2"))


def setup_three_generations(root: Path) -> Scenario:
    b = Builder(root)
    b.backup_generations(3)
    return b.scenario(required=("gen3",))


def setup_forgotten(root: Path) -> Scenario:
    """Three generations, the oldest forgotten but not pruned: its data is unused."""
    b = Builder(root)
    b.backup_generations(3)
    b.run("forget", "--keep-last", "2")
    return b.scenario(required=("gen2", "gen3"))


def setup_key_passwd(root: Path) -> Scenario:
    b = Builder(root)
    b.backup_generations(1)
    password_file = root / "new-password"
    password_file.write_text(NEW_PASSWORD + "\n")
    scenario = b.scenario(required=("gen1",), new_password_file=str(password_file))
    scenario.passwords = (PASSWORD, NEW_PASSWORD)
    return scenario


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def _opened(repo: Path) -> Any:
    from freezeframe.repository.repository import Repository
    from freezeframe.storage.local import LocalStorage

    return Repository.open(LocalStorage(repo), PASSWORD.encode())


def setup_damaged_index(root: Path) -> Scenario:
    """Two generations; one index file flipped and another deleted, so `repair index` must
    both skip damage and find packs no index names."""
    b = Builder(root)
    b.backup_generations(2)
    index_files = sorted((b.repo / "index").iterdir())
    assert len(index_files) >= 2, "the scenario needs two index files"
    _flip(index_files[0], 40)
    index_files[1].unlink()
    return b.scenario(required=("gen1", "gen2"))


def setup_damaged_pack_header(root: Path) -> Scenario:
    """Two generations; a byte inside one data pack's header flipped: every blob of it is
    intact, so `repair packs` must salvage them all."""
    b = Builder(root)
    b.backup_generations(2)
    repo = _opened(b.repo)
    try:
        pack, entries = max(repo.index.by_pack().items(), key=lambda item: len(item[1]))
    finally:
        repo.close()
    path = b.repo / "data" / pack[:2] / pack
    header_start = max(e.offset + e.length for e in entries)
    _flip(path, header_start + 20)
    return b.scenario(required=("gen1", "gen2"))


def setup_lost_blob(root: Path) -> Scenario:
    """Two generations; a blob only gen2 uses damaged and dropped by `repair packs`, so
    `repair snapshots --forget` must write gen2 again without it."""
    from freezeframe.repository.snapshot import list_snapshots
    from freezeframe.repository.walk import walk_tree

    b = Builder(root)
    b.backup_generations(2)
    repo = _opened(b.repo)
    try:
        first, second = list_snapshots(repo)
        old = {c for _p, node in walk_tree(repo, first.tree) for c in node.content}
        path, node = next(
            (p, n)
            for p, n in walk_tree(repo, second.tree)
            if n.type == "file" and n.content and n.content[0] not in old
        )
        location = repo.index.lookup(node.content[0])
    finally:
        repo.close()
    assert location is not None
    _flip(b.repo / "data" / location.pack[:2] / location.pack, location.offset + 10)
    b.run("repair", "packs")
    scenario = b.scenario(required=("gen1", "gen2"))
    relative = os.fsencode(os.path.relpath(os.fsdecode(path), second.paths[0]))
    scenario.lost = {"gen2": frozenset({relative})}
    return scenario


# --------------------------------------------------------------------------------------------
# The table


@dataclass(frozen=True)
class Operation:
    """One row: how to build the starting repository, what to kill, how to prove it intact."""

    name: str
    setup: Callable[[Path], Scenario]
    argv: tuple[str, ...]  # "{live}", "{new_password_file}", ... come from Scenario.values
    verify: Callable[[Trial], Verdict] = verify_repository
    ci_points: int = 6  # kill points the test suite samples (first and last always among them)

    def arguments(self, scenario: Scenario) -> tuple[str, ...]:
        return tuple(arg.format(**scenario.values) for arg in self.argv)


OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in (
        Operation(
            "backup-initial",
            setup_backup_initial,
            backup_argv("{live}", "gen1"),
            ci_points=8,
        ),
        Operation(
            "backup-incremental",
            setup_backup_incremental,
            backup_argv("{live}", "gen3"),
            ci_points=7,
        ),
        Operation("prune", setup_forgotten, ("prune", "--max-unused", "0"), ci_points=9),
        Operation("forget", setup_three_generations, ("forget", "--keep-last", "1"), ci_points=5),
        Operation(
            "forget-prune",
            setup_three_generations,
            ("forget", "--keep-last", "1", "--prune"),
            ci_points=9,
        ),
        Operation(
            "key-passwd",
            setup_key_passwd,
            ("key", "passwd", "--new-password-file", "{new_password_file}"),
            ci_points=3,
        ),
        Operation(
            "repair-index",
            setup_damaged_index,
            ("repair", "index"),
            verify=rerun_then_verify,
            ci_points=4,
        ),
        Operation(
            "repair-packs",
            setup_damaged_pack_header,
            ("repair", "packs"),
            verify=rerun_then_verify,
            ci_points=4,
        ),
        Operation(
            "repair-snapshots",
            setup_lost_blob,
            ("repair", "snapshots", "--forget"),
            verify=rerun_then_verify,
            ci_points=4,
        ),
    )
}


# --------------------------------------------------------------------------------------------
# Running a row


def choose_points(n_total: int, sample: int | None) -> list[int]:
    """Kill points 1..n_total: all of them (``sample`` None), else ``sample`` spread evenly
    over the range, the first and the last event always included."""
    if n_total <= 0:
        return []
    if sample is None or sample >= n_total:
        return list(range(1, n_total + 1))
    if sample <= 1:
        return [n_total]
    step = (n_total - 1) / (sample - 1)
    return sorted({1 + round(k * step) for k in range(sample)})


@dataclass
class TrialResult:
    kill_at: int | None
    run: WatchedRun
    verdict: Verdict
    kept_at: Path | None  # the trial directory, kept when verification failed

    def describe(self) -> str:
        event = self.run.killed_at_event.describe() if self.run.killed_at_event else "none"
        landed = "landed" if self.run.landed else f"missed (exit {self.run.returncode})"
        return f"kill at event {self.kill_at} ({event}): {landed}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kill_at": self.kill_at,
            "event": self.run.killed_at_event.describe() if self.run.killed_at_event else None,
            "landed": self.run.landed,
            "ended_first": self.run.ended_first,
            "returncode": self.run.returncode,
            "events_seen": len(self.run.events),
            "events_after_kill": self.run.events_after_kill,
            "run_seconds": round(self.run.seconds, 3),
            "verdict": self.verdict.to_json(),
            "kept_at": str(self.kept_at) if self.kept_at else None,
        }


@dataclass
class OperationReport:
    name: str
    argv: tuple[str, ...]
    complete: TrialResult  # the uninterrupted run that counted the events
    trials: list[TrialResult]
    setup_seconds: float
    seconds: float

    @property
    def n_total(self) -> int:
        return len(self.complete.run.events)

    @property
    def landed(self) -> int:
        return sum(t.run.landed for t in self.trials)

    @property
    def check_failures(self) -> int:
        return sum(bool(t.verdict.check_failures) for t in self.trials)

    @property
    def restore_mismatches(self) -> int:
        return sum(bool(t.verdict.restore_mismatches) for t in self.trials)

    def failures(self) -> list[str]:
        """Every problem with its reproduction: operation, N, the event, the output."""
        found = []
        for t in [self.complete, *self.trials]:
            for problem in t.verdict.check_failures + t.verdict.restore_mismatches:
                found.append(
                    f"{self.name} ({' '.join(self.argv)}), {t.describe()}, trial kept at "
                    f"{t.kept_at}:\n{problem}"
                )
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "operation": self.name,
            "argv": list(self.argv),
            "n_total": self.n_total,
            "events": [e.describe() for e in self.complete.run.events],
            "complete_run": self.complete.to_json(),
            "kill_points_tried": len(self.trials),
            "kills_landed": self.landed,
            "check_failures": self.check_failures,
            "restore_mismatches": self.restore_mismatches,
            "setup_seconds": round(self.setup_seconds, 2),
            "seconds": round(self.seconds, 2),
            "trials": [t.to_json() for t in self.trials],
        }


def run_trial(op: Operation, scenario: Scenario, kill_at: int | None) -> TrialResult:
    """Copy the template, run (and maybe kill) the operation, verify; the trial directory is
    removed unless verification failed."""
    trial = scenario.new_trial(op.arguments(scenario))
    run = run_watched(
        subprocess_argv(*trial.argv, repo=trial.repo),
        trial.env(),
        trial.repo,
        kill_at=kill_at,
        log_dir=trial.directory / "log",
    )
    verdict = op.verify(trial)
    if kill_at is None and run.returncode != 0:
        verdict.check_failures.append(
            f"the uninterrupted run exited {run.returncode}: {run.stderr_tail}"
        )
    kept = None
    if verdict.ok:
        shutil.rmtree(trial.directory)
    else:
        kept = scenario.root / "failed" / f"kill-{kill_at}"
        kept.parent.mkdir(exist_ok=True)
        trial.directory.rename(kept)
    return TrialResult(kill_at, run, verdict, kept)


def run_operation(
    op: Operation,
    work: Path,
    *,
    sample: int | None,
    progress: Callable[[str], None] | None = None,
) -> OperationReport:
    """Set up, count the events of one complete run, then kill at each chosen point."""
    say = progress or (lambda _line: None)
    started = time.monotonic()
    scenario = op.setup(work)
    setup_seconds = time.monotonic() - started
    complete = run_trial(op, scenario, None)
    n_total = len(complete.run.events)
    say(f"{op.name}: {n_total} events in a complete run ({complete.run.seconds:.2f} s)")
    trials = []
    for n in choose_points(n_total, sample):
        result = run_trial(op, scenario, n)
        trials.append(result)
        status = "ok" if result.verdict.ok else "FAILED"
        say(f"  {op.name}: {result.describe()}, verify {status}")
    return OperationReport(
        name=op.name,
        argv=op.arguments(scenario),
        complete=complete,
        trials=trials,
        setup_seconds=setup_seconds,
        seconds=time.monotonic() - started,
    )
