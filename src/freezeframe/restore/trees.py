"""Trees loaded ahead of the walk, for readers where each load pays a round trip.

The walk loads a directory's tree when it enters it; over a remote storage a restore of many
small directories would wait for one request per directory. Once a tree is loaded, the trees
of its subdirectories are requested on a few threads, so they are usually there when the walk
reaches them. Memory: at most ``AHEAD`` trees loaded or being loaded ahead; a tree the walk
never asks for (outside a selection) is not loaded ahead in the first place.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from freezeframe.restore.reader import Node

AHEAD = 256
THREADS = 4


class TreeLoader:
    """``load(tree_id)`` as the walk calls it, with the subtrees of what it returns loaded
    ahead; errors are the load's own, raised when the walk asks for that tree. ``threads`` 0
    loads every tree when asked, as without this class."""

    def __init__(self, load: Callable[[bytes], list[Node]], threads: int) -> None:
        self._load = load
        self._pool = (
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="restore-tree")
            if threads > 0
            else None
        )
        self._ahead: dict[bytes, Future[list[Node]]] = {}
        self._lock = threading.Lock()

    def load(self, tree_id: bytes, *, ahead: bool = True) -> list[Node]:
        """A tree's nodes; ``ahead``: also start loading its subdirectories' trees (the walk
        will enter them all)."""
        with self._lock:
            future = self._ahead.pop(tree_id, None)
        nodes = future.result() if future is not None else self._load(tree_id)
        if ahead and self._pool is not None:
            self._schedule(nodes)
        return nodes

    def close(self) -> None:
        """Stop loading ahead (waits for the loads under way; drops the queued ones)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._ahead.clear()

    def _schedule(self, nodes: list[Node]) -> None:
        assert self._pool is not None
        with self._lock:
            for node in nodes:
                subtree = node.subtree
                if node.type != "dir" or subtree is None or subtree in self._ahead:
                    continue
                if len(self._ahead) >= AHEAD:
                    return
                self._ahead[subtree] = self._pool.submit(self._load, subtree)
