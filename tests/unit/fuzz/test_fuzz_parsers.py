"""Fuzzing of every parser of repository objects, the plans file and the guest hook's messages.

The promise: damaged input gives a documented error (a FreezeframeError; UsageError for the
plans file and the guest config, a one-line message), or for the local files cache and the
guest hook's JSON documents no error at all (they are read as "missing"), never another
exception, a hang or a huge allocation. Inputs are real objects from the project's encoders,
damaged by ``fuzzkit``; the executions per parser are printed in the terminal summary.

Each defect the fuzzing found is also reproduced by one small test at the end of this module.
"""

from __future__ import annotations

import base64
import json
import math
import os
import socket
import struct
import time
import tomllib
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar, cast

import fuzzkit
import pytest
import zstandard
from fuzzkit import exercise, fuzz, json_inputs, mutated_bytes, mutated_documents, mutated_toml
from hypothesis import given
from hypothesis import strategies as st

from freezeframe.backup.files_cache import FilesCache
from freezeframe.cli import backup_vm as cli_backup_vm
from freezeframe.cli import cmd_doctor, cmd_guest_hook
from freezeframe.errors import FreezeframeError, IntegrityError, UsageError
from freezeframe.guest import config as guest_config
from freezeframe.guest import hook, protocol
from freezeframe.plans import config as plans_config
from freezeframe.repository.compression import compress, decompress
from freezeframe.repository.config import ChunkerParams, RepositoryConfig
from freezeframe.repository.crypto import Cipher
from freezeframe.repository.index import INDEX_AAD, decode_index, encode_index
from freezeframe.repository.keys import KdfParams, KeyFile, MasterKey
from freezeframe.repository.locks import parse_lock
from freezeframe.repository.pack import (
    HEADER_AAD,
    BlobType,
    PackEntry,
    blob_aad,
    decode_header,
    encode_header,
)
from freezeframe.repository.snapshot import (
    ConsistencyReport,
    Snapshot,
    list_snapshots,
    load_snapshot,
    save_snapshot,
)
from freezeframe.repository.tree import Node, decode_tree, encode_tree
from freezeframe.service.backup import VmBackupResult
from freezeframe.storage.base import Kind
from freezeframe.vm import guestfreeze, reach

PASSWORD = b"correct horse battery staple"
CIPHER = Cipher(os.urandom(32))
SNAPSHOT_ID = "5e" * 32


def _id() -> bytes:
    return os.urandom(32)


# ---------------------------------------------------------------------------------------------
# Seeds: real objects from the project's encoders


def _configs() -> list[RepositoryConfig]:
    """A new config as init writes it (sealed with a MAC where the format has one), one with
    other parameters, and one of format version 1 (no MAC)."""
    other = RepositoryConfig(
        os.urandom(32).hex(),
        "2026-11-25T09:00:00+00:00",
        ChunkerParams(64 * 1024, 128 * 1024, 1024 * 1024),
        4 * 1024 * 1024,
    )
    configs = [RepositoryConfig.new(), other]
    seal = getattr(RepositoryConfig, "sealed", None)
    if seal is not None:
        configs = [seal(c, os.urandom(32)) for c in configs]
        configs.append(replace(other, version=1))
    return configs


CONFIGS = _configs()
CONFIG_DOCS = [json.loads(c.to_bytes()) for c in CONFIGS]

CHEAP_KDF = KdfParams(time_cost=1, memory_kib=8, parallelism=1)
MASTER = MasterKey(CONFIGS[0].repository_id, os.urandom(32), os.urandom(32), 0x1234567)
KEY_FILE = KeyFile.wrap(MASTER, PASSWORD, CHEAP_KDF)
KEY_DOC = json.loads(KEY_FILE.to_bytes())
KEK = CHEAP_KDF.derive(PASSWORD, KEY_FILE.salt)
MASTER_DOC = json.loads(MASTER.to_bytes())
MASTER_DOCS = [MASTER_DOC, {**MASTER_DOC, "config_format": 2}]  # a key for a sealed config


def _entries(blob_type: BlobType, count: int) -> list[PackEntry]:
    return [PackEntry(blob_type, _id(), i * 1000, 1000 - i, 4000 + i) for i in range(count)]


INDEX_PACKS = [
    {
        os.urandom(32).hex(): _entries(BlobType.DATA, 3),
        os.urandom(32).hex(): _entries(BlobType.TREE, 1),
    },
    {os.urandom(32).hex(): _entries(BlobType.DATA, 5), os.urandom(32).hex(): []},
]
INDEX_STORED = [encode_index(p, CIPHER) for p in INDEX_PACKS]
INDEX_STORED.append(  # a mark file (format 2), which decode_index reads as its live packs
    encode_index(INDEX_PACKS[0], CIPHER, marked=INDEX_PACKS[1], mark_time=1.0e9)
)
INDEX_FRAMES = [CIPHER.decrypt(s, INDEX_AAD) for s in INDEX_STORED]
INDEX_BINARY = [zstandard.ZstdDecompressor().decompress(f) for f in INDEX_FRAMES]


