"""The repository: opens with a password, stores and loads blobs, indexes and snapshots.

This is the one object the backup, restore and maintenance code talks to; it hides packs, keys
and storage layout behind ``save_blob``/``load_blob`` and the snapshot calls.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TypeVar

from freezeframe.errors import (
    FreezeframeError,
    IntegrityError,
    NotFound,
    RepositoryExists,
    RepositoryNotFound,
    UnsupportedFormat,
    WrongPassword,
)
from freezeframe.repository.compression import compress, decompress
from freezeframe.repository.config import FORMAT_VERSION, RepositoryConfig
from freezeframe.repository.crypto import Cipher, IdHasher, config_mac_key, content_name
from freezeframe.repository.index import BlobLocation, Index, IndexFile, decode_index_file
from freezeframe.repository.keys import KdfParams, KeyFile, MasterKey
from freezeframe.repository.pack import BlobType, PackEntry, blob_aad, read_header
from freezeframe.repository.packer import Packer
from freezeframe.storage.base import Kind, ObjectInfo, Storage

_R = TypeVar("_R")
_T = TypeVar("_T")
Warn = Callable[[str], None]


class Repository:
    """An open repository. Safe to share between the threads of one backup or restore."""

    def __init__(
        self,
        storage: Storage,
        config: RepositoryConfig,
        master: MasterKey,
        key_name: str,
        warn: Warn | None = None,
    ) -> None:
        self.storage = storage
        self.config = config
        self.master = master
        self.key_name = key_name
        self.cipher = Cipher(master.encryption_key)
        self.hasher = IdHasher(master.id_key)
        self.index = Index()
        self.index_loaded = False
        self.damaged_index_files: dict[str, str] = {}
        """Index files that could not be read, with why; their packs are found by header."""
        self.warnings: list[str] = []
        self._warn_sink = warn
        self._pending: set[bytes] = set()
        self._pending_lock = threading.Lock()
        self._headers_scanned = False
        self._scan_lock = threading.Lock()
        self.packer = Packer(
            storage, self.cipher, self.index, config.pack_size, self._forget_pending
        )
        self.blobs_added = 0
        self.bytes_added_raw = 0

    def warn(self, message: str) -> None:
        """Tell the user something they should act on; each message once per run."""
        if message in self.warnings:
            return
        self.warnings.append(message)
        if self._warn_sink is not None:
            self._warn_sink(message)

    # -- opening ----------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        storage: Storage,
        password: bytes,
        kdf: KdfParams | None = None,
        *,
        group_readable: bool = False,
        warn: Warn | None = None,
        related_to: Repository | None = None,
    ) -> Repository:
        """Create a new repository with one key protected by ``password``.

        ``related_to``: take that repository's chunker parameters, chunker seed and id key (its
        encryption key and repository id stay this one's own), so the same data is cut into the
        same chunks with the same ids in both and ``copy`` moves blobs without re-hashing."""
        if storage.exists(Kind.CONFIG, "config"):
            raise RepositoryExists(f"a repository already exists at {storage.location}")
        notes = storage.create_layout(group_readable=group_readable)
        config = RepositoryConfig.new()
        master = MasterKey.generate(config.repository_id, config_format=FORMAT_VERSION)
        if related_to is not None:
            config = replace(config, chunker=related_to.config.chunker)
            master = replace(
                master,
                id_key=related_to.master.id_key,
                chunker_seed=related_to.master.chunker_seed,
            )
        key_name = add_key(storage, master, password, kdf or KdfParams())
        config = config.sealed(config_mac_key(master.encryption_key))
        storage.put(Kind.CONFIG, "config", config.to_bytes())
        repo = cls(storage, config, master, key_name, warn)
        for note in notes:
            repo.warn(note)
        return repo

    @classmethod
    def open(
        cls,
        storage: Storage,
        password: bytes,
        *,
        load_index: bool = True,
        warn: Warn | None = None,
    ) -> Repository:
        """Open with any key that accepts ``password``; WrongPassword if none does."""
        config = read_config(storage)
        master, key_name = unlock_master_key(storage, password)
        if master.repository_id != config.repository_id:
            # The config's MAC cannot tell which of the two is wrong: name both.
            raise IntegrityError(
                f"the repository config's id ({config.repository_id[:8]}) is not key "
                f"{key_name[:8]}'s ({master.repository_id[:8]}): the config is damaged "
                "(`freezeframe repair config` rewrites it) or the key belongs to another "
                "repository"
            )
        if master.config_format > config.version:
            raise IntegrityError(
                f"the repository config is format version {config.version} but its keys were "
                f"made for version {master.config_format}: it was replaced without the key "
                "(tampered); `freezeframe repair config` rewrites it"
            )
        config.verify(config_mac_key(master.encryption_key))
        if config.authenticated:
            # Keys written from now on (key add, key passwd) refuse a downgraded config.
            master = replace(master, config_format=max(master.config_format, config.version))
        repo = cls(storage, config, master, key_name, warn)
        if not config.authenticated:
            repo.warn(
                "the repository config is not authenticated (format version 1); "
                "`freezeframe migrate` upgrades the repository"
            )
        if load_index:
            repo.load_index()
        return repo

    def load_index(self) -> None:
        """Read every index file (in parallel: each is a small decrypt + decompress).

        A file that cannot be read stops nothing: it is skipped with one warning and the
        packs no readable index names are read by their headers instead, so every intact blob
        stays reachable until ``repair index`` writes a sound index again."""
        names = [info.name for info in self.storage.list(Kind.INDEX)]
        marked: dict[str, list[PackEntry]] = {}
        for name, found in zip(names, self._map(self._try_index_file, names), strict=True):
            if isinstance(found, str):
                self.damaged_index_files[name] = found
                continue
            for pack, entries in found.packs.items():
                self.index.add_pack(pack, entries)
            for pack, entries in found.marked.items():
                if entries or pack not in marked:
                    marked[pack] = entries
        live = self.index.pack_names()
        for pack, entries in marked.items():
            if pack not in live:  # named live anywhere, a pack is live
                self.index.add_marked_pack(pack, entries)
        self.index_loaded = True
        if self.damaged_index_files:
            count = len(self.damaged_index_files)
            first = next(iter(self.damaged_index_files.values()))
            self.warn(
                f"{count} index file{'s' if count > 1 else ''} cannot be read ({first}); the "
                "packs they listed are read from their headers instead; run "
                "`freezeframe repair index`"
            )
            self.index_unindexed_packs()

    def ensure_index(self) -> None:
        """Load the index unless loaded: commands that lock the repository load it only once
        they hold the lock, as a prune elsewhere rewrites it under its exclusive lock."""
        if not self.index_loaded:
            self.load_index()

    def read_index_file(self, name: str) -> dict[str, list[PackEntry]]:
        """The packs an index file names as live."""
        return self.read_index_file_marks(name).packs

    def read_index_file_marks(self, name: str) -> IndexFile:
        """An index file with the packs it marks for deletion."""
        return decode_index_file(self.storage.get(Kind.INDEX, name), self.cipher, name)

    def _try_index_file(self, name: str) -> IndexFile | str:
        try:
            return self.read_index_file_marks(name)
        except NotFound:
            return IndexFile({}, {})  # removed by a prune since the listing
        except FreezeframeError as exc:
            return str(exc)

    def index_unindexed_packs(self) -> int:
        """Add the blobs of every pack the index does not name, read from the pack headers
        (once per run); returns how many packs that added. A command that writes (``flush``)
        then writes an index file naming those packs too, before any snapshot can refer to
        their blobs; one that only reads writes nothing."""
        with self._scan_lock:
            if self._headers_scanned:
                return 0
            self._headers_scanned = True
            known = self.index.pack_names()
            unindexed = [info for info in self.storage.list(Kind.DATA) if info.name not in known]
            found = 0
            for info, entries in zip(
                unindexed, self._map(self._try_header, unindexed), strict=True
            ):
                if isinstance(entries, str):
                    self.warn(f"{entries}; its blobs cannot be found (`check --read-data`)")
                elif entries:
                    self.index.add_pack(info.name, entries)
                    self.packer.adopt(info.name, entries)
                    found += 1
            return found

    def _try_header(self, info: ObjectInfo) -> list[PackEntry] | str:
        try:
            return read_header(self.storage, self.cipher, info.name, info.size)
        except NotFound:
            return []
        except FreezeframeError as exc:
            return str(exc)

    def locate(self, blob_id: bytes) -> BlobLocation | None:
        """Where a stored blob is. A blob the index lacks may sit in a pack whose index file
        was lost: those packs' headers are read once, and the user is told to repair."""
        location = self.index.lookup(blob_id)
        if location is None and not self._headers_scanned and self.index_unindexed_packs():
            location = self.index.lookup(blob_id)
            if location is not None:
                self.warn(
                    f"blob {blob_id.hex()[:16]} is in pack {location.pack[:16]}, which no "
                    "index file names; run `freezeframe repair index`"
                )
        return location

    # -- blobs ------------------------------------------------------------------------------

    def blob_id(self, data: bytes | memoryview) -> bytes:
        return self.hasher.blob_id(data)

    def claim_blob(self, blob_id: bytes) -> bool:
        """Reserve a blob for storing; False when it is stored or being stored already."""
        with self._pending_lock:
            if blob_id in self.index or blob_id in self._pending:
                return False
            self._pending.add(blob_id)
            return True

    def store_claimed_blob(self, blob_type: BlobType, blob_id: bytes, data: bytes) -> None:
        """Compress, encrypt and pack a blob reserved with ``claim_blob`` (any thread)."""
        sealed = self.cipher.encrypt(compress(data), blob_aad(blob_type, blob_id))
        with self._pending_lock:
            self.blobs_added += 1
            self.bytes_added_raw += len(data)
        self.packer.add(blob_type, blob_id, sealed, len(data))

    def save_blob(self, blob_type: BlobType, data: bytes) -> tuple[bytes, bool]:
        """Store a blob unless an identical one exists; returns (id, whether it was added)."""
        blob_id = self.blob_id(data)
        if not self.claim_blob(blob_id):
            return blob_id, False
        self.store_claimed_blob(blob_type, blob_id, data)
        return blob_id, True

    def load_blob(self, blob_id: bytes, expected_type: BlobType | None = None) -> bytes:
        location = self.locate(blob_id)
        if location is None:
            raise NotFound(f"blob {blob_id.hex()[:16]} is not in the index")
        if expected_type is not None and location.blob_type != expected_type:
            raise IntegrityError(f"blob {blob_id.hex()[:16]} has the wrong type")
        stored = self.storage.get(Kind.DATA, location.pack, location.offset, location.length)
        return self.open_blob(stored, location.blob_type, blob_id, location.raw_length)

    def open_blob(self, stored: bytes, blob_type: BlobType, blob_id: bytes, raw: int) -> bytes:
        """Decrypt, decompress and verify a stored blob against its id."""
        what = f"blob {blob_id.hex()[:16]}"
        data = decompress(self.cipher.decrypt(stored, blob_aad(blob_type, blob_id), what), raw)
        if self.hasher.blob_id(data) != blob_id:
            raise IntegrityError(f"{what} does not match its id")
        return data

    def flush(self) -> None:
        """Make every blob saved so far durable and indexed."""
        self.packer.flush()

    def _forget_pending(self, entries: list[PackEntry]) -> None:
        with self._pending_lock:
            for entry in entries:
                self._pending.discard(entry.blob_id)

    # -- small encrypted files (snapshots, locks) -------------------------------------------

    def save_file(self, kind: Kind, data: bytes, aad: bytes) -> str:
        sealed = self.cipher.encrypt(data, aad)
        name = content_name(sealed)
        self.storage.put(kind, name, sealed)
        return name

    def load_file(self, kind: Kind, name: str, aad: bytes) -> bytes:
        return self.cipher.decrypt(self.storage.get(kind, name), aad, f"{kind.value}/{name}")

    def list_names(self, kind: Kind) -> Iterator[str]:
        return (info.name for info in self.storage.list(kind))

    # -- helpers ----------------------------------------------------------------------------

    def _map(self, fn: Callable[[_T], _R], items: list[_T]) -> list[_R]:
        if len(items) < 4:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(fn, items))

    def close(self) -> None:
        self.storage.close()


