"""Which parts of a snapshot a restore writes: ``--include`` paths and the directories above them.

A selection is a list of name-component paths relative to the directory being walked, or None
for "everything below". Includes are checked against the snapshot before anything is written,
so a mistyped path fails at once instead of producing an empty restore.
"""

from __future__ import annotations

from collections.abc import Sequence

from freezeframe.errors import NotFound
from freezeframe.restore.reader import Snapshot, SnapshotReader
from freezeframe.restore.safepath import parse_include

Selection = list[tuple[bytes, ...]] | None


def select(reader: SnapshotReader, snapshot: Snapshot, includes: Sequence[str]) -> Selection:
    """The selection for ``includes`` (absolute paths as recorded); NotFound for a path the
    snapshot does not hold."""
    wanted = [parse_include(path) for path in includes]
    for path, components in zip(includes, wanted, strict=True):
        if components and reader.find_node(snapshot.tree, components) is None:
            raise NotFound(
                f"{path} is not in snapshot {snapshot.short_id}; "
                f"`freezeframe ls {snapshot.short_id}` shows what it holds"
            )
    if not wanted or any(not components for components in wanted):
        return None  # nothing named, or "/": all of it
    return wanted


def narrow(selection: Selection, name: bytes) -> tuple[bool, Selection]:
    """Whether the entry ``name`` is selected, and the selection below it."""
    if selection is None:
        return True, None
    below = [path[1:] for path in selection if path[0] == name]
    if not below:
        return False, None
    if any(not path for path in below):
        return True, None
    return True, below