def _pack(blob_type: BlobType, contents: list[bytes]) -> tuple[bytes, bytes]:
    """A real pack (blob area and header) and its header's plaintext."""
    blobs, entries, offset = [], [], 0
    for content in contents:
        blob_id = _id()
        stored = CIPHER.encrypt(compress(content), blob_aad(blob_type, blob_id))
        blobs.append(stored)
        entries.append(PackEntry(blob_type, blob_id, offset, len(stored), len(content)))
        offset += len(stored)
    pack = b"".join(blobs) + encode_header(entries, CIPHER)
    (length,) = struct.unpack_from("<I", pack, len(pack) - 4)
    plain = CIPHER.decrypt(pack[len(pack) - 4 - length : -4], HEADER_AAD)
    return pack, plain


PACKS = [
    _pack(BlobType.DATA, [b"a" * 3000, os.urandom(500), b""]),
    _pack(BlobType.TREE, [b'{"nodes":[]}']),
    _pack(BlobType.DATA, []),
]
PACK_BYTES = [p for p, _ in PACKS]
PACK_HEADERS = [h for _, h in PACKS]


def _blob_area(pack: bytes) -> bytes:
    (length,) = struct.unpack_from("<I", pack, len(pack) - 4)
    return pack[: len(pack) - 4 - length]


NS = 1_764_061_200_123_456_789
NODES = [
    Node(
        b"file.txt",
        "file",
        0o644,
        1000,
        1000,
        NS,
        "alice",
        "staff",
        NS,
        NS,
        5000,
        content=[_id(), _id()],
    ),
    Node(
        b"sparse",
        "file",
        0o600,
        0,
        0,
        NS,
        size=1 << 30,
        content=[_id()],
        sparse_map=[(0, 4096), (1 << 20, 4096)],
    ),
    Node(b"link1", "file", 0o644, 0, 0, NS, size=0, inode=42, device=2049, links=2),
    Node(
        b"dir",
        "dir",
        0o2755,
        0,
        0,
        NS,
        subtree=_id(),
        xattrs={b"user.note": b"\x00\xff", b"system.posix_acl_access": b"\x02\x00\x00\x00"},
    ),
    Node(b"caf\xe9", "symlink", 0o777, 0, 0, NS, linktarget=b"../t\xff"),
    Node(b"tty", "chardev", 0o620, 0, 5, NS, rdev=0x0501),
    Node(b"pipe", "fifo", 0o600, 0, 0, NS),
]
TREE_DOCS = [json.loads(encode_tree(NODES)), json.loads(encode_tree(NODES[:2])), {"nodes": []}]
NODE_DOCS = TREE_DOCS[0]["nodes"]

SNAPSHOT = Snapshot(
    time=datetime(2026, 11, 25, 9, 0, 0, 123456, tzinfo=UTC),
    host="db1",
    user="root",
    paths=["/srv/data"],
    tree=_id(),
    program_version="freezeframe 0.1.0",
    tags=["nightly"],
    excludes=["*.tmp"],
    summary={"files_new": 10, "bytes_read": 1234, "duration_seconds": 0.5, "errors": 0},
    consistency=ConsistencyReport(
        requested="application",
        achieved="filesystem",
        volumes=[{"path": "/srv/data", "provider": "btrfs", "freeze_ms": 1.5}],
        changed_during_read=["/srv/data/log"],
        reason="no quiescer",
        pause={"window_ms": 3.0, "cap_s": 10.0, "writers": [{"pid": 1, "comm": "pg"}]},
        quiesce={"window_ms": 2.0, "cap_s": 60.0, "quiescers": [{"kind": "sqlite"}]},
    ),
    parent="ab" * 32,
)
SNAPSHOT_DOC = SNAPSHOT.to_json()
SNAPSHOT_BYTES = json.dumps(SNAPSHOT_DOC, sort_keys=True).encode()

LOCK_DOC = {
    "time": time.time(),  # fresh, so is_stale asks about the process
    "exclusive": False,
    "host": socket.gethostname(),  # this host: is_stale asks whether the pid lives
    "pid": os.getpid(),
    "user": "root",
}

