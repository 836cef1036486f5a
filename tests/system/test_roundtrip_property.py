"""Any small tree of files, directories and symlinks survives backup and restore unchanged."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ffharness import Cli
from treeutil import assert_same_tree, restored_path, rmtree

EXAMPLES = int(os.environ.get("FREEZEFRAME_HYPOTHESIS_EXAMPLES", "25"))

pytestmark = pytest.mark.timeout(60 + 4 * EXAMPLES)

# Bytes a name may contain: anything but "/" and NUL; these are the interesting ones.
NAME_BYTES = [*b"abcXYZ019._- ~*?[]\\'\"$", 0x0A, 0x09, 0x01, 0x7F, 0xC3, 0xA9, 0xFF, 0xE2, 0x80]
FILE_MODES = [0o644, 0o600, 0o640, 0o755, 0o700, 0o444, 0o400, 0o664, 0o750]
DIR_MODES = [0o755, 0o700, 0o750, 0o555, 0o500, 0o775, 0o1777, 0o2755]

names = (
    st.lists(st.sampled_from(NAME_BYTES), min_size=1, max_size=20)
    .map(bytes)
    .filter(lambda n: n not in (b".", b".."))
)
# ext4 stores seconds from 1901 to 2446; stay inside that, including before 1970.
mtimes = st.integers(min_value=-(2**31) * 10**9, max_value=2**33 * 10**9)
contents = st.one_of(
    st.just(b""),
    st.sampled_from([b"same content in many files\n", b"\x00" * 5000]),
    st.binary(max_size=300),
    st.builds(lambda unit, n: unit * n, st.binary(min_size=1, max_size=16), st.integers(1, 40_000)),
    st.builds(
        lambda seed, n: random.Random(seed).randbytes(n),
        st.integers(0, 2**32),
        st.integers(0, 1_500_000),
    ),
)
files = st.tuples(st.just("file"), contents, st.sampled_from(FILE_MODES), mtimes)
symlinks = st.tuples(
    st.just("symlink"),
    st.one_of(names, st.binary(min_size=1, max_size=60).filter(lambda t: b"\x00" not in t)),
    mtimes,
)


def _dirs(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.tuples(
        st.just("dir"),
        st.dictionaries(names, children, max_size=5),
        st.sampled_from(DIR_MODES),
        mtimes,
    )


nodes = st.recursive(st.one_of(files, symlinks), _dirs, max_leaves=25)
trees = st.tuples(st.just("dir"), st.dictionaries(names, nodes, max_size=8), st.just(0o755), mtimes)


def materialize(path: bytes, node: tuple) -> None:
    """Create ``node`` at ``path``; directory modes and times are set after their children."""
    kind = node[0]
    if kind == "file":
        _, data, mode, mtime = node
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
        os.utime(path, ns=(mtime, mtime))
    elif kind == "symlink":
        _, target, mtime = node
        os.symlink(target, path)
        os.utime(path, ns=(mtime, mtime), follow_symlinks=False)
    else:
        _, children, mode, mtime = node
        os.mkdir(path)
        for name, child in children.items():
            materialize(os.path.join(path, name), child)
        os.chmod(path, mode)
        os.utime(path, ns=(mtime, mtime))


def test_random_trees_roundtrip(cli: Cli, repo: Path) -> None:
    """Whatever names, contents, modes, symlinks and times a tree has, the restored copy is
    identical; many snapshots in one repository do not disturb each other."""

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(tree=trees)
    def roundtrip(tree: tuple) -> None:
        work = Path(tempfile.mkdtemp(prefix="ff-prop-"))
        try:
            source = work / "src"
            materialize(os.fsencode(source), tree)
            backup = cli("backup", source)
            assert backup["errors"] == []
            target = work / "target"
            cli("restore", backup["snapshot_id"], "--target", target)
            assert_same_tree(source, restored_path(target, source))
        finally:
            rmtree(work)

    roundtrip()
