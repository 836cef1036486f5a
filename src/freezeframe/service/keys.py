"""key list, add, passwd and remove: the passwords that open a repository.

Every key wraps the same master key, so adding or removing one touches no data and needs no
lock. A damaged key is listed as such, so that it can be removed."""

from __future__ import annotations

from dataclasses import dataclass, field

from freezeframe.errors import FreezeframeError, NotFound, UsageError
from freezeframe.repository.crypto import content_name
from freezeframe.repository.keys import KdfParams, KeyFile
from freezeframe.repository.repository import Repository
from freezeframe.repository.repository import add_key as save_key
from freezeframe.storage.base import Kind


@dataclass
class KeyInfo:
    id: str
    current: bool  # the key that opened the repository
    damaged: bool  # unreadable, or its bytes no longer match its name
    user: str = ""  # empty when it cannot be read
    host: str = ""
    created: str = ""


def list_keys(repo: Repository) -> list[KeyInfo]:
    """Every key, by id."""
    keys = [_describe(repo, info.name) for info in repo.storage.list(Kind.KEYS)]
    return sorted(keys, key=lambda k: k.id)


def _describe(repo: Repository, name: str) -> KeyInfo:
    current = name == repo.key_name
    try:
        data = repo.storage.get(Kind.KEYS, name)
        key = KeyFile.from_bytes(data, name)
    except FreezeframeError:
        return KeyInfo(name, current, damaged=True)
    return KeyInfo(name, current, content_name(data) != name, key.user, key.host, key.created)


@dataclass(frozen=True)
class AddKeyRequest:
    password: bytes = field(repr=False)
    replace_current: bool = False  # passwd: remove the key in use once the new one is saved


@dataclass
class KeyAdded:
    id: str
    removed: str | None = None  # passwd: the key it replaced


def add_key(repo: Repository, request: AddKeyRequest) -> KeyAdded:
    """A new key for the password, with the key parameters of the one in use."""
    storage = repo.storage
    current = KeyFile.from_bytes(storage.get(Kind.KEYS, repo.key_name), repo.key_name)
    name = save_key(storage, repo.master, request.password, current.kdf or KdfParams())
    if not request.replace_current:
        return KeyAdded(name)
    old = repo.key_name
    storage.delete(Kind.KEYS, old)
    repo.key_name = name
    return KeyAdded(name, removed=old)


@dataclass(frozen=True)
class RemoveKeyRequest:
    key_id: str  # a prefix of one key's id


def remove_key(repo: Repository, request: RemoveKeyRequest) -> str:
    """Remove one key, never the one in use (it may be the only one left); returns
    the removed key's id."""
    matches = [i.name for i in repo.storage.list(Kind.KEYS) if i.name.startswith(request.key_id)]
    if not matches:
        raise NotFound(f"no key {request.key_id}")
    if len(matches) > 1:
        raise UsageError(f"key id {request.key_id} is ambiguous")
    if matches[0] == repo.key_name:
        raise UsageError("refusing to remove the key in use; open with another password first")
    repo.storage.delete(Kind.KEYS, matches[0])
    return matches[0]
