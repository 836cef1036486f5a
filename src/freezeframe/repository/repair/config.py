"""``repair config``: write a sound config again, from what only the key holder knows.

The config's values are few: the repository id (also inside the master key), when it was made,
and the chunker and pack sizes, which ``init`` always sets to the defaults. So a config that is
missing, does not parse or fails its MAC is rewritten from the master key and the defaults and
sealed with a new MAC. Nothing else depends on the config's bytes: data, indexes and snapshots
stay as they are. A config of a newer format is left alone, unless it is plainly this
repository's own config with a damaged version number (its MAC verifies with the current one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from freezeframe.errors import FreezeframeError, NotFound, UnsupportedFormat
from freezeframe.repository.config import FORMAT_VERSION, ChunkerParams, RepositoryConfig
from freezeframe.repository.crypto import config_mac_key
from freezeframe.repository.keys import KeyFile
from freezeframe.repository.repository import read_config, unlock_master_key
from freezeframe.storage.base import Kind, Storage


@dataclass
class ConfigRepair:
    rewritten: bool
    problem: str
    """What was wrong with the config (empty when it was sound)."""
    config: RepositoryConfig


def repair_config(storage: Storage, password: bytes, *, force: bool = False) -> ConfigRepair:
    """Check the config with the key ``password`` opens and rewrite it if it is unsound."""
    master, key_name = unlock_master_key(storage, password)
    mac_key = config_mac_key(master.encryption_key)
    try:
        config = read_config(storage)
        if master.repository_id != config.repository_id:
            raise UnsupportedFormat("the config names another repository")
        if master.config_format > config.version:
            raise UnsupportedFormat("the config is of an older format than its keys")
        config.verify(mac_key)
        return ConfigRepair(rewritten=False, problem="", config=config)
    except FreezeframeError as exc:
        problem = str(exc)
    loose = _loose(storage)
    version = loose.get("version")
    newer = type(version) is int and version > FORMAT_VERSION
    if newer and not force and not _damaged_version(loose, mac_key):
        raise UnsupportedFormat(
            f"the config says format version {version}, newer than this freezeframe reads; "
            "upgrade freezeframe (or, if it is damaged, `repair config --force`)"
        )
    created = loose.get("created")
    if not isinstance(created, str) or len(created) > 64:
        created = _key_created(storage, key_name)
    fresh = RepositoryConfig(
        repository_id=master.repository_id, created=created, chunker=ChunkerParams()
    ).sealed(mac_key)
    storage.put(Kind.CONFIG, "config", fresh.to_bytes())
    return ConfigRepair(rewritten=True, problem=problem, config=fresh)


def _loose(storage: Storage) -> dict[str, Any]:
    """Whatever of the stored config still parses as a JSON object."""
    try:
        doc = json.loads(storage.get(Kind.CONFIG, "config"))
    except (NotFound, ValueError, RecursionError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _damaged_version(loose: dict[str, Any], mac_key: bytes) -> bool:
    """Whether the config verifies once its version is the current one: then the version
    number alone was damaged, and the config is this freezeframe's."""
    try:
        candidate = RepositoryConfig.from_bytes(
            json.dumps({**loose, "version": FORMAT_VERSION}, indent=1).encode()
        )
        candidate.verify(mac_key)
    except FreezeframeError:
        return False
    return True


def _key_created(storage: Storage, key_name: str) -> str:
    try:
        return KeyFile.from_bytes(storage.get(Kind.KEYS, key_name), key_name).created
    except FreezeframeError:
        return ""
