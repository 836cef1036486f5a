"""The repository format's building blocks: each must reject damage rather than return wrong
data, and round-trip exactly what it was given."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from freezeframe.errors import IntegrityError, UnsupportedFormat, UsageError, WrongPassword
from freezeframe.repository.compression import RAW, ZSTD, compress, decompress
from freezeframe.repository.config import RepositoryConfig
from freezeframe.repository.crypto import Cipher, IdHasher
from freezeframe.repository.index import IndexFile, decode_index, decode_index_file, encode_index
from freezeframe.repository.keys import KdfParams, KeyFile, MasterKey
from freezeframe.repository.pack import BlobType, PackEntry, decode_header, encode_header
from freezeframe.repository.password import resolve_password
from freezeframe.repository.tree import Node, decode_tree, encode_tree

FAST = KdfParams(time_cost=1, memory_kib=8192, parallelism=1)


def test_every_flipped_bit_fails_authentication() -> None:
    cipher = Cipher(os.urandom(32))
    sealed = cipher.encrypt(b"secret payload", b"aad")
    for position in range(len(sealed)):
        damaged = bytearray(sealed)
        damaged[position] ^= 0x01
        with pytest.raises(IntegrityError):
            cipher.decrypt(bytes(damaged), b"aad")
    with pytest.raises(IntegrityError):
        cipher.decrypt(sealed, b"other aad")


def test_ids_depend_on_the_key() -> None:
    data = b"same content"
    assert IdHasher(b"k" * 32).blob_id(data) == IdHasher(b"k" * 32).blob_id(data)
    assert IdHasher(b"k" * 32).blob_id(data) != IdHasher(b"j" * 32).blob_id(data)


def test_compression_is_skipped_for_incompressible_data() -> None:
    text = b"the same words again " * 1000
    noise = os.urandom(20_000)
    assert compress(text)[0] == ZSTD and len(compress(text)) < len(text) // 10
    assert compress(noise)[0] == RAW
    assert decompress(compress(text), len(text)) == text
    assert decompress(compress(noise), len(noise)) == noise
    with pytest.raises(IntegrityError):
        decompress(compress(text), len(text) + 1)


def test_pack_header_round_trip_and_tiling() -> None:
    cipher = Cipher(os.urandom(32))
    entries = [
        PackEntry(BlobType.DATA, os.urandom(32), 0, 100, 150),
        PackEntry(BlobType.TREE, os.urandom(32), 100, 50, 70),
    ]
    pack = b"x" * 150 + encode_header(entries, cipher)
    assert decode_header(pack, cipher, "p") == entries
    with pytest.raises(IntegrityError):
        decode_header(b"x" * 149 + encode_header(entries, cipher), cipher, "p")


def test_index_round_trip() -> None:
    cipher = Cipher(os.urandom(32))
    packs = {"ab" * 32: [PackEntry(BlobType.DATA, os.urandom(32), 0, 10, 20)]}
    assert decode_index(encode_index(packs, cipher), cipher, "i") == packs


def test_a_mark_file_names_its_packs_apart_from_the_live_ones() -> None:
    """A mark file keeps the marked packs' blobs (readable until the sweep) and its time; the
    live packs alone are what ``decode_index`` gives (what a repair or check counts as live)."""
    cipher = Cipher(os.urandom(32))
    live = {"ab" * 32: [PackEntry(BlobType.DATA, os.urandom(32), 0, 10, 20)]}
    marked = {
        "cd" * 32: [PackEntry(BlobType.TREE, os.urandom(32), 0, 30, 40)],
        "ef" * 32: [],  # a pack no index named: only its name
    }
    stored = encode_index(live, cipher, marked=marked, mark_time=1234.5)
    assert decode_index_file(stored, cipher, "m") == IndexFile(live, marked, 1234.5)
    assert decode_index(stored, cipher, "m") == live
    assert decode_index_file(encode_index(live, cipher), cipher, "i") == IndexFile(live, {})


def test_keys_open_only_with_their_password() -> None:
    master = MasterKey.generate("r" * 64, config_format=2)
    key = KeyFile.from_bytes(KeyFile.wrap(master, b"right", FAST).to_bytes(), "k")
    assert key.unwrap(b"right") == master
    with pytest.raises(WrongPassword):
        key.unwrap(b"wrong")


def test_unknown_format_versions_are_refused() -> None:
    config = RepositoryConfig.new().to_bytes().replace(b'"version": 2', b'"version": 9')
    assert b'"version": 9' in config
    with pytest.raises(UnsupportedFormat):
        RepositoryConfig.from_bytes(config)


def test_tree_round_trip_with_undecodable_names() -> None:
    nodes = [
        Node(
            name=b"caf\xe9\n",
            type="file",
            mode=0o644,
            uid=1,
            gid=2,
            mtime_ns=123,
            size=3,
            content=[os.urandom(32)],
            xattrs={b"user.a": b"\x00\xff"},
            sparse_map=[(0, 3)],
        ),
        Node(
            name=b"link",
            type="symlink",
            mode=0o777,
            uid=0,
            gid=0,
            mtime_ns=1,
            linktarget=b"\xff/target",
        ),
    ]
    decoded = decode_tree(encode_tree(nodes))
    assert [(n.name, n.linktarget, n.xattrs, n.sparse_map) for n in decoded] == [
        (n.name, n.linktarget, n.xattrs, n.sparse_map) for n in sorted(nodes, key=lambda n: n.name)
    ]


def test_password_sources_in_order(tmp_path: Path) -> None:
    pw_file = tmp_path / "pw"
    pw_file.write_text("from-file\nignored second line\n")
    env = {"FREEZEFRAME_PASSWORD": "from-env", "FREEZEFRAME_PASSWORD_COMMAND": "echo cmd"}
    assert resolve_password(str(pw_file), env) == b"from-file"
    assert resolve_password(None, env) == b"from-env"
    assert resolve_password(None, {"FREEZEFRAME_PASSWORD_FILE": str(pw_file)}) == b"from-file"
    assert resolve_password(None, {"FREEZEFRAME_PASSWORD_COMMAND": "echo cmd"}) == b"cmd"
    with pytest.raises(UsageError):
        resolve_password(str(tmp_path / "missing"), {})
