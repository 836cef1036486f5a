"""The repository: opens with a password, stores and loads blobs, indexes and snapshots.

This is the one object the backup, restore and maintenance code talks to; it hides packs, keys
and storage layout behind ``save_blob``/``load_blob`` and the snapshot calls.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from freezeframe.errors import (
    IntegrityError,
    NotFound,
    RepositoryExists,
    RepositoryNotFound,
    WrongPassword,
)
from freezeframe.repository.compression import compress, decompress
from freezeframe.repository.config import RepositoryConfig
from freezeframe.repository.crypto import Cipher, IdHasher, content_name
from freezeframe.repository.index import Index, decode_index
from freezeframe.repository.keys import KdfParams, KeyFile, MasterKey
from freezeframe.repository.pack import BlobType, PackEntry, blob_aad
from freezeframe.repository.packer import Packer
from freezeframe.storage.base import Kind, Storage

_R = TypeVar("_R")


class Repository:
    """An open repository. Safe to share between the threads of one backup or restore."""

    def __init__(
        self, storage: Storage, config: RepositoryConfig, master: MasterKey, key_name: str
    ) -> None:
        self.storage = storage
        self.config = config
        self.master = master
        self.key_name = key_name
        self.cipher = Cipher(master.encryption_key)
        self.hasher = IdHasher(master.id_key)
        self.index = Index()
        self.index_loaded = False
        self._pending: set[bytes] = set()
        self._pending_lock = threading.Lock()
        self.packer = Packer(
            storage, self.cipher, self.index, config.pack_size, self._forget_pending
        )
        self.blobs_added = 0
        self.bytes_added_raw = 0

    # -- opening ----------------------------------------------------------------------------

    @classmethod
    def init(cls, storage: Storage, password: bytes, kdf: KdfParams | None = None) -> Repository:
        """Create a new repository with one key protected by ``password``."""
        if storage.exists(Kind.CONFIG, "config"):
            raise RepositoryExists(f"a repository already exists at {storage.location}")
        create_layout = getattr(storage, "create_layout", None)
        if create_layout is not None:
            create_layout()
        config = RepositoryConfig.new()
        master = MasterKey.generate(config.repository_id)
        key_name = add_key(storage, master, password, kdf or KdfParams())
        storage.put(Kind.CONFIG, "config", config.to_bytes())
        return cls(storage, config, master, key_name)

    @classmethod
    def open(cls, storage: Storage, password: bytes, *, load_index: bool = True) -> Repository:
        """Open with any key that accepts ``password``; WrongPassword if none does."""
        try:
            config = RepositoryConfig.from_bytes(storage.get(Kind.CONFIG, "config"))
        except NotFound as exc:
            raise RepositoryNotFound(f"no repository at {storage.location}") from exc
        for info in sorted(storage.list(Kind.KEYS), key=lambda i: i.name):
            key_file = KeyFile.from_bytes(storage.get(Kind.KEYS, info.name), info.name)
            try:
                master = key_file.unwrap(password)
            except WrongPassword:
                continue
            if master.repository_id != config.repository_id:
                raise IntegrityError(f"key {info.name} belongs to another repository")
            repo = cls(storage, config, master, info.name)
            if load_index:
                repo.load_index()
            return repo
        raise WrongPassword("wrong password: no key of this repository opens with it")

    def load_index(self) -> None:
        """Read every index file (in parallel: each is a small decrypt + decompress)."""
        names = [info.name for info in self.storage.list(Kind.INDEX)]
        for packs in self._map(self.read_index_file, names):
            for pack, entries in packs.items():
                self.index.add_pack(pack, entries)
        self.index_loaded = True

    def ensure_index(self) -> None:
        """Load the index unless loaded: commands that lock the repository load it only once
        they hold the lock, as a prune elsewhere rewrites it under its exclusive lock."""
        if not self.index_loaded:
            self.load_index()

    def read_index_file(self, name: str) -> dict[str, list[PackEntry]]:
        return decode_index(self.storage.get(Kind.INDEX, name), self.cipher, name)

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
        location = self.index.lookup(blob_id)
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

    def _map(self, fn: Callable[[str], _R], items: list[str]) -> list[_R]:
        if len(items) < 4:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(fn, items))

    def close(self) -> None:
        self.storage.close()


def add_key(storage: Storage, master: MasterKey, password: bytes, kdf: KdfParams) -> str:
    """Store a new key file wrapping ``master``; returns its name."""
    data = KeyFile.wrap(master, password, kdf).to_bytes()
    name = content_name(data)
    storage.put(Kind.KEYS, name, data)
    return name