PLANS_TOML = [
    # docs/operations.md, without the time zone (the machine may have no tzdata)
    """[state]
path = "/var/lib/freezeframe/state.db"

[agent]
metrics_listen = "127.0.0.1:9884"
metrics_textfile = "/var/lib/node_exporter/freezeframe.prom"
overdue_grace_s = 3600

[smtp]
host = "mail.example.org"
port = 587
starttls = true
username = "backup"
password_file = "/etc/freezeframe/smtp.pw"
sender = "backup@example.org"

[plans.db]
repository = "/srv/backup/repo"
password_file = "/etc/freezeframe/repo.pw"
sources = ["/srv/pg"]
excludes = ["*.tmp"]
vms = []
consistency = "application"
fallback = "fail"
quiesce = ["postgresql:host=/run/postgresql dbname=postgres"]
quiesce_cap_s = 60
schedule = ["0 2 * * *", "0 14 * * *"]
timezone = "UTC"
catch_up = true
overlap = "skip"
tags = ["nightly"]

[plans.db.retention]
keep_last = 3
keep_daily = 7
keep_weekly = 4
keep_within = "30d"
prune = true

[plans.db.check]
schedule = ["0 4 * * 0"]
read_data_subset = "10%"

[plans.db.hooks]
before = ["/usr/local/bin/prepare"]
after = ["/usr/local/bin/report-ok"]
on_error = ["/usr/local/bin/page-me"]
timeout_s = 600

[plans.db.notify]
webhook = ["https://hooks.example.org/backup"]
email = ["admin@example.org"]
ping = "https://hc-ping.com/UUID"
on = ["failed", "degraded", "overdue"]
""",
    # README.md
    """# /etc/freezeframe/plans.toml
[plans.db]
repository = "/srv/backup/repo"
password_file = "/etc/freezeframe/repo.pw"
sources = ["/srv/pg"]
consistency = "application"
quiesce = ["postgresql:host=/run/postgresql dbname=postgres"]
schedule = ["0 2 * * *"]
[plans.db.retention]
keep_daily = 7
keep_weekly = 4
[plans.db.notify]
webhook = ["https://hooks.example.org/backup"]
""",
    """[plans.vm1]
repository = "/srv/backup/vms"
vms = ["qmp:/run/vm1/qmp.sock,qga=/run/vm1/qga.sock,name=vm1"]
schedule = ["@daily", "*/15 9-17 * * 1-5"]
freeze_cap_s = 10
fallback = "degrade"
""",
]

GUEST_TOML = [
    # docs/vm.md
    """cap_s = 60
timeout_s = 30
quiesce = ["postgresql:host=/run/postgresql dbname=postgres user=postgres"]
""",
    """cap_s = 12.5
quiesce = ["sqlite:/srv/app.db", "script:/etc/freezeframe/hold.d"]
""",
]

RUN_ID = "1a2b3c4d"
REQUEST_DOC = {"run": RUN_ID, "cap_s": 60.0}
HOLD_DOC = {
    "window_ms": 12.345,
    "cap_s": 60.0,
    "quiescers": [
        {
            "kind": "postgresql",
            "target": "host=/run/postgresql dbname=postgres",
            "positions": {"lsn": "0/3000028"},
            "freeze_ms": 8.5,
            "result": "ok",
            "thaw_ms": 1.25,
            "pause_ms": 40.0,
        }
    ],
}
STATE_DOCS = [
    {"run": RUN_ID, "phase": "released", "in_time": True, "hold": HOLD_DOC},
    {"run": RUN_ID, "phase": "held", "in_time": True, "hold": HOLD_DOC},
    {"run": RUN_ID, "phase": "failed", "in_time": False, "error": "connection refused"},
]
INSTALLED_DOC = {
    "version": "0.1.0",
    "hook": protocol.HOOK_PATH,
    "config": protocol.CONFIG_PATH,
    "quiescers": ["postgresql", "sqlite"],
    "cap_s": 60.0,
}
GUEST_DOCS = [REQUEST_DOC, *STATE_DOCS, INSTALLED_DOC]


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


class FakeAgent:
    """The guest agent as vm/reach.py and vm/guestfreeze.py use it: the guest's files are
    whatever the test says."""

    files: ClassVar[dict[str, bytes | None]] = {}

    def __init__(self, path: str, timeout_s: float | None = None) -> None:
        pass

    def __enter__(self) -> FakeAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def execute(self, command: str, arguments: object = None, timeout_s: float = 0) -> Any:
        return "thawed" if command == "guest-fsfreeze-status" else {}

    def read_file(self, path: str, limit: int = 1 << 20) -> bytes | None:
        return self.files.get(path)


@pytest.fixture(scope="module")
def fake_agent() -> Iterator[type[FakeAgent]]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reach, "GuestAgent", FakeAgent)
        patch.setattr(guestfreeze, "GuestAgent", FakeAgent)
        yield FakeAgent


# ---------------------------------------------------------------------------------------------
# Repository config and keys


@fuzz
@given(json_inputs(CONFIG_DOCS))
def test_config_from_bytes(data: bytes) -> None:
    exercise("config.from_bytes", lambda: RepositoryConfig.from_bytes(data), data)


@fuzz
@given(json_inputs([KEY_DOC]))
def test_key_file_from_bytes(data: bytes) -> None:
    exercise("keys.KeyFile.from_bytes", lambda: KeyFile.from_bytes(data, "k" * 64), data)


def _cheap(kdf: KdfParams) -> bool:
    """Whether deriving with these parameters is quick (other types fail at once anyway)."""
    bounds = ((kdf.time_cost, 8), (kdf.memory_kib, 1 << 16), (kdf.parallelism, 64))
    return not any(isinstance(v, int | float) and v > bound for v, bound in bounds)


@st.composite
def _key_files(draw: st.DrawFn) -> bytes:
    """The real key file with its wrapped master key damaged, or damaged anywhere."""
    if draw(st.booleans()):
        doc = dict(KEY_DOC)
        doc["data"] = base64.b64encode(draw(mutated_bytes([KEY_FILE.wrapped]))).decode()
        return json.dumps(doc).encode()
    return draw(json_inputs([KEY_DOC]))


