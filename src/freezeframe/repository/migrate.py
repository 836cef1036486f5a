"""``freezeframe migrate``: bring a repository to the current format.

From version 1: the config's values (checked when it was read) are sealed with a MAC under the
master key, and the key in use is written again marked for version 2, so a config later put
back as version 1 by someone without the key is refused by that key. Other passwords' keys
cannot be rewritten without their passwords; ``key passwd`` with each marks it. The new key is
written before the config and the old key removed last, so an interruption leaves a repository
that opens as before, or opens as version 2 with one key more.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from freezeframe.repository.config import FORMAT_VERSION
from freezeframe.repository.crypto import config_mac_key
from freezeframe.repository.keys import KeyFile
from freezeframe.repository.repository import Repository, add_key
from freezeframe.storage.base import Kind


@dataclass
class Migration:
    from_version: int
    to_version: int
    steps: list[str] = field(default_factory=list)
    unmarked_keys: list[str] = field(default_factory=list)
    """Other passwords' keys, still accepting a version 1 config."""


def migrate(repo: Repository, password: bytes) -> Migration:
    """Upgrade ``repo`` (opened with ``password``, under the exclusive lock)."""
    result = Migration(repo.config.version, FORMAT_VERSION)
    if repo.config.version >= FORMAT_VERSION:
        return result
    storage = repo.storage
    current = KeyFile.from_bytes(storage.get(Kind.KEYS, repo.key_name), repo.key_name)
    master = replace(repo.master, config_format=FORMAT_VERSION)
    new_key = add_key(storage, master, password, current.kdf)
    sealed = repo.config.sealed(config_mac_key(master.encryption_key))
    storage.put(Kind.CONFIG, "config", sealed.to_bytes())
    storage.delete(Kind.KEYS, repo.key_name)
    result.steps = [
        f"sealed the config with a MAC (format version {sealed.version})",
        f"wrote key {new_key[:8]} for this password in place of {repo.key_name[:8]}",
    ]
    result.unmarked_keys = sorted(
        name for name in repo.list_names(Kind.KEYS) if name not in (new_key, repo.key_name)
    )
    repo.config, repo.master, repo.key_name = sealed, master, new_key
    return result
