"""``freezeframe ls``: list the files of a snapshot."""

from __future__ import annotations

import argparse
import os
import stat
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from freezeframe.cli.context import CommandContext
from freezeframe.errors import NotFound
from freezeframe.repository.repository import Repository
from freezeframe.repository.snapshot import find_snapshot
from freezeframe.repository.tree import TYPE_BITS, Node
from freezeframe.repository.walk import find_node, walk_tree


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("snapshot", help="snapshot id (prefix) or `latest`")
    parser.add_argument("path", nargs="?", default="/", help="list only below this path")
    parser.add_argument("-l", "--long", action="store_true", help="show mode, owner, size, time")


def run(ctx: CommandContext) -> int:
    repo = ctx.open_repository()
    snapshot = find_snapshot(repo, ctx.args.snapshot)
    components = [c for c in os.fsencode(ctx.args.path).split(b"/") if c]
    entries = list(_entries(repo, snapshot.tree, components))
    if components and not entries:
        raise NotFound(f"{ctx.args.path} is not in snapshot {snapshot.short_id}")
    ctx.out.result(
        {"snapshot": snapshot.id, "nodes": [_node_json(p, n) for p, n in entries]},
        lambda: "\n".join(_line(p, n, ctx.args.long) for p, n in entries),
    )
    return 0


def _entries(
    repo: Repository, tree: bytes, components: list[bytes]
) -> Iterator[tuple[bytes, Node]]:
    """The node at the path (when it is one) and everything below it, walking only there."""
    if not components:
        yield from walk_tree(repo, tree)
        return
    node = find_node(repo, tree, components)
    if node is None:
        return
    path = b"/" + b"/".join(components)
    yield path, node
    if node.type == "dir" and node.subtree is not None:
        yield from walk_tree(repo, node.subtree, path)


def _node_json(path: bytes, node: Node) -> dict[str, Any]:
    doc = {
        "path": os.fsdecode(path),
        "type": node.type,
        "size": node.size,
        "mode": node.mode,
        "uid": node.uid,
        "gid": node.gid,
        "user": node.user,
        "group": node.group,
        "mtime_ns": node.mtime_ns,
    }
    if node.linktarget is not None:
        doc["linktarget"] = os.fsdecode(node.linktarget)
    return doc


def _line(path: bytes, node: Node, long: bool) -> str:
    shown = path.decode("utf-8", "backslashreplace").replace("\n", "\\n").replace("\t", "\\t")
    if not long:
        return shown
    mode = stat.filemode(TYPE_BITS[node.type] | node.mode)
    when = datetime.fromtimestamp(node.mtime_ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")
    owner = f"{node.user or node.uid}/{node.group or node.gid}"
    return f"{mode} {owner:>17} {node.size:>12} {when} {shown}"