@fuzz
@given(_key_files())
def test_key_file_unwrap(data: bytes) -> None:
    try:
        key = KeyFile.from_bytes(data, "k" * 64)
    except Exception:  # noqa: BLE001 - test_key_file_from_bytes judges the parse
        return
    if not _cheap(key.kdf):
        fuzzkit.tally("keys.KeyFile.unwrap").skipped += 1
        return
    master = exercise("keys.KeyFile.unwrap", lambda: key.unwrap(PASSWORD), data)
    assert master is None or key.wrapped == KEY_FILE.wrapped, "a damaged key unwrapped"


@fuzz
@given(json_inputs(MASTER_DOCS))
def test_master_key_from_bytes(data: bytes) -> None:
    exercise("keys.MasterKey.from_bytes", lambda: MasterKey.from_bytes(data), data)
    # The same plaintext, validly wrapped: what unwrap makes of it.
    wrapped = Cipher(KEK).encrypt(data, b"freezeframe-key")
    key = KeyFile(CHEAP_KDF, KEY_FILE.salt, wrapped, "h", "u", "")
    exercise("keys.unwrap(mutated master key)", lambda: key.unwrap(PASSWORD), data)


# ---------------------------------------------------------------------------------------------
# Index


@fuzz
@given(mutated_bytes(INDEX_STORED))
def test_index_stored_bytes(data: bytes) -> None:
    result = exercise("index.decode_index(stored)", lambda: decode_index(data, CIPHER, "i"), data)
    assert result is None or data in INDEX_STORED, "a damaged index passed authentication"


@fuzz
@given(mutated_bytes(INDEX_FRAMES))
def test_index_zstd_frame(frame: bytes) -> None:
    data = CIPHER.encrypt(frame, INDEX_AAD)
    exercise("index.decode_index(zstd frame)", lambda: decode_index(data, CIPHER, "i"), frame)


@fuzz
@given(mutated_bytes(INDEX_BINARY))
def test_index_binary(plain: bytes) -> None:
    data = CIPHER.encrypt(zstandard.ZstdCompressor(level=3).compress(plain), INDEX_AAD)
    exercise("index.decode_index(binary)", lambda: decode_index(data, CIPHER, "i"), plain)


# ---------------------------------------------------------------------------------------------
# Packs


@fuzz
@given(mutated_bytes(PACK_BYTES))
def test_pack_bytes(pack: bytes) -> None:
    exercise("pack.decode_header(pack)", lambda: decode_header(pack, CIPHER, "p"), pack)


@fuzz
@given(st.sampled_from(PACK_BYTES), mutated_bytes(PACK_HEADERS))
def test_pack_header_plaintext(seed: bytes, header: bytes) -> None:
    sealed = CIPHER.encrypt(header, HEADER_AAD)
    pack = _blob_area(seed) + sealed + struct.pack("<I", len(sealed))
    exercise("pack.decode_header(header)", lambda: decode_header(pack, CIPHER, "p"), header)


# ---------------------------------------------------------------------------------------------
# Trees, snapshots, locks, blobs


@fuzz
@given(json_inputs(TREE_DOCS))
def test_decode_tree(data: bytes) -> None:
    # A tree that parses must also encode again (check, prune and restore rewrite and walk it).
    exercise("tree.decode_tree", lambda: encode_tree(decode_tree(data)), data)


@fuzz
@given(mutated_documents(NODE_DOCS))
def test_node_from_json(doc: Any) -> None:
    exercise("tree.Node.from_json", lambda: Node.from_json(doc).to_json(), doc)


@fuzz
@given(mutated_documents([SNAPSHOT_DOC]))
def test_snapshot_from_json(doc: Any) -> None:
    exercise("snapshot.Snapshot.from_json", lambda: Snapshot.from_json(doc, SNAPSHOT_ID), doc)


