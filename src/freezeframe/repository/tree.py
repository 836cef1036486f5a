"""Tree objects: one directory's entries with their full metadata, stored as a tree blob.

A tree is JSON (compressed and encrypted like every blob): ``{"nodes": [...]}`` sorted by the
name's bytes. Names are UTF-8 text when they decode, else ``name_b64``; the same holds for symlink
targets. Equal directories produce equal trees, so unchanged directories deduplicate.
"""

from __future__ import annotations

import base64
import json
import stat
from dataclasses import dataclass, field
from typing import Any

from freezeframe.errors import IntegrityError

# Node types and the file-type bits of st_mode they stand for (sockets are not backed up).
TYPE_BITS = {
    "file": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "fifo": stat.S_IFIFO,
    "chardev": stat.S_IFCHR,
    "blockdev": stat.S_IFBLK,
}
NODE_TYPES = tuple(TYPE_BITS)


@dataclass
class Node:
    """One directory entry. ``name`` is raw bytes, as the file system stores it."""

    name: bytes
    type: str
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    user: str = ""
    group: str = ""
    atime_ns: int = 0
    ctime_ns: int = 0
    size: int = 0
    inode: int = 0
    device: int = 0
    links: int = 1
    content: list[bytes] = field(default_factory=list)
    subtree: bytes | None = None
    linktarget: bytes | None = None
    rdev: int = 0
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    sparse_map: list[tuple[int, int]] | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        _put_bytes(doc, "name", self.name)
        doc.update(
            type=self.type,
            mode=self.mode,
            uid=self.uid,
            gid=self.gid,
            user=self.user,
            group=self.group,
            mtime_ns=self.mtime_ns,
            atime_ns=self.atime_ns,
            ctime_ns=self.ctime_ns,
        )
        if self.type == "file":
            doc["size"] = self.size
            doc["content"] = [c.hex() for c in self.content]
            if self.sparse_map is not None:
                doc["sparse_map"] = [list(extent) for extent in self.sparse_map]
        if self.links > 1:
            doc.update(inode=self.inode, device=self.device, links=self.links)
        if self.subtree is not None:
            doc["subtree"] = self.subtree.hex()
        if self.linktarget is not None:
            _put_bytes(doc, "linktarget", self.linktarget)
        if self.rdev:
            doc["rdev"] = self.rdev
        if self.xattrs:
            doc["xattrs"] = [
                [base64.b64encode(k).decode(), base64.b64encode(v).decode()]
                for k, v in sorted(self.xattrs.items())
            ]
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Node:
        """A node of a tree blob; IntegrityError when ``doc`` is not one."""
        try:
            return cls._from_json(doc)
        except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
            raise IntegrityError(f"a tree node is malformed: {exc}") from exc

    @classmethod
    def _from_json(cls, doc: dict[str, Any]) -> Node:
        node_type = doc["type"]
        if node_type not in NODE_TYPES:
            raise IntegrityError(f"unknown node type {node_type!r}")
        return cls(
            name=_get_bytes(doc, "name") or b"",
            type=node_type,
            mode=int(doc["mode"]),
            uid=int(doc["uid"]),
            gid=int(doc["gid"]),
            user=_text(doc.get("user", "")),
            group=_text(doc.get("group", "")),
            mtime_ns=int(doc["mtime_ns"]),
            atime_ns=int(doc.get("atime_ns", 0)),
            ctime_ns=int(doc.get("ctime_ns", 0)),
            size=int(doc.get("size", 0)),
            inode=int(doc.get("inode", 0)),
            device=int(doc.get("device", 0)),
            links=int(doc.get("links", 1)),
            content=[bytes.fromhex(c) for c in doc.get("content", [])],
            subtree=bytes.fromhex(doc["subtree"]) if "subtree" in doc else None,
            linktarget=_get_bytes(doc, "linktarget"),
            rdev=int(doc.get("rdev", 0)),
            xattrs={base64.b64decode(k): base64.b64decode(v) for k, v in doc.get("xattrs", [])},
            sparse_map=[(int(a), int(b)) for a, b in doc["sparse_map"]]
            if "sparse_map" in doc
            else None,
        )

    @property
    def display_name(self) -> str:
        return self.name.decode("utf-8", "backslashreplace")


def encode_tree(nodes: list[Node]) -> bytes:
    ordered = sorted(nodes, key=lambda n: n.name)
    return json.dumps(
        {"nodes": [n.to_json() for n in ordered]}, separators=(",", ":"), ensure_ascii=False
    ).encode()


def decode_tree(data: bytes) -> list[Node]:
    try:
        doc = json.loads(data)
        return [Node.from_json(n) for n in doc["nodes"]]
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
        raise IntegrityError(f"a tree object is malformed: {exc}") from exc


def _put_bytes(doc: dict[str, Any], key: str, value: bytes) -> None:
    try:
        doc[key] = value.decode("utf-8")
    except UnicodeDecodeError:
        doc[key + "_b64"] = base64.b64encode(value).decode()


def _text(value: object) -> str:
    """Text that encodes again: JSON's "\\udcff" escape parses into a lone surrogate, which
    encode_tree (UTF-8) would refuse with UnicodeEncodeError."""
    text = str(value)
    text.encode("utf-8")
    return text


def _get_bytes(doc: dict[str, Any], key: str) -> bytes | None:
    if key in doc:
        return str(doc[key]).encode("utf-8")
    if key + "_b64" in doc:
        return base64.b64decode(doc[key + "_b64"])
    return None
