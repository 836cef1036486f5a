"""The corruption matrix: damage one repository object of each kind in each way, on a fresh copy
of one template repository, and prove that freezeframe finds, names and repairs the damage.

Kinds: config, key, index, snapshot, data pack, tree pack, lock. Mutations: one byte XORed with
a random non-zero value at a random offset (``flip``), a cut to a random shorter length
(``truncate``), and deletion (``delete``). Per trial, on a copy of the template:

1. ``check --read-data`` must exit non-zero and name the object (its kind and id prefix). What
   it lists as ``damaged`` must be exactly what the template says the mutation destroys: the
   files and directories, in every snapshot, that use a blob the flipped offset or the cut falls
   in (a flip in a pack's header or trailer destroys nothing, the pack must still be reported).
2. The documented repair for the kind runs (``repair config``; ``key remove`` with the other
   password; ``repair index``; ``repair snapshots --forget``; for packs ``repair index``,
   ``repair packs``, ``repair snapshots --forget`` and ``prune``; ``unlock``), then
   ``check --read-data`` must exit 0 and every snapshot must restore: byte-exact against the
   source it was taken from, or, for a repaired one, the source minus exactly the lost
   directories and with each damaged file cut before its first lost blob.

Deleting a key, a snapshot or a lock is what ``key remove``, ``forget`` and ``unlock`` do, so it
cannot be told from damage: those trials are "not applicable" and only prove that the
repository still checks clean and restores.

Nothing is mocked: the CLI runs in-process (``freezeframe.cli.main.main``, as the ``cli``
fixture does) on real files, and the expectations are computed from the template through the
repository's own API before anything is damaged. Each trial draws from its own RNG, seeded by
``(seed, kind, mutation, number)``, so one trial replays alone; the trial records the object,
offset, XOR value or length, and every command with its output, for a reproduction.

Shared by ``tests/system/test_corruption_matrix.py`` (CI) and ``bench/corruption_matrix.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import random
import re
import shutil
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from treeutil import Entry, manifest_differences, tree_manifest

KINDS = ("config", "key", "index", "snapshot", "data pack", "tree pack", "lock")
MUTATIONS = ("flip", "truncate", "delete")
CELLS = [(kind, mutation) for kind in KINDS for mutation in MUTATIONS]

NOT_APPLICABLE = {
    ("key", "delete"): "key remove",
    ("snapshot", "delete"): "forget",
    ("lock", "delete"): "unlock",
}
"""Mutations that are ordinary operations: indistinguishable from them, so not damage."""

KIND_WORD = {
    "config": "config",
    "key": "key",
    "index": "index",
    "snapshot": "snapshot",
    "data pack": "pack",
    "tree pack": "pack",
    "lock": "lock",
}
"""The word the output must use for the damaged object."""

PASSWORDS = ("first corruption password", "second corruption password")
KiB = 1024
MiB = 1024 * KiB
PACK_SIZE = 512 * KiB  # a few blobs a pack: packs are shared between files and snapshots
SOURCE_SEED = 20261207  # the source trees are the same in every run
NONCE, TAG = 12, 16  # AES-GCM framing of the encrypted objects

KNOWN: dict[str, str] = {}
"""Failure signatures (``Failure.signature``) of known, not yet fixed freezeframe defects, each
with the defect's name: a trial failing only with these is an expected failure (xfail). Empty
while every defect the matrix found is fixed; each fixed one keeps a deterministic test in
``tests/system/test_corruption_matrix.py``."""


# ---------------------------------------------------------------------------------------------
# Running the CLI


@dataclass
class Command:
    """One CLI run: its arguments (after ``--repo R --no-progress --json``), the password it
    used (index into ``PASSWORDS``), exit status and output."""

    args: tuple[str, ...]
    password: int
    status: int
    stdout: str
    stderr: str
    seconds: float

    def doc(self) -> Any:
        """The JSON document printed, or None when there is none."""
        try:
            return json.loads(self.stdout)
        except ValueError:
            return None

    @property
    def text(self) -> str:
        return self.stdout + "\n" + self.stderr

    @property
    def internal_error(self) -> bool:
        """An exception freezeframe did not expect (its one-line stand-in for a traceback)."""
        return "Traceback (most recent call last)" in self.text or '"code": "internal"' in (
            self.stdout
        )

    def describe(self, limit: int = 1500) -> str:
        """The command line, exit status and output (only the status for a successful
        listing or restore, whose output says nothing about damage)."""
        shown = " ".join(self.args)
        out = self.stdout.strip()
        err = self.stderr.strip()
        lines = [
            f"$ freezeframe --password-file pw{self.password + 1} {shown}  -> exit {self.status}"
        ]
        if self.status == 0 and self.args[0] in ("snapshots", "restore") and not err:
            return lines[0]
        if out:
            lines.append("  stdout: " + _clip(out, limit).replace("\n", "\n          "))
        if err:
            lines.append("  stderr: " + _clip(err, limit).replace("\n", "\n          "))
        return "\n".join(lines)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit // 2] + "\n...\n" + text[-limit // 2 :]


def run_cli(repo: Path, password_file: Path, *args: str | os.PathLike[str]) -> Command:
    """``freezeframe --repo repo --password-file F --no-progress --json ARGS`` in-process."""
    from freezeframe.cli.main import main

    argv = [os.fspath(a) for a in args]
    full = ["--repo", os.fspath(repo), "--password-file", os.fspath(password_file)]
    full += ["--no-progress", "--json", *argv]
    out, err = io.StringIO(), io.StringIO()
    start = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(full)
        except BaseException:  # noqa: BLE001 - main must never raise: record it as a traceback
            traceback.print_exc()
            status = -1
    password = 1 if password_file.name == "pw2" else 0
    return Command(
        tuple(argv), password, status, out.getvalue(), err.getvalue(), time.monotonic() - start
    )


# ---------------------------------------------------------------------------------------------
# The template


@dataclass
class Source:
    """One backed-up path of a snapshot and the copy of it taken right after the backup."""

    path: str  # absolute, as recorded
    reference: Path


@dataclass
class SnapshotInfo:
    id: str
    ordinal: int  # 1 for the first backup
    tree: bytes
    sources: list[Source]


@dataclass
class BlobInfo:
    """A blob as a pack header describes it."""

    blob_id: bytes
    blob_type: str  # "data" or "tree"
    offset: int
    length: int
    raw_length: int


@dataclass
class PackInfo:
    name: str
    blob_type: str
    size: int
    blobs: list[BlobInfo]

    @property
    def header_start(self) -> int:
        return sum(b.length for b in self.blobs)


@dataclass
class Template:
    """A repository with two keys, a stale lock and four snapshots of three source trees, and
    what the repository API says about it (trees, packs, blobs), read before any damage."""

    root: Path
    repo: Path
    password_files: tuple[Path, Path]
    key_names: tuple[str, str]  # the key of each password
    lock_name: str
    snapshots: list[SnapshotInfo]
    trees: dict[bytes, list[Any]]  # tree id -> its nodes (freezeframe.repository.tree.Node)
    packs: dict[str, PackInfo]
    copies: dict[bytes, list[str]]  # blob id -> the packs holding it
    raw_lengths: dict[bytes, int]
    users: dict[bytes, list[str]]  # blob id -> "snapshot N /path" of what uses it
    seconds: float = 0.0

    def objects(self, kind: str) -> list[str]:
        """The repository-relative paths of the objects of ``kind``, in a stable order."""
        if kind == "config":
            return ["config"]
        if kind == "key":
            return [f"keys/{name}" for name in self.key_names]
        if kind == "lock":
            return [f"locks/{self.lock_name}"]
        if kind in ("data pack", "tree pack"):
            wanted = "data" if kind == "data pack" else "tree"
            return [
                f"data/{name[:2]}/{name}"
                for name, pack in sorted(self.packs.items())
                if pack.blob_type == wanted
            ]
        directory = {"index": "index", "snapshot": "snapshots"}[kind]
        return sorted(
            f"{directory}/{p.name}" for p in (self.repo / directory).iterdir() if p.is_file()
        )

    def snapshot(self, snapshot_id: str) -> SnapshotInfo:
        return next(s for s in self.snapshots if s.id == snapshot_id)

    def damage(self, lost: set[bytes]) -> dict[str, dict[str, int | None]]:
        """Per snapshot id, what losing the blobs ``lost`` destroys: absolute path -> None for
        a directory whose listing is lost (nothing below it is counted), else the length its
        file keeps when cut before its first lost blob."""
        result: dict[str, dict[str, int | None]] = {}
        for snap in self.snapshots:
            found: dict[str, int | None] = {}
            stack: list[tuple[bytes, bytes]] = [(snap.tree, b"")]
            while stack:
                tree, rel = stack.pop()
                if tree in lost:
                    found[os.fsdecode(b"/" + rel)] = None
                    continue
                for node in self.trees[tree]:
                    path = rel + b"/" + node.name if rel else node.name
                    if node.type == "dir" and node.subtree is not None:
                        stack.append((node.subtree, path))
                    elif node.type == "file" and any(c in lost for c in node.content):
                        kept = 0
                        for blob_id in node.content:
                            if blob_id in lost:
                                break
                            kept += self.raw_lengths[blob_id]
                        found[os.fsdecode(b"/" + path)] = kept
            if found:
                result[snap.id] = found
        return result


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _sources_v1(src: Path, rng: random.Random) -> None:
    """alpha, beta and gamma: incompressible files of several chunks, small text files,
    directories four levels deep, an empty directory and a symlink."""
    _write(src / "alpha/big1.bin", rng.randbytes(2 * MiB + 1234))
    _write(src / "alpha/big2.bin", rng.randbytes(1536 * KiB))
    for i in range(6):
        _write(src / f"alpha/docs/note{i}.txt", f"note {i}: {'words ' * (50 + 40 * i)}\n".encode())
    _write(src / "alpha/docs/img/pic0.bin", rng.randbytes(30 * KiB))
    _write(src / "alpha/docs/img/pic1.bin", rng.randbytes(70 * KiB))
    _write(src / "alpha/deep/l1/l2/l3/leaf.bin", rng.randbytes(200 * KiB))
    _write(src / "alpha/deep/l1/l2/tiny.txt", b"tiny\n")
    _write(src / "alpha/deep/l1/mid.bin", rng.randbytes(60 * KiB))
    (src / "alpha/empty").mkdir()
    (src / "alpha/link").symlink_to("docs/note1.txt")
    _write(src / "beta/blob.bin", rng.randbytes(1100 * KiB))
    _write(src / "beta/sub/a/x.bin", rng.randbytes(90 * KiB))
    _write(src / "beta/sub/b/y.txt", b"y" * 5000)
    _write(src / "beta/sub/b/c/z.bin", rng.randbytes(20 * KiB))
    _write(src / "gamma/g.bin", rng.randbytes(400 * KiB))
    _write(src / "gamma/in/g2.txt", b"gamma\n")


def _sources_v2(src: Path, rng: random.Random) -> None:
    """alpha changes: a file edited in the middle (its first and last chunks stay shared),
    one added, one removed."""
    big2 = bytearray((src / "alpha/big2.bin").read_bytes())
    big2[700 * KiB : 700 * KiB + 100] = rng.randbytes(100)
    _write(src / "alpha/big2.bin", bytes(big2))
    _write(src / "alpha/new.bin", rng.randbytes(300 * KiB))
    (src / "alpha/docs/note0.txt").unlink()


def build_template(root: Path) -> Template:
    """Create the template under ``root`` (absent or empty): init with cheap key derivation,
    a second password, small packs, four backups, a stale lock."""
    from freezeframe.repository.crypto import config_mac_key
    from freezeframe.repository.locks import LOCK_AAD
    from freezeframe.repository.repository import Repository
    from freezeframe.storage.base import Kind
    from freezeframe.storage.local import LocalStorage

    start = time.monotonic()
    root.mkdir(parents=True, exist_ok=True)
    repo = root / "repo"
    pw1, pw2 = root / "pw1", root / "pw2"
    pw1.write_text(PASSWORDS[0] + "\n")
    pw2.write_text(PASSWORDS[1] + "\n")
    saved_cache = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(root / "cache")  # never the user's files cache
    try:

        def ff(*args: str | os.PathLike[str]) -> Any:
            done = run_cli(repo, pw1, *args)
            if done.status != 0:
                raise RuntimeError(f"building the template failed:\n{done.describe()}")
            return done.doc()

        ff("init", "--argon2-memory", "8", "--argon2-time", "1")
        first_key = next(p.name for p in (repo / "keys").iterdir())
        second_key = ff("key", "add", "--new-password-file", pw2)["id"]

        opened = Repository.open(LocalStorage(repo), PASSWORDS[0].encode())
        small = dataclasses.replace(opened.config, pack_size=PACK_SIZE)
        sealed = small.sealed(config_mac_key(opened.master.encryption_key))
        opened.storage.put(Kind.CONFIG, "config", sealed.to_bytes())
        opened.close()

        src = root / "src"
        rng = random.Random(SOURCE_SEED)
        _sources_v1(src, rng)
        plan: list[list[str]] = [["alpha"], ["beta"], ["alpha"], ["alpha", "gamma"]]
        taken: list[tuple[str, list[Source]]] = []
        for ordinal, names in enumerate(plan, 1):
            if ordinal == 3:
                _sources_v2(src, rng)
            paths = [src / name for name in names]
            doc = ff("backup", "--consistency", "none", *paths)
            sources = []
            for path in paths:
                reference = root / "refs" / str(ordinal) / path.name
                shutil.copytree(path, reference, symlinks=True)
                sources.append(Source(str(path), reference))
            taken.append((doc["snapshot_id"], sources))

        # A lock left by a crashed backup: the real format, stale (an hour old).
        opened = Repository.open(LocalStorage(repo), PASSWORDS[0].encode(), load_index=False)
        lock = {
            "time": time.time() - 3600,
            "exclusive": False,
            "host": socket.gethostname(),
            "pid": 2**22 + 17,
            "user": "root",
        }
        lock_name = opened.save_file(Kind.LOCKS, json.dumps(lock).encode(), LOCK_AAD)
        opened.close()
    finally:
        if saved_cache is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = saved_cache

    saved = {
        "keys": [first_key, second_key],
        "lock": lock_name,
        "snapshots": [
            {"id": snap, "sources": [[s.path, str(s.reference)] for s in sources]}
            for snap, sources in taken
        ],
    }
    (root / "template.json").write_text(json.dumps(saved, indent=1) + "\n")
    template = load_template(root)
    template.seconds = time.monotonic() - start
    return template


def load_template(root: Path) -> Template:
    """A template ``build_template`` made (also an earlier one: to replay trials on the very
    same bytes), read through the repository API: everything the expectations need."""
    saved = json.loads((root / "template.json").read_text())
    taken = [
        (s["id"], [Source(path, Path(reference)) for path, reference in s["sources"]])
        for s in saved["snapshots"]
    ]
    template = _describe(root / "repo", taken)
    template.root = root
    template.password_files = (root / "pw1", root / "pw2")
    template.key_names = (saved["keys"][0], saved["keys"][1])
    template.lock_name = saved["lock"]
    return template


def template_at(root: Path) -> Template:
    """The template under ``root``: loaded when one was built there, else built."""
    if (root / "template.json").exists():
        return load_template(root)
    return build_template(root)


def _describe(repo: Path, taken: list[tuple[str, list[Source]]]) -> Template:
    """Read everything the expectations need through the repository API."""
    from freezeframe.repository.pack import read_header
    from freezeframe.repository.repository import Repository
    from freezeframe.repository.snapshot import load_snapshot
    from freezeframe.repository.walk import load_tree
    from freezeframe.storage.base import Kind
    from freezeframe.storage.local import LocalStorage

    opened = Repository.open(LocalStorage(repo), PASSWORDS[0].encode())
    try:
        snapshots = []
        for ordinal, (snapshot_id, sources) in enumerate(taken, 1):
            tree = load_snapshot(opened, snapshot_id).tree
            snapshots.append(SnapshotInfo(snapshot_id, ordinal, tree, sources))
        trees: dict[bytes, list[Any]] = {}
        users: dict[bytes, list[str]] = {}
        for snap in snapshots:
            stack: list[tuple[bytes, bytes]] = [(snap.tree, b"")]
            while stack:
                tree_id, rel = stack.pop()
                users.setdefault(tree_id, []).append(
                    f"snapshot {snap.ordinal} {os.fsdecode(b'/' + rel)}"
                )
                if tree_id not in trees:
                    trees[tree_id] = load_tree(opened, tree_id)
                for node in trees[tree_id]:
                    path = rel + b"/" + node.name if rel else node.name
                    if node.type == "dir" and node.subtree is not None:
                        stack.append((node.subtree, path))
                    for number, blob_id in enumerate(node.content, 1):
                        users.setdefault(blob_id, []).append(
                            f"snapshot {snap.ordinal} /{os.fsdecode(path)} "
                            f"(chunk {number}/{len(node.content)})"
                        )
        packs: dict[str, PackInfo] = {}
        copies: dict[bytes, list[str]] = {}
        raw_lengths: dict[bytes, int] = {}
        for info in opened.storage.list(Kind.DATA):
            entries = read_header(opened.storage, opened.cipher, info.name, info.size)
            blobs = [
                BlobInfo(e.blob_id, e.blob_type.name.lower(), e.offset, e.length, e.raw_length)
                for e in entries
            ]
            types = {b.blob_type for b in blobs}
            assert len(types) == 1, f"pack {info.name} mixes blob types"
            packs[info.name] = PackInfo(info.name, types.pop(), info.size, blobs)
            for blob in blobs:
                copies.setdefault(blob.blob_id, []).append(info.name)
                raw_lengths[blob.blob_id] = blob.raw_length
    finally:
        opened.close()
    return Template(
        root=repo.parent,
        repo=repo,
        password_files=(repo.parent / "pw1", repo.parent / "pw2"),
        key_names=("", ""),
        lock_name="",
        snapshots=snapshots,
        trees=trees,
        packs=packs,
        copies=copies,
        raw_lengths=raw_lengths,
        users=users,
    )


# ---------------------------------------------------------------------------------------------
# Trials


@dataclass(frozen=True)
class Mutation:
    """What a trial does to one object: XOR one byte (``offset``, ``xor``), cut it to
    ``length`` bytes, or delete it."""

    kind: str
    mutation: str
    target: str  # repository-relative path
    offset: int | None = None
    xor: int | None = None
    length: int | None = None

    def apply(self, repo: Path) -> None:
        path = repo / self.target
        if self.mutation == "delete":
            path.unlink()
            return
        data = bytearray(path.read_bytes())
        if self.mutation == "flip":
            assert self.offset is not None and self.xor is not None
            data[self.offset] ^= self.xor
        else:
            assert self.length is not None
            del data[self.length :]
        path.write_bytes(bytes(data))

    def describe(self) -> str:
        if self.mutation == "flip":
            return f"XOR byte {self.offset} of {self.target} with 0x{self.xor:02x}"
        if self.mutation == "truncate":
            return f"truncate {self.target} to {self.length} bytes"
        return f"delete {self.target}"


@dataclass(frozen=True)
class Failure:
    """One way a trial went wrong; ``signature`` groups equal defects across trials."""

    kind: str
    mutation: str
    region: str
    code: str
    message: str

    @property
    def signature(self) -> str:
        return f"{self.kind} {self.mutation} [{self.region}]: {self.code}"


@dataclass
class Trial:
    kind: str
    mutation: str
    number: int
    seed: int
    plan: Mutation | None = None
    size: int = 0
    region: str = ""
    """Where the mutation landed, in words (the field, blob, header...)."""
    region_class: str = ""
    """The coarse region that failure signatures group by."""
    detected: bool = False
    repaired: bool = False
    not_applicable: bool = False
    failures: list[Failure] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    seconds: float = 0.0

    def fail(self, code: str, message: str) -> None:
        self.failures.append(Failure(self.kind, self.mutation, self.region_class, code, message))

    @property
    def known_only(self) -> bool:
        return bool(self.failures) and all(f.signature in KNOWN for f in self.failures)

    @property
    def outcome(self) -> str:
        if self.failures:
            return "failed"
        if self.not_applicable:
            return "not applicable"
        return "repaired and restorable" if self.repaired else "detected"

    def describe(self) -> str:
        lines = [
            f"{self.kind} / {self.mutation}, trial {self.number} (seed {self.seed}): "
            f"{self.plan.describe() if self.plan else '?'} ({self.size} bytes); {self.region}",
        ]
        for failure in self.failures:
            known = KNOWN.get(failure.signature)
            lines.append(
                f"  FAILED {failure.signature}{f' (known: {known})' if known else ''}: "
                f"{failure.message}"
            )
        lines += ["  " + c.describe().replace("\n", "\n  ") for c in self.commands]
        return "\n".join(lines)


def trial_count(template: Template, kind: str, mutation: str, trials: int) -> int:
    """``trials`` per cell; deletions stop at one per object (each deletes another one)."""
    if mutation == "delete":
        return min(trials, len(template.objects(kind)))
    return trials


def trial_rng(seed: int, kind: str, mutation: str, number: int) -> random.Random:
    return random.Random(f"{seed}/{kind}/{mutation}/{number}")


def choose_mutation(
    template: Template, kind: str, mutation: str, number: int, seed: int
) -> Mutation:
    """The object and offset of trial ``number`` of a cell, from its own RNG."""
    rng = trial_rng(seed, kind, mutation, number)
    objects = template.objects(kind)
    if mutation == "delete":
        order = list(objects)
        random.Random(f"{seed}/{kind}/delete").shuffle(order)
        return Mutation(kind, mutation, order[number % len(order)])
    target = rng.choice(objects)
    size = (template.repo / target).stat().st_size
    if mutation == "flip":
        return Mutation(
            kind, mutation, target, offset=rng.randrange(size), xor=rng.randrange(1, 256)
        )
    return Mutation(kind, mutation, target, length=rng.randrange(size))


def run_trial(
    template: Template,
    kind: str,
    mutation: str,
    number: int,
    *,
    seed: int,
    work: Path,
    plan: Mutation | None = None,
    keep: Callable[[Trial], bool] = lambda trial: bool(trial.failures),
) -> Trial:
    """One trial on a fresh copy of the template under ``work`` (removed afterwards unless
    ``keep`` says so); ``plan`` replaces the random choice (for deterministic tests)."""
    trial = Trial(kind, mutation, number, seed)
    start = time.monotonic()
    work.mkdir(parents=True)
    try:
        trial.plan = plan or choose_mutation(template, kind, mutation, number, seed)
        _Run(template, trial, work).run()
    except Exception:  # noqa: BLE001 - a harness error is a failure to report, not a crash
        trial.fail("harness error", traceback.format_exc())
    finally:
        trial.seconds = time.monotonic() - start
        if not keep(trial):
            shutil.rmtree(work, ignore_errors=True)
    return trial


class _Run:
    """The steps of one trial (see the module docstring)."""

    def __init__(self, template: Template, trial: Trial, work: Path) -> None:
        assert trial.plan is not None
        self.t = template
        self.trial = trial
        self.plan = trial.plan
        self.work = work
        self.repo = work / "repo"
        self.password = 0  # the password the checks and repairs use
        self.damaged_password: int | None = None  # a damaged key's own password
        self.original = b""
        self.lost: set[bytes] = set()
        self.expected: dict[str, dict[str, int | None]] = {}
        self.gone_snapshot: str | None = None  # a snapshot file the mutation destroys

    # -- helpers ------------------------------------------------------------------------------

    def ff(self, *args: str | os.PathLike[str], password: int | None = None) -> Command:
        which = self.password if password is None else password
        done = run_cli(self.repo, self.t.password_files[which], *args)
        self.trial.commands.append(done)
        if done.internal_error:
            self.trial.fail(
                "internal error", f"`{' '.join(done.args)}` raised an unexpected exception"
            )
        return done

    def name(self) -> str:
        return Path(self.plan.target).name

    # -- the trial ------------------------------------------------------------------------------

    def run(self) -> None:
        shutil.copytree(self.t.repo, self.repo, symlinks=True)
        target = self.repo / self.plan.target
        self.original = target.read_bytes()
        self.trial.size = len(self.original)
        self._expect()
        self.plan.apply(self.repo)
        if (self.trial.kind, self.trial.mutation) in NOT_APPLICABLE:
            self._not_applicable()
            return
        if not self._detect():
            return
        if self.trial.kind == "key":
            self._open_with_the_damaged_key()
        if self._repair():
            self._verify_after_repair()

    def _expect(self) -> None:
        """The region the mutation hits and what it destroys, from the template."""
        kind = self.trial.kind
        if kind == "key":
            which = self.t.key_names.index(self.name())
            self.damaged_password = which
            self.password = 1 - which
        if kind == "snapshot":
            self.gone_snapshot = self.name()
        if kind in ("config", "key"):
            self._json_region()
        elif kind in ("data pack", "tree pack"):
            self._pack_region()
        else:
            self._sealed_region()
        self.expected = self.t.damage(self.lost)

    def _json_region(self) -> None:
        """Config and key files are indented JSON, a field a line: name the field hit."""
        plan = self.plan
        if plan.mutation == "delete":
            self.trial.region = self.trial.region_class = "whole file"
            return
        at = plan.offset if plan.mutation == "flip" else plan.length
        assert at is not None
        field_name, part = json_field_at(self.original, at)
        verb = "in" if plan.mutation == "flip" else "cut in"
        self.trial.region = f"{verb} field {field_name!r} ({part})"
        self.trial.region_class = f"{field_name} {part}"
        if plan.mutation == "truncate":
            self.trial.region_class = "cut"

    def _sealed_region(self) -> None:
        """Index files, snapshots and locks are nonce || ciphertext || tag."""
        plan, size = self.plan, len(self.original)
        if plan.mutation == "delete":
            self.trial.region = self.trial.region_class = "whole file"
            return
        if plan.mutation == "truncate":
            self.trial.region = f"cut to {plan.length} of {size} bytes"
            self.trial.region_class = "cut"
            return
        assert plan.offset is not None
        where = "nonce" if plan.offset < NONCE else "tag" if plan.offset >= size - TAG else "body"
        self.trial.region = f"in the {where}"
        self.trial.region_class = where

    def _pack_region(self) -> None:
        plan = self.plan
        pack = self.t.packs[self.name()]
        bad: list[BlobInfo] = []
        if plan.mutation == "delete":
            bad = list(pack.blobs)
            self.trial.region = f"all {len(bad)} blobs"
            self.trial.region_class = "whole pack"
        elif plan.mutation == "flip":
            assert plan.offset is not None
            bad = [b for b in pack.blobs if b.offset <= plan.offset < b.offset + b.length]
            if bad:
                number = pack.blobs.index(bad[0]) + 1
                users = ", ".join(self.t.users[bad[0].blob_id])
                self.trial.region = (
                    f"in {bad[0].blob_type} blob {number}/{len(pack.blobs)} "
                    f"{bad[0].blob_id.hex()[:16]}, used by {users}"
                )
                self.trial.region_class = "blob"
            elif plan.offset >= pack.size - 4:
                self.trial.region = "in the trailer (the header's length)"
                self.trial.region_class = "trailer"
            else:
                self.trial.region = "in the encrypted header"
                self.trial.region_class = "header"
        else:
            assert plan.length is not None
            bad = [b for b in pack.blobs if b.offset + b.length > plan.length]
            where = "in the blobs" if plan.length < pack.header_start else "in the header"
            self.trial.region = f"cut {where}: {len(bad)} of {len(pack.blobs)} blobs lost"
            self.trial.region_class = "cut " + ("blobs" if bad else "header")
        self.lost = {
            b.blob_id for b in bad if all(p == pack.name for p in self.t.copies[b.blob_id])
        }

    # -- 1. detection -----------------------------------------------------------------------

    def _not_applicable(self) -> None:
        """An ordinary operation: check stays clean and the rest restores."""
        self.trial.not_applicable = True
        done = self.ff("check", "--read-data")
        if done.status != 0:
            self.trial.fail(
                "ordinary operation reported as damage",
                f"check --read-data exited {done.status} after `{self.plan.describe()}`, "
                f"which is what `{NOT_APPLICABLE[(self.trial.kind, self.trial.mutation)]}` does",
            )
            return
        self._verify_restores()

    def _detect(self) -> bool:
        done = self.ff("check", "--read-data")
        if done.status == 0:
            self.trial.fail("undetected", "check --read-data exited 0")
            return False
        self.trial.detected = True
        word = KIND_WORD[self.trial.kind]
        names: list[str] = []
        if self.trial.kind != "config":
            names = [self.name()[:8]]
        if self.trial.kind == "index" and self.trial.mutation == "delete":
            names = []  # the file is gone; check can name the packs it listed
            listed = self._packs_of_index()
            if not any(p[:8] in done.text for p in listed):
                self.trial.fail("not named", f"no pack of the lost index is named: {listed}")
        missing = [n for n in names if n not in done.text]
        if word not in done.text.lower() or missing:
            self.trial.fail(
                "not named",
                f"the output does not name the damaged {word} {' '.join(names)}".rstrip(),
            )
        doc = done.doc()
        expected = sorted((snap, path) for snap, paths in self.expected.items() for path in paths)
        if isinstance(doc, dict) and "damaged" in doc:
            got = sorted((d["snapshot"], d["path"]) for d in doc["damaged"])
            if got != expected:
                self.trial.fail(
                    "wrong damaged list",
                    f"expected {self._show(expected)}, check listed {self._show(got)}",
                )
        elif expected:
            self.trial.fail(
                "no damaged list", f"check printed no damaged list; expected {self._show(expected)}"
            )
        return True

    def _show(self, pairs: list[tuple[str, str]]) -> str:
        ordinal = {s.id: s.ordinal for s in self.t.snapshots}
        shown = [f"snapshot {ordinal.get(s, s[:8])} {p}" for s, p in pairs]
        return "[" + "; ".join(shown) + "]" if shown else "nothing"

    def _packs_of_index(self) -> list[str]:
        from freezeframe.repository.index import decode_index
        from freezeframe.repository.repository import Repository
        from freezeframe.storage.local import LocalStorage

        opened = Repository.open(LocalStorage(self.t.repo), PASSWORDS[0].encode(), load_index=False)
        try:
            return sorted(decode_index(self.original, opened.cipher, self.name()))
        finally:
            opened.close()

    def _open_with_the_damaged_key(self) -> None:
        """Its own password must give one clear line (exit 1), saying the key is damaged when
        the key material was hit; when only plain metadata was, it may still open."""
        assert self.damaged_password is not None
        done = self.ff("snapshots", password=self.damaged_password)
        mutated = (
            (self.repo / self.plan.target).read_bytes() if self.plan.mutation != "delete" else b""
        )
        material_hit = key_material(mutated) != key_material(self.original)
        if done.status == 0:
            if material_hit:
                self.trial.fail("opened with damaged key material", "the damaged key still opened")
            return
        lines = done.stderr.strip().splitlines()
        if done.status != 1 or len(lines) != 1:
            self.trial.fail(
                "own password: not one clear line",
                f"exit {done.status}, stderr has {len(lines)} lines",
            )
        elif material_hit and not ("damaged" in lines[0] and self.name()[:8] in lines[0]):
            self.trial.fail(
                "own password: does not say the key is damaged", f"the error was: {lines[0]}"
            )

    # -- 2. repair ------------------------------------------------------------------------------

    def _repair(self) -> bool:
        kind = self.trial.kind
        steps: list[tuple[str, ...]]
        if kind == "config":
            steps = [("repair", "config")]
        elif kind == "key":
            steps = [("key", "remove", self.name()[:8])]
        elif kind == "index":
            steps = [("repair", "index")]
        elif kind == "snapshot":
            steps = [("repair", "snapshots", "--forget")]
        elif kind == "lock":
            steps = [("unlock",)]
        else:
            steps = [
                ("repair", "index"),
                ("repair", "packs"),
                ("repair", "snapshots", "--forget"),
                ("prune",),
            ]
        for step in steps:
            done = self.ff(*step)
            if done.status != 0:
                self.trial.fail("repair failed", f"`{' '.join(step)}` exited {done.status}")
                return False
            if step[:2] == ("repair", "snapshots"):
                self._check_snapshot_repair(done.doc())
        return True

    def _check_snapshot_repair(self, doc: Any) -> None:
        """What ``repair snapshots --forget`` did must be what the template predicts."""
        if not isinstance(doc, dict):
            self.trial.fail("repair snapshots printed no JSON", "")
            return
        changes: dict[str, dict[str, str]] = {}
        for fix in doc.get("repaired", []):
            changes[fix["original"]] = {c["path"]: c["what"] for c in fix["changes"]}
        predicted = {
            snap: {
                path: ("directory" if length is None else "truncated") for path, length in p.items()
            }
            for snap, p in self.expected.items()
        }
        got = {
            snap: {
                path: (
                    "directory"
                    if "directory" in what
                    else "truncated"
                    if "truncated" in what
                    else what
                )
                for path, what in paths.items()
            }
            for snap, paths in changes.items()
        }
        if got != predicted:
            self.trial.fail(
                "repair snapshots changed something else",
                f"predicted {predicted}, repair reported {got}",
            )
        forgotten = set(doc.get("forgotten", []))
        doomed = set(self.expected) | ({self.gone_snapshot} if self.gone_snapshot else set())
        if forgotten != doomed:
            self.trial.fail(
                "repair snapshots forgot something else",
                f"expected to forget {sorted(doomed)}, it forgot {sorted(forgotten)}",
            )

    def _verify_after_repair(self) -> None:
        done = self.ff("check", "--read-data")
        if done.status != 0:
            self.trial.fail("not clean after repair", f"check --read-data exited {done.status}")
            return
        if self._verify_restores():
            self.trial.repaired = True

    # -- restores -------------------------------------------------------------------------------

    def _verify_restores(self) -> bool:
        """Every surviving snapshot restores as predicted; returns whether all did."""
        listing = self.ff("snapshots")
        docs = listing.doc()
        if listing.status != 0 or not isinstance(docs, list):
            self.trial.fail("snapshots failed", f"exit {listing.status}")
            return False
        present = {d["id"]: d for d in docs}
        originals = {s.id for s in self.t.snapshots}
        gone = {self.gone_snapshot} if self.gone_snapshot else set()
        want_originals = originals - gone - set(self.expected)
        repaired = {
            d["id"]: d["repair"]["original"]
            for d in docs
            if isinstance(d.get("repair"), dict) and "original" in d["repair"]
        }
        want_repaired = {
            snap
            for snap, paths in self.expected.items()
            if not any(p == "/" for p, length in paths.items() if length is None)
        }
        ok = True
        if (
            set(present) - set(repaired) != want_originals
            or set(repaired.values()) != want_repaired
        ):
            self.trial.fail(
                "wrong snapshots after repair",
                f"expected originals {sorted(want_originals)} and repairs of "
                f"{sorted(want_repaired)}; found {sorted(present)} (repairs: {repaired})",
            )
            ok = False
        for snapshot_id in sorted(present):
            original = repaired.get(snapshot_id, snapshot_id)
            if original not in originals:
                continue
            lost = self.expected.get(original, {}) if snapshot_id in repaired else {}
            ok &= self._restore(snapshot_id, self.t.snapshot(original), lost)
        return ok

    def _restore(self, snapshot_id: str, info: SnapshotInfo, lost: dict[str, int | None]) -> bool:
        target = self.work / "restore" / snapshot_id[:12]
        done = self.ff("restore", snapshot_id, "--target", target)
        if done.status != 0:
            self.trial.fail(
                "restore failed", f"restore of snapshot {info.ordinal} exited {done.status}"
            )
            return False
        problems = []
        for source in info.sources:
            restored = target / Path(source.path).relative_to("/")
            problems += [f"{source.path}: {p}" for p in compare_restore(source, restored, lost)]
        shutil.rmtree(target, ignore_errors=True)
        if problems:
            what = "repaired snapshot of" if lost else "snapshot"
            self.trial.fail(
                "restore differs",
                f"{what} {info.ordinal} differs from its source: " + "; ".join(problems[:20]),
            )
            return False
        return True


def compare_restore(source: Source, restored: Path, lost: dict[str, int | None]) -> list[str]:
    """Differences between a restored source and its reference copy, once the directories
    ``lost`` maps to None are taken away and the files it maps to a length are cut there."""

    def absolute(rel: bytes) -> str:
        return source.path if rel == b"." else f"{source.path}/{os.fsdecode(rel)}"

    def removed(path: str) -> bool:
        return any(
            length is None and (path == gone or path.startswith(gone.rstrip("/") + "/"))
            for gone, length in lost.items()
        )

    want: dict[bytes, Entry] = {}
    problems = []
    for rel, entry in tree_manifest(source.reference).items():
        path = absolute(rel)
        if removed(path):
            continue
        cut = lost.get(path)
        if cut is not None:
            original = (source.reference / os.fsdecode(rel)).read_bytes()
            prefix = original[:cut]
            want[rel] = entry._replace(size=len(prefix), sha256=hashlib.sha256(prefix).hexdigest())
        else:
            want[rel] = entry
    got = tree_manifest(restored) if os.path.lexists(restored) else {}
    problems += manifest_differences(want, got)
    return problems


# ---------------------------------------------------------------------------------------------
# Regions of plaintext JSON objects


_FIELD = re.compile(rb'^(\s*)"([^"]+)":\s*(.*?),?\s*$')


def json_field_at(data: bytes, offset: int) -> tuple[str, str]:
    """The field of indented JSON whose line holds ``offset``, and whether the offset is in
    its name, its value or the punctuation around them."""
    start = data.rfind(b"\n", 0, offset) + 1
    end = data.find(b"\n", offset)
    line = data[start : end if end >= 0 else len(data)]
    match = _FIELD.match(line)
    if match is None:
        return "structure", "punctuation"
    at = offset - start
    name_start = len(match.group(1)) + 1
    name_end = name_start + len(match.group(2))
    if name_start <= at < name_end:
        return match.group(2).decode(), "name"
    value_start = match.start(3)
    if value_start <= at < match.end(3):
        return match.group(2).decode(), "value"
    return match.group(2).decode(), "punctuation"


def field_offset(data: bytes, name: str, *, skip: int = 0) -> int:
    """The offset of the first byte of field ``name``'s value (plus ``skip``) in indented
    JSON; for deterministic trials that hit one field."""
    match = re.search(rb'"' + re.escape(name.encode()) + rb'":\s*"?', data)
    assert match is not None, f"no field {name}"
    return match.end() + skip


def key_material(data: bytes) -> tuple[Any, ...] | None:
    """What a key file's password unwraps (KDF parameters, salt, wrapped key) as bytes and
    numbers, or None when that cannot be read."""
    import base64

    try:
        doc = json.loads(data)
        kdf = doc["kdf"]
        return (
            kdf["time_cost"],
            kdf["memory_kib"],
            kdf["parallelism"],
            base64.b64decode(kdf["salt"], validate=True),
            base64.b64decode(doc["data"], validate=True),
        )
    except (ValueError, KeyError, TypeError):
        return None


# ---------------------------------------------------------------------------------------------
# The tally


@dataclass
class Cell:
    """The trials of one kind and mutation."""

    trials: int = 0
    detected: int = 0
    repaired: int = 0
    not_applicable: int = 0
    failed: int = 0
    known: int = 0  # failed only with known defects
    seconds: float = 0.0
    failures: list[Trial] = field(default_factory=list)

    def add(self, trial: Trial) -> None:
        self.trials += 1
        self.detected += trial.detected
        self.repaired += trial.repaired and not trial.failures
        self.not_applicable += trial.not_applicable
        self.failed += bool(trial.failures)
        self.known += trial.known_only
        self.seconds += trial.seconds
        if trial.failures:
            self.failures.append(trial)


@dataclass
class Tally:
    seed: int
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)

    def add(self, trial: Trial) -> None:
        self.cells.setdefault((trial.kind, trial.mutation), Cell()).add(trial)

    def rows(self) -> Iterator[tuple[str, str, Cell]]:
        for kind, mutation in CELLS:
            if (kind, mutation) in self.cells:
                yield kind, mutation, self.cells[(kind, mutation)]

    def table(self) -> list[str]:
        lines = [
            f"{'kind':<10} {'mutation':<9} {'trials':>6} {'detected':>8} {'repaired':>8} "
            f"{'n/a':>4} {'failed':>6} {'(known)':>7} {'seconds':>7}"
        ]
        for kind, mutation, c in self.rows():
            lines.append(
                f"{kind:<10} {mutation:<9} {c.trials:>6} {c.detected:>8} {c.repaired:>8} "
                f"{c.not_applicable:>4} {c.failed:>6} {c.known:>7} {c.seconds:>7.1f}"
            )
        for (kind, mutation), operation in NOT_APPLICABLE.items():
            if (kind, mutation) in self.cells:
                lines.append(
                    f"{kind} {mutation}: not applicable (indistinguishable from {operation})"
                )
        return lines

    def signatures(self) -> dict[str, list[Trial]]:
        """Each distinct failure with the trials that showed it."""
        found: dict[str, list[Trial]] = {}
        for _kind, _mutation, cell in self.rows():
            for trial in cell.failures:
                for signature in dict.fromkeys(f.signature for f in trial.failures):
                    found.setdefault(signature, []).append(trial)
        return dict(sorted(found.items()))

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "cells": [
                {
                    "kind": kind,
                    "mutation": mutation,
                    "trials": c.trials,
                    "detected": c.detected,
                    "repaired_and_restorable": c.repaired,
                    "not_applicable": c.not_applicable,
                    "failed": c.failed,
                    "failed_known_defects": c.known,
                    "seconds": round(c.seconds, 2),
                    "not_applicable_because": NOT_APPLICABLE.get((kind, mutation)),
                }
                for kind, mutation, c in self.rows()
            ],
            "failures": [
                {
                    "signature": signature,
                    "known_defect": KNOWN.get(signature),
                    "trials": len(trials),
                    "example": trials[0].describe(),
                }
                for signature, trials in self.signatures().items()
            ],
        }