class StubRepository:
    """Only what the snapshot readers call: the files are already decrypted."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def load_file(self, kind: Kind, name: str, aad: bytes) -> bytes:
        return self.files[name]

    def list_names(self, kind: Kind) -> list[str]:
        return sorted(self.files)

    def warn(self, message: str) -> None:
        pass

    def save_file(self, kind: Kind, data: bytes, aad: bytes) -> str:
        name = f"{len(self.files):064x}"
        self.files[name] = data
        return name


@fuzz
@given(json_inputs([SNAPSHOT_DOC]))
def test_load_snapshot(data: bytes) -> None:
    repo = cast(Any, StubRepository({SNAPSHOT_ID: data, "ab" * 32: SNAPSHOT_BYTES}))

    def parse() -> None:
        snapshot = load_snapshot(repo, SNAPSHOT_ID)
        list_snapshots(repo)  # sorted by time with a good snapshot
        save_snapshot(cast(Any, StubRepository({})), snapshot)  # repair snapshots rewrites one

    exercise("snapshot.load_snapshot", parse, data)


@fuzz
@given(json_inputs([LOCK_DOC]))
def test_parse_lock(data: bytes) -> None:
    def parse() -> None:
        lock = parse_lock(data, "ab" * 32)
        lock.is_stale(time.time())  # what taking a lock asks of every other lock
        lock.describe()  # the RepositoryLocked message

    exercise("locks.parse_lock", parse, data)


BLOB_CONTENTS = [b"abc" * 1000, os.urandom(300), b""]  # zstd, raw (incompressible), empty
BLOBS = [compress(c) for c in BLOB_CONTENTS]
BLOB_LENGTHS = [len(c) for c in BLOB_CONTENTS]


@fuzz
@given(st.integers(0, len(BLOBS) - 1), st.data())
def test_decompress(which: int, data: st.DataObject) -> None:
    payload = data.draw(mutated_bytes([BLOBS[which], *BLOBS]))
    real = BLOB_LENGTHS[which]
    raw_length = data.draw(
        st.sampled_from((real, real + 1, max(real - 1, 0), 0, 2 * real, 1 << 20))
    )
    exercise("compression.decompress", lambda: decompress(payload, raw_length), payload)


# ---------------------------------------------------------------------------------------------
# The local files cache


@pytest.fixture(scope="module")
def files_cache(workdir: Path) -> tuple[bytes, list[tuple[bytes, os.stat_result, list[bytes]]]]:
    """A real cache file written by the class, and the files it knows."""
    known = []
    cache = FilesCache(workdir / "cache" / "files")
    for i, count in enumerate((2, 1, 0, 3)):
        path = workdir / f"file{i}"
        path.write_bytes(b"x" * (i * 100))
        st_ = os.stat(path)
        ids = [_id() for _ in range(count)]
        cache.remember(os.fsencode(path), st_, ids, has_xattrs=i == 1)
        known.append((os.fsencode(path), st_, ids))
    cache.save()
    return (workdir / "cache" / "files").read_bytes(), known


def _load_cache(
    workdir: Path, data: bytes, known: list[tuple[bytes, os.stat_result, list[bytes]]]
) -> None:
    """Load a damaged cache, look the files up, save it: no error, and no hit with content
    other than the file's own whose ids the index all knows (that would keep wrong data)."""
    path = workdir / "damaged" / "files"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    index = {i for _, _, ids in known for i in ids}
    cache = FilesCache(path)
    cache.load()
    for name, st_, ids in known:
        entry = cache.lookup(name, st_)
        cache.knows(name)
        if entry is not None and list(entry.content) != ids:
            assert not all(c in index for c in entry.content), f"wrong content for {name!r}"
    cache.save()


@fuzz
@given(st.data())
def test_files_cache_file(
    files_cache: tuple[bytes, list[Any]], workdir: Path, data: st.DataObject
) -> None:
    seed, known = files_cache
    damaged = data.draw(mutated_bytes([seed]))
    exercise("files_cache.load(file)", lambda: _load_cache(workdir, damaged, known), damaged, ())


@fuzz
@given(st.data())
def test_files_cache_content(
    files_cache: tuple[bytes, list[Any]], workdir: Path, data: st.DataObject
) -> None:
    seed, known = files_cache
    raw = data.draw(mutated_bytes([zstandard.ZstdDecompressor().decompress(seed)]))
    damaged = zstandard.ZstdCompressor(level=1).compress(raw)
    exercise("files_cache.load(content)", lambda: _load_cache(workdir, damaged, known), raw, ())


# ---------------------------------------------------------------------------------------------
# Plans file and guest config


def test_the_seed_files_load(workdir: Path) -> None:
    """Mutating files that do not load in the first place would test little."""
    for i, text in enumerate(PLANS_TOML):
        (workdir / f"seed{i}.toml").write_text(text)
        plans_config.load(str(workdir / f"seed{i}.toml"))
    for i, text in enumerate(GUEST_TOML):
        (workdir / f"guest{i}.toml").write_text(text)
        guest_config.load(str(workdir / f"guest{i}.toml"))
    for seed in (*PLANS_TOML, *GUEST_TOML):
        assert tomllib.loads(fuzzkit.to_toml(tomllib.loads(seed))) == tomllib.loads(seed)


@fuzz
@given(mutated_toml(PLANS_TOML))
def test_plans_file(workdir: Path, data: bytes) -> None:
    path = workdir / "plans.toml"
    path.write_bytes(data)

    def parse() -> None:
        plans = plans_config.load(str(path))
        for plan in plans.plans.values():
            plan.retention.policy()  # what the runner asks after every run

    exercise("plans.config.load", parse, data, (UsageError,), fuzzkit.one_line)


@fuzz
@given(mutated_toml(GUEST_TOML))
def test_guest_config(workdir: Path, data: bytes) -> None:
    path = workdir / "guest.toml"
    path.write_bytes(data)
    exercise(
        "guest.config.load",
        lambda: guest_config.load(str(path)),
        data,
        (UsageError,),
        fuzzkit.one_line,
    )


# ---------------------------------------------------------------------------------------------
# The guest hook's messages


@fuzz
@given(json_inputs(GUEST_DOCS))
def test_guest_read_json(workdir: Path, data: bytes) -> None:
    path = workdir / "doc.json"
    path.write_bytes(data)

    def read() -> None:
        document = protocol.read_json(str(path))
        assert document is None or isinstance(document, dict)

    exercise("guest.protocol.read_json", read, data, ())


