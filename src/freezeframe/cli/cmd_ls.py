"""``freezeframe ls``: list the files of a snapshot."""

from __future__ import annotations

import argparse
import os
import stat
from datetime import datetime
from typing import Any

from freezeframe.cli.context import CommandContext
from freezeframe.repository.tree import TYPE_BITS, Node
from freezeframe.service.browse import ListRequest, list_files


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("snapshot", help="snapshot id (prefix) or `latest`")
    parser.add_argument("path", nargs="?", default="/", help="list only below this path")
    parser.add_argument("-l", "--long", action="store_true", help="show mode, owner, size, time")


def run(ctx: CommandContext) -> int:
    with ctx.repository(load_index=False) as repo:
        listing = list_files(repo, ListRequest(ctx.args.snapshot, ctx.args.path))
    entries = listing.entries
    ctx.out.result(
        {"snapshot": listing.snapshot.id, "nodes": [_node_json(p, n) for p, n in entries]},
        lambda: "\n".join(_line(p, n, ctx.args.long) for p, n in entries),
    )
    return 0


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