def read_config(storage: Storage) -> RepositoryConfig:
    """The stored config, parsed and checked (its MAC needs the key: ``verify``)."""
    try:
        return RepositoryConfig.from_bytes(storage.get(Kind.CONFIG, "config"))
    except NotFound as exc:
        if any(True for _ in storage.list(Kind.KEYS)):
            raise IntegrityError(
                f"the repository at {storage.location} has lost its config (its keys are "
                "there); `freezeframe repair config` rewrites it"
            ) from exc
        raise RepositoryNotFound(f"no repository at {storage.location}") from exc


def unlock_master_key(storage: Storage, password: bytes) -> tuple[MasterKey, str]:
    """The master key from the first key file ``password`` opens, and that file's name.

    A key file whose bytes no longer match its name is damaged; it is still tried (the damage
    may be in its plain metadata), and when no key opens the error names it, since it may have
    been this password's."""
    damaged: list[str] = []
    unknown: list[str] = []
    for info in sorted(storage.list(Kind.KEYS), key=lambda i: i.name):
        try:
            data = storage.get(Kind.KEYS, info.name)
        except NotFound:
            continue  # removed by `key remove` since the listing
        if content_name(data) != info.name:
            damaged.append(info.name)
        try:
            key_file = KeyFile.from_bytes(data, info.name)
            return key_file.unwrap(password), info.name
        except WrongPassword:
            continue
        except UnsupportedFormat:
            # A newer key format, or a damaged one: either way another key may open.
            if info.name not in damaged:
                unknown.append(info.name)
            continue
        except IntegrityError:
            if info.name not in damaged:
                damaged.append(info.name)
            continue
    if damaged:
        raise IntegrityError(
            f"no intact key opens with this password, and key {damaged[0][:8]} is damaged: it "
            "may have been this password's. Open the repository with another password, then "
            f"`freezeframe key remove {damaged[0][:8]}` and `key add`"
        )
    if unknown:
        raise UnsupportedFormat(
            f"no key opens with this password, and key {unknown[0][:8]} has a format this "
            "freezeframe does not read (it may have been this password's): upgrade freezeframe"
        )
    raise WrongPassword("wrong password: no key of this repository opens with it")


def add_key(storage: Storage, master: MasterKey, password: bytes, kdf: KdfParams) -> str:
    """Store a new key file wrapping ``master``; returns its name."""
    data = KeyFile.wrap(master, password, kdf).to_bytes()
    name = content_name(data)
    storage.put(Kind.KEYS, name, data)
    return name