@fuzz
@given(json_inputs([REQUEST_DOC]))
def test_guest_request(workdir: Path, data: bytes) -> None:
    """The hook's side of the host's request: taken, then the cap it asks for."""
    directory = workdir / "request"
    directory.mkdir(exist_ok=True)
    (directory / protocol.REQUEST).write_bytes(data)

    def take() -> None:
        request = hook._take_request(str(directory))
        if request is not None:
            str(request.get("run", ""))
            cap_s = hook.requested_cap(request, 60.0)
            assert 0 < cap_s <= 60.0, cap_s

    exercise("guest.hook.request", take, data)


@fuzz
@given(json_inputs(STATE_DOCS), json_inputs([INSTALLED_DOC]))
def test_guest_state_in_the_guest(workdir: Path, state: bytes, installed: bytes) -> None:
    """``guest-hook thaw`` and ``guest-hook status`` on damaged state and installed files."""
    directory = workdir / "state"
    directory.mkdir(exist_ok=True)
    (directory / protocol.STATE).write_bytes(state)
    (directory / protocol.INSTALLED).write_bytes(installed)

    def show() -> None:
        doc = hook.thaw(str(directory), 0)
        cmd_guest_hook._text("thaw", doc)
        status = {
            "installed": protocol.read_json(str(directory / protocol.INSTALLED)),
            "last": protocol.read_json(str(directory / protocol.STATE)),
        }
        cmd_guest_hook._text("status", status)
        json.dumps(status, indent=2, default=str)

    exercise("guest.hook.thaw/status", show, (state, installed), ())


def _vm_result(quiesce: dict[str, Any]) -> VmBackupResult:
    summary = {
        "disks": 1,
        "bytes_read": 1 << 20,
        "bytes_total": 1 << 30,
        "bytes_added": 1 << 10,
        "duration_seconds": 2.5,
    }
    snapshot = Snapshot(
        time=datetime.now(UTC),
        host="h",
        user="u",
        paths=["/vm/vm1"],
        tree=_id(),
        program_version="freezeframe",
        summary=summary,
        consistency=ConsistencyReport(
            achieved="application", volumes=[{"freeze_ms": 3.0}], quiesce=quiesce
        ),
    )
    return VmBackupResult(snapshot)


@fuzz
@given(st.one_of(json_inputs(STATE_DOCS), st.none()))
def test_guest_state_on_the_host(fake_agent: type[FakeAgent], data: bytes | None) -> None:
    """The host's side: the state read back after the thaw, judged, recorded, shown."""
    spec = SimpleNamespace(qga="/run/vm1/qga.sock", name="vm1")
    fake_agent.files = {f"{protocol.STATE_DIR}/{protocol.STATE}": data}

    def judge() -> None:
        freeze = guestfreeze.GuestFreeze(cast(Any, spec), cast(Any, None), [], 10.0, RUN_ID)
        freeze.thaw()
        result = _vm_result(freeze.hold_report())
        cli_backup_vm.text_of([result])
        save_snapshot(cast(Any, StubRepository({})), result.snapshot)

    exercise("vm.guest state", judge, data, ())


@fuzz
@given(st.one_of(json_inputs([INSTALLED_DOC]), st.none()))
def test_guest_installed_on_the_host(fake_agent: type[FakeAgent], data: bytes | None) -> None:
    """The host's side of installed.json: the level reached, and ``doctor --vm``'s text."""
    spec = SimpleNamespace(qga="/run/vm1/qga.sock", name="vm1")
    fake_agent.files = {f"{protocol.STATE_DIR}/{protocol.INSTALLED}": data}

    def judge() -> None:
        top, reason = reach.reachable(cast(Any, spec))
        with FakeAgent("", 0) as agent:
            installed = reach.guest_hook(cast(Any, agent))
        rank = reach.LEVELS.index(top)
        vm = {
            "name": "vm1",
            "qemu": {"major": 8, "minor": 2, "micro": 1},
            "disks": [],
            "guest_agent": {"socket": spec.qga, "answers": True, "version": "8.2.1"},
            "guest_hook": installed or False,
            "reachable": list(reach.LEVELS[rank:]),
            "unreachable": {level: reason for level in reach.LEVELS[:rank]},
        }
        cmd_doctor._vm_text(vm)

    exercise("vm.guest installed", judge, data, ())


# ---------------------------------------------------------------------------------------------
# The seeds are what they claim to be


