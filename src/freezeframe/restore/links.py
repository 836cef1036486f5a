"""Hard links within one restore: the first name of an inode is restored, the others link to it.

Nodes share an inode when they record the same (device, inode) with ``links > 1``. Only names
restored by this run are linked: the first one is found again by walking down from the target
one ``O_NOFOLLOW`` directory at a time, and must still be the inode this run created.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from freezeframe.restore.reader import Node
from freezeframe.restore.safepath import create_entry, open_dir_path


@dataclass(frozen=True)
class FirstName:
    """Where the first name of a hard-linked inode was restored."""

    rel: tuple[bytes, ...]  # its directory, as names from the target down
    name: bytes
    path: bytes  # as recorded, for messages
    identity: tuple[int, int]  # (st_dev, st_ino) of what this run created


def is_linked(node: Node) -> bool:
    return node.links > 1 and node.inode != 0 and node.type != "dir"


class HardLinks:
    def __init__(self, root_fd: int) -> None:
        self._root_fd = root_fd
        self._first: dict[tuple[int, int], FirstName] = {}

    def first(self, node: Node) -> FirstName | None:
        """The name this inode was first restored under, if any."""
        return self._first.get((node.device, node.inode))

    def remember(self, node: Node, rel: tuple[bytes, ...], path: bytes, st: os.stat_result) -> None:
        first = FirstName(rel, node.name, path, (st.st_dev, st.st_ino))
        self._first.setdefault((node.device, node.inode), first)

    def link(self, first: FirstName, dir_fd: int, name: bytes) -> None:
        """Make ``name`` in ``dir_fd`` another name of ``first`` (OSError if it cannot be)."""
        source_fd = open_dir_path(self._root_fd, first.rel)
        try:
            st = os.stat(first.name, dir_fd=source_fd, follow_symlinks=False)
            if (st.st_dev, st.st_ino) != first.identity:
                raise OSError(errno.ESTALE, "its first name was replaced during the restore")
            create_entry(
                dir_fd,
                name,
                lambda: os.link(
                    first.name,
                    name,
                    src_dir_fd=source_fd,
                    dst_dir_fd=dir_fd,
                    follow_symlinks=False,
                ),
            )
        finally:
            os.close(source_fd)
