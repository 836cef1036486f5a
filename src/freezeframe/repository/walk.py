"""Reading snapshot trees: loading one tree, finding a path, walking everything below a tree.

``ls``, ``diff``, ``check`` and ``restore`` all read trees the same way, so it lives here, in the
repository layer, rather than in any one command.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from freezeframe.repository.pack import BlobType
from freezeframe.repository.repository import Repository
from freezeframe.repository.tree import Node, decode_tree


def load_tree(repo: Repository, tree_id: bytes) -> list[Node]:
    """One directory's nodes, sorted by name; IntegrityError/NotFound if the blob is bad."""
    return decode_tree(repo.load_blob(tree_id, BlobType.TREE))


def walk_tree(
    repo: Repository, tree_id: bytes, prefix: bytes = b""
) -> Iterator[tuple[bytes, Node]]:
    """Every node below a tree with its absolute path, depth-first, a directory before its
    contents, siblings in name order.

    Paths are ``prefix + b"/" + name`` at each level (the root tree of a snapshot is ``/``, so
    the default prefix gives absolute paths). Iterative, so a very deep tree cannot exhaust the
    interpreter's stack; trees are loaded only when the walk reaches them.
    """
    stack: list[tuple[bytes, Iterator[Node]]] = [(prefix, iter(load_tree(repo, tree_id)))]
    while stack:
        parent, nodes = stack[-1]
        node = next(nodes, None)
        if node is None:
            stack.pop()
            continue
        path = parent + b"/" + node.name
        yield path, node
        if node.type == "dir" and node.subtree is not None:
            stack.append((path, iter(load_tree(repo, node.subtree))))


def find_node(repo: Repository, tree_id: bytes, components: Sequence[bytes]) -> Node | None:
    """The node at a path given as name components below a tree; None if there is none."""
    found: Node | None = None
    current: bytes | None = tree_id
    for name in components:
        if current is None:
            return None
        found = next((n for n in load_tree(repo, current) if n.name == name), None)
        if found is None:
            return None
        current = found.subtree if found.type == "dir" else None
    return found


def reachable_blobs(
    roots: Iterable[bytes], load_tree: Callable[[bytes], list[Node]]
) -> tuple[set[bytes], set[bytes]]:
    """(tree ids, data ids) reachable from ``roots``. Each tree is loaded once, a level of the
    breadth-first walk at a time in parallel, since a repository's trees are many small reads."""
    trees: set[bytes] = set()
    data: set[bytes] = set()
    frontier = list(dict.fromkeys(roots))
    trees.update(frontier)
    with ThreadPoolExecutor(max_workers=4) as pool:
        while frontier:
            next_frontier: list[bytes] = []
            for nodes in pool.map(load_tree, frontier):
                for node in nodes:
                    data.update(node.content)
                    if node.subtree is not None and node.subtree not in trees:
                        trees.add(node.subtree)
                        next_frontier.append(node.subtree)
            frontier = next_frontier
    return trees, data