def test_the_repository_seeds_parse() -> None:
    """Fuzzing from seeds the parsers already refuse would test little (a format change, say)."""
    for config in CONFIGS:
        assert RepositoryConfig.from_bytes(config.to_bytes()) == config
    assert KeyFile.from_bytes(KEY_FILE.to_bytes(), "k").unwrap(PASSWORD) == MASTER
    assert [decode_index(s, CIPHER, "i") for s in INDEX_STORED] == [*INDEX_PACKS, INDEX_PACKS[0]]
    assert [len(decode_header(p, CIPHER, "p")) for p in PACK_BYTES] == [3, 1, 0]
    assert decode_tree(encode_tree(NODES)) == sorted(NODES, key=lambda n: n.name)
    repo = cast(Any, StubRepository({SNAPSHOT_ID: SNAPSHOT_BYTES}))
    assert load_snapshot(repo, SNAPSHOT_ID).to_json() == SNAPSHOT_DOC
    assert parse_lock(json.dumps(LOCK_DOC).encode(), "ab" * 32).pid == os.getpid()
    assert [decompress(b, n) for b, n in zip(BLOBS, BLOB_LENGTHS, strict=True)] == BLOB_CONTENTS
    assert BLOBS[0][0] == 1 and BLOBS[1][0] == 0  # both payload flags are seeded


# ---------------------------------------------------------------------------------------------
# Defects the fuzzing found and that are fixed: kept as plain regression tests


def _huge_frame(data: bytes, size: int = 2**40) -> bytes:
    frame = fuzzkit.declare_content_size(data, size)
    assert zstandard.frame_content_size(frame) == size
    return frame


def test_a_blob_frame_declaring_a_terabyte_is_refused_without_allocating_it() -> None:
    payload = b"\x01" + _huge_frame(compress(b"abc" * 1000)[1:])
    with pytest.raises(IntegrityError):  # was MemoryError
        decompress(payload, 3000)


def test_a_files_cache_declaring_a_terabyte_is_an_empty_cache(
    files_cache: tuple[bytes, list[Any]], workdir: Path
) -> None:
    path = workdir / "huge" / "files"
    path.parent.mkdir()
    path.write_bytes(_huge_frame(files_cache[0]))
    cache = FilesCache(path)
    cache.load()  # was MemoryError
    assert len(cache) == 0


@pytest.mark.parametrize(
    "doc",
    [
        None,
        [],
        {"value": 0},
        {**NODE_DOCS[0], "mode": 1e400},
        {**NODE_DOCS[3], "xattrs": [["!"]]},
        {**NODE_DOCS[0], "user": "\udcff"},  # parsed, then encode_tree failed
    ],
)
def test_a_malformed_node_is_an_integrity_error(doc: Any) -> None:
    with pytest.raises(IntegrityError):  # was TypeError, KeyError, OverflowError, ...
        Node.from_json(doc)


def test_a_tree_with_an_infinite_number_is_an_integrity_error() -> None:
    data = json.dumps({"nodes": [{**NODE_DOCS[0], "size": math.inf}]}).encode()
    with pytest.raises(IntegrityError):  # was OverflowError
        decode_tree(data)


@pytest.mark.parametrize(
    "text",
    [b"cap_s = 6\xff0\n", b"cap_s = " + b"9" * 5000 + b"\n", b"cap_s = 1" + b"0" * 400 + b"\n",
     b"cap_s = nan\n", b"cap_s = inf\n", b"quiesce = " + b"[" * 3000 + b"]" * 3000 + b"\n"],
)  # fmt: skip
def test_a_damaged_guest_config_is_a_usage_error(workdir: Path, text: bytes) -> None:
    path = workdir / "bad-guest.toml"
    path.write_bytes(text)
    with pytest.raises(UsageError) as raised:  # was UnicodeDecodeError, ValueError, ...
        guest_config.load(str(path))
    fuzzkit.one_line(raised.value)


@pytest.mark.parametrize(
    "line",
    ['repository = ' + "9" * 5000, "sources = " + "[" * 3000 + "]" * 3000,
     "quiesce_cap_s = inf", "freeze_cap_s = nan"],
)  # fmt: skip
def test_a_damaged_plans_file_is_a_usage_error(workdir: Path, line: str) -> None:
    path = workdir / "bad-plans.toml"
    path.write_text(f'[plans.a]\nsources = ["/x"]\n{line}\n')
    with pytest.raises(UsageError) as raised:  # was ValueError, RecursionError; inf accepted
        plans_config.load(str(path))
    fuzzkit.one_line(raised.value)


def test_a_deeply_nested_guest_document_reads_as_missing(workdir: Path) -> None:
    path = workdir / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    assert protocol.read_json(str(path)) is None  # was RecursionError


@pytest.mark.parametrize(
    ("cap_s", "expected"), [(None, 60.0), (0, 60.0), (12.5, 12.5), (600, 60.0), (10**400, 60.0)]
)
def test_the_cap_the_host_asks_for(cap_s: object, expected: float) -> None:
    assert hook.requested_cap({"run": RUN_ID, "cap_s": cap_s}, 60.0) == expected


@pytest.mark.parametrize("cap_s", [-1, "60", [60], True, math.nan, math.inf, {"s": 1}])
def test_a_request_with_a_bad_cap_is_refused(cap_s: object) -> None:
    with pytest.raises(UsageError):  # was ValueError/TypeError, or a negative cap taken
        hook.requested_cap({"run": RUN_ID, "cap_s": cap_s}, 60.0)


# ---------------------------------------------------------------------------------------------
# Defects the fuzzing found, each reproduced once


