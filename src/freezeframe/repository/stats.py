"""Repository statistics: what is stored, what it would restore to, what dedup and compression
save. Both functions read the in-memory index (open the repository with ``load_index=True``)
and trees, never file data, so they are cheap even for a large repository.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from freezeframe.repository.pack import BlobType
from freezeframe.repository.repository import Repository
from freezeframe.repository.snapshot import Snapshot, list_snapshots
from freezeframe.repository.walk import load_tree, reachable_blobs, walk_tree
from freezeframe.storage.base import Kind


def repository_stats(repo: Repository) -> dict[str, Any]:
    """Counts and sizes of the whole repository.

    ``stored_bytes`` is what the packs take on storage; ``raw_bytes`` is what the indexed blobs
    hold once decrypted and decompressed; ``unique_data_bytes`` is the file data the snapshots
    refer to, each chunk counted once (restic's raw-data); ``compression_ratio`` is raw over
    stored size of the blobs (above 1 when compression pays, slightly below for incompressible
    data, which still carries a nonce and a tag per blob).
    """
    snapshots = list_snapshots(repo)
    pack_sizes = [info.size for info in repo.storage.list(Kind.DATA)]
    counts = {BlobType.DATA: 0, BlobType.TREE: 0}
    raw_bytes = blob_bytes = 0
    for entries in repo.index.by_pack().values():
        for entry in entries:
            counts[entry.blob_type] += 1
            raw_bytes += entry.raw_length
            blob_bytes += entry.length
    trees, data = reachable_blobs((s.tree for s in snapshots), lambda t: load_tree(repo, t))
    unique_data = 0
    for blob_id in data:
        location = repo.index.lookup(blob_id)
        if location is not None:
            unique_data += location.raw_length
    return {
        "snapshots": len(snapshots),
        "packs": len(pack_sizes),
        "index_files": sum(1 for _ in repo.list_names(Kind.INDEX)),
        "blobs": counts[BlobType.DATA] + counts[BlobType.TREE],
        "data_blobs": counts[BlobType.DATA],
        "tree_blobs": counts[BlobType.TREE],
        "referenced_blobs": len(trees) + len(data),
        "stored_bytes": sum(pack_sizes),
        "blob_stored_bytes": blob_bytes,
        "raw_bytes": raw_bytes,
        "unique_data_bytes": unique_data,
        "compression_ratio": raw_bytes / blob_bytes if blob_bytes else 1.0,
    }


def restore_size(repo: Repository, snapshots: Iterable[Snapshot]) -> dict[str, int]:
    """What restoring every one of ``snapshots`` would write (restic's restore-size).

    ``files`` counts every entry (directories and symlinks too, as restic does); ``bytes`` sums
    file sizes, counting a hard-linked file once per snapshot since a restore links it again.
    """
    total = {"snapshots": 0, "files": 0, "regular_files": 0, "dirs": 0, "bytes": 0}
    for snapshot in snapshots:
        total["snapshots"] += 1
        inodes: set[tuple[int, int]] = set()
        for _path, node in walk_tree(repo, snapshot.tree):
            total["files"] += 1
            if node.type == "dir":
                total["dirs"] += 1
            if node.type != "file":
                continue
            total["regular_files"] += 1
            if node.links > 1 and node.inode:
                if (node.device, node.inode) in inodes:
                    continue
                inodes.add((node.device, node.inode))
            total["bytes"] += node.size
    return total
