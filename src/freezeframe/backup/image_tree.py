"""A point-in-time set of disk images stored as one snapshot tree: a directory (``/vm/<name>``)
holding one sparse raw image per disk and small files beside them (a VM's definition).

The images are read through ``images.store_disk`` (fixed-size chunks, holes skipped, only the
dirty chunks of an incremental); the tree is what ``commit.commit_snapshot`` then records."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from freezeframe.backup.commit import StoredTree
from freezeframe.backup.images import DiskProgress, ImageReader, StoredDisk, store_disk
from freezeframe.repository.pack import BlobType
from freezeframe.repository.repository import Repository
from freezeframe.repository.tree import Node, encode_tree


@dataclass(frozen=True)
class ImageSource:
    """One disk image of a view: its file name in the snapshot, how to open one more
    connection to it, and the previous snapshot's chunks when only dirty ones are read."""

    name: str
    open_reader: Callable[[], ImageReader]
    parent: dict[int, bytes] | None = None


def archive_images(
    repo: Repository,
    directory: str,
    images: Sequence[ImageSource],
    files: Mapping[str, Any],
    *,
    started: datetime,
    t0: float,
    progress: DiskProgress | None = None,
) -> StoredTree:
    """Store every image and the ``files`` (name -> a JSON document) under ``directory``
    (absolute, e.g. ``/vm/web``). The summary's duration counts from ``t0`` (monotonic: when
    the view was started)."""
    stored = {
        image.name: store_disk(repo, image.open_reader, progress=progress, parent=image.parent)
        for image in images
    }
    now = time.time_ns()
    nodes = [_json_file(repo, name, document, now) for name, document in files.items()]
    for name, disk in stored.items():
        nodes.append(_image_file(name, disk, now))
    nodes.sort(key=lambda node: node.name)
    names = [part.encode() for part in directory.strip("/").split("/")]
    for component in reversed(names[1:]):
        nodes = [_dir(repo, component, nodes, now)]
    root_id, _ = repo.save_blob(BlobType.TREE, encode_tree([_dir(repo, names[0], nodes, now)]))
    repo.flush()
    seconds = time.monotonic() - t0
    return StoredTree(
        started=started, paths=[directory], tree=root_id, summary=_summary(stored, seconds)
    )


def _json_file(repo: Repository, name: str, document: Any, mtime_ns: int) -> Node:
    text = json.dumps(document, indent=2, sort_keys=True).encode()
    text_id, _ = repo.save_blob(BlobType.DATA, text)
    return _root_file(name, mode=0o644, mtime_ns=mtime_ns, size=len(text), content=[text_id])


def _image_file(name: str, disk: StoredDisk, mtime_ns: int) -> Node:
    return _root_file(
        name,
        mode=0o600,
        mtime_ns=mtime_ns,
        size=disk.size,
        content=disk.content,
        sparse_map=disk.sparse_map,
    )


def _root_file(
    name: str,
    *,
    mode: int,
    mtime_ns: int,
    size: int,
    content: list[bytes],
    sparse_map: list[tuple[int, int]] | None = None,
) -> Node:
    """A file of a VM's snapshot tree: owned by root, its time the snapshot's."""
    return Node(
        name=name.encode(),
        type="file",
        mode=mode,
        uid=0,
        gid=0,
        mtime_ns=mtime_ns,
        size=size,
        content=content,
        sparse_map=sparse_map,
    )


def _dir(repo: Repository, name: bytes, nodes: list[Node], mtime_ns: int) -> Node:
    subtree, _ = repo.save_blob(BlobType.TREE, encode_tree(nodes))
    return Node(name=name, type="dir", mode=0o700, uid=0, gid=0, mtime_ns=mtime_ns, subtree=subtree)


def _summary(stored: Mapping[str, StoredDisk], seconds: float) -> dict[str, Any]:
    read = sum(s.bytes_read for s in stored.values())
    return {
        "disks": len(stored),
        "bytes_total": sum(s.size for s in stored.values()),
        "bytes_read": read,
        "bytes_added": sum(s.bytes_added for s in stored.values()),
        "duration_seconds": round(seconds, 3),
        "read_mb_per_s": round(read / seconds / 1e6, 1) if seconds > 0 else 0.0,
    }