def _deep_json(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    "kdf", [{"salt": base64.b64encode(b"1234567").decode()}, {"memory_kib": 8, "parallelism": 2}]
)
def test_a_key_file_argon2_refuses_is_refused(kdf: dict[str, Any]) -> None:
    doc = {**KEY_DOC, "kdf": {**KEY_DOC["kdf"], **kdf}}
    with pytest.raises(FreezeframeError):
        KeyFile.from_bytes(json.dumps(doc).encode(), "k" * 64).unwrap(PASSWORD)


def test_an_index_frame_declaring_a_terabyte_is_an_integrity_error() -> None:
    data = CIPHER.encrypt(_huge_frame(INDEX_FRAMES[0]), INDEX_AAD)
    with pytest.raises(IntegrityError):
        decode_index(data, CIPHER, "i")


def _lock(**changes: Any) -> bytes:
    return json.dumps({**LOCK_DOC, "time": time.time(), **changes}).encode()


def test_a_deeply_nested_lock_is_an_integrity_error() -> None:
    with pytest.raises(IntegrityError):
        parse_lock(f'{{"time": {_deep_json()}}}'.encode(), "ab" * 32)


def _judge_lock(data: bytes) -> None:
    """Parse and use a lock as taking the repository lock does; only IntegrityError may come."""
    try:
        lock = parse_lock(data, "ab" * 32)
    except IntegrityError:
        return
    lock.is_stale(time.time())
    lock.describe()


def test_a_lock_with_a_huge_pid_is_judged() -> None:
    _judge_lock(_lock(pid=2**31))


def test_a_lock_from_the_far_future_is_judged() -> None:
    _judge_lock(_lock(time=1e20))


def test_a_snapshot_with_a_naive_time_does_not_break_the_listing() -> None:
    naive = json.dumps({**SNAPSHOT_DOC, "time": "2026-11-25T09:00:00"}).encode()
    repo = cast(Any, StubRepository({SNAPSHOT_ID: naive, "ab" * 32: SNAPSHOT_BYTES}))
    list_snapshots(repo)


def test_a_deeply_nested_snapshot_is_refused_or_shown() -> None:
    consistency = {**SNAPSHOT_DOC["consistency"], "volumes": json.loads(_deep_json(800))}
    doc = {**SNAPSHOT_DOC, "consistency": consistency}
    repo = cast(Any, StubRepository({SNAPSHOT_ID: json.dumps(doc).encode()}))
    try:
        snapshot = load_snapshot(repo, SNAPSHOT_ID)
    except IntegrityError:
        return
    json.dumps(snapshot.to_json())


def _host_reads_state(fake: type[FakeAgent], state: bytes) -> None:
    """What the host does with the guest's state.json after the thaw, up to the printed line."""
    fake.files = {f"{protocol.STATE_DIR}/{protocol.STATE}": state}
    spec = SimpleNamespace(qga="/run/vm1/qga.sock", name="vm1")
    freeze = guestfreeze.GuestFreeze(cast(Any, spec), cast(Any, None), [], 10.0, RUN_ID)
    freeze.thaw()
    result = _vm_result(freeze.hold_report())
    cli_backup_vm.text_of([result])
    save_snapshot(cast(Any, StubRepository({})), result.snapshot)


def _state(**hold: Any) -> bytes:
    return json.dumps({**STATE_DOCS[0], "hold": {**HOLD_DOC, **hold}}).encode()


def test_the_host_reads_a_deeply_nested_state(fake_agent: type[FakeAgent]) -> None:
    _host_reads_state(fake_agent, _deep_json().encode())


@pytest.mark.parametrize(
    "hold", [["window_ms", "cap_s"], 2.5, [[1, 2]], {"window_ms": 10**400}, {"cap_s": -(10**40)}]
)
def test_the_host_reads_a_state_whose_hold_is_not_an_object(
    fake_agent: type[FakeAgent], hold: Any
) -> None:
    _host_reads_state(fake_agent, json.dumps({**STATE_DOCS[0], "hold": hold}).encode())


def test_the_host_saves_a_state_with_a_deeply_nested_hold(fake_agent: type[FakeAgent]) -> None:
    _host_reads_state(fake_agent, _state(positions=json.loads(_deep_json(800))))


@pytest.mark.parametrize(
    "hold", [{"quiescers": ["postgresql"]}, {"quiescers": 7}, {"window_ms": "12"}]
)
def test_the_host_shows_a_state_with_odd_hold_values(
    fake_agent: type[FakeAgent], hold: dict[str, Any]
) -> None:
    _host_reads_state(fake_agent, _state(**hold))


@pytest.mark.parametrize("quiescers", [[1, "sqlite"], -1])
def test_doctor_shows_an_installed_document_with_odd_quiescers(quiescers: Any) -> None:
    vm = {
        "name": "vm1",
        "qemu": {},
        "disks": [],
        "guest_agent": {"socket": None},
        "guest_hook": {**INSTALLED_DOC, "quiescers": quiescers},
        "reachable": ["application", "filesystem", "crash"],
        "unreachable": {},
    }
    cmd_doctor._vm_text(vm)
