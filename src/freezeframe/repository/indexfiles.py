"""Writing a whole new index: many index files that together name every blob kept, written
before the files they replace are deleted, so an interruption at any point leaves every blob
named by at least one index file (prune and the repairs share this)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from freezeframe.repository.crypto import content_name
from freezeframe.repository.index import encode_index
from freezeframe.repository.pack import PackEntry
from freezeframe.repository.repository import Repository
from freezeframe.storage.base import Kind

# Blobs per new index file: keeps each file small enough to load and rewrite quickly.
INDEX_FILE_BLOBS = 100_000

Progress = Callable[[str, int, int], None]


def write_index_files(repo: Repository, packs: dict[str, list[PackEntry]]) -> list[str]:
    """Store index files naming ``packs``; returns their names."""
    names: list[str] = []
    batch: dict[str, list[PackEntry]] = {}
    count = 0
    for pack in sorted(packs):
        batch[pack] = packs[pack]
        count += len(packs[pack])
        if count >= INDEX_FILE_BLOBS:
            names.append(_put_index(repo, batch))
            batch, count = {}, 0
    if batch:
        names.append(_put_index(repo, batch))
    return names


def delete_index_files(
    repo: Repository, names: Iterable[str], keep: set[str], progress: Progress
) -> int:
    """Delete the index files ``names`` except those in ``keep``; returns how many went."""
    doomed = [name for name in names if name not in keep]
    for done, name in enumerate(doomed, 1):
        repo.storage.delete(Kind.INDEX, name)
        progress("delete index", done, len(doomed))
    return len(doomed)


def _put_index(repo: Repository, packs: dict[str, list[PackEntry]]) -> str:
    data = encode_index(packs, repo.cipher)
    name = content_name(data)
    repo.storage.put(Kind.INDEX, name, data)
    return name
