"""The repository server's accounts: one per host, each with a role and a hashed secret.

The accounts file is JSON (mode 0600), written by ``freezeframe serve --add-account``::

    {"version": 1, "accounts": {"web1": {"role": "append",
        "scrypt": {"n": 16384, "r": 8, "p": 1, "salt": "<hex>", "hash": "<hex>"}}}}

Secrets are stored as scrypt hashes only, so a stolen accounts file does not let anyone in. A
scrypt takes some 50 ms, which every request cannot pay: a secret that verified once is
remembered (for this process only) by an HMAC under a random key of the process, so nothing
kept in memory is the secret or a hash that could be checked offline against guesses.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import threading
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from freezeframe.errors import UsageError

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
MAX_NAME = 64
HASHING_AT_ONCE = 2


class Role(StrEnum):
    """What an account may do, from least to most."""

    READ = "read"  # read everything; create and remove its own locks (restore, check)
    APPEND = "append"  # also add objects; never delete or overwrite another's
    FULL = "full"  # everything: the admin host that forgets and prunes

    def at_most(self, cap: Role) -> Role:
        """This role, lowered to ``cap`` if it is more (``--append-only``)."""
        order = [Role.READ, Role.APPEND, Role.FULL]
        return self if order.index(self) <= order.index(cap) else cap


@dataclass(frozen=True)
class Account:
    name: str
    role: Role
    salt: bytes
    digest: bytes
    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P

    def matches(self, secret: bytes) -> bool:
        """Whether ``secret`` is this account's (compared in constant time)."""
        candidate = _scrypt(secret, self.salt, self.n, self.r, self.p)
        return hmac.compare_digest(candidate, self.digest)


def _scrypt(secret: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, maxmem=128 * r * n * p * 2, dklen=32)


def check_name(name: str) -> str:
    """An account name is what HTTP basic auth can carry and a log line can show safely."""
    if not name or len(name) > MAX_NAME or not set(name) <= _NAME_CHARS:
        raise UsageError(
            f"account name {name!r}: use 1 to {MAX_NAME} letters, digits, '.', '_' or '-'"
        )
    return name


def new_account(name: str, role: Role, secret: bytes) -> Account:
    salt = secrets.token_bytes(16)
    return Account(
        check_name(name), role, salt, _scrypt(secret, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    )


def load_accounts(path: Path) -> dict[str, Account]:
    """The accounts of a file; UsageError (one line) when it is missing or malformed."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"accounts file {path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read accounts file {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise UsageError(f"accounts file {path} is not JSON: {exc}") from exc
    try:
        if doc.get("version") != 1:
            raise UsageError(f"unknown version {doc.get('version')!r}")
        found = {}
        for name, entry in doc["accounts"].items():
            check_name(name)
            params = entry["scrypt"]
            found[name] = Account(
                check_name(name),
                Role(entry["role"]),
                bytes.fromhex(params["salt"]),
                bytes.fromhex(params["hash"]),
                int(params["n"]),
                int(params["r"]),
                int(params["p"]),
            )
    except UsageError as exc:
        raise UsageError(f"accounts file {path}: {exc}") from exc
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise UsageError(
            f"accounts file {path} is malformed ({type(exc).__name__}: {exc})"
        ) from exc
    return found


def save_accounts(path: Path, accounts: dict[str, Account]) -> None:
    """Write the file atomically, readable by its owner only (it holds hashes of secrets)."""
    doc = {
        "version": 1,
        "accounts": {
            a.name: {
                "role": a.role.value,
                "scrypt": {
                    "n": a.n,
                    "r": a.r,
                    "p": a.p,
                    "salt": a.salt.hex(),
                    "hash": a.digest.hex(),
                },
            }
            for a in sorted(accounts.values(), key=lambda a: a.name)
        },
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with open(fd, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise UsageError(f"cannot write accounts file {path}: {exc.strerror}") from exc


class Verifier:
    """Who a request's credentials name, or None; thread-safe, and fast after the first
    success of a secret (see the module docstring)."""

    def __init__(self, accounts: dict[str, Account]) -> None:
        self._accounts = accounts
        self._key = secrets.token_bytes(32)
        self._verified: dict[bytes, str] = {}
        self._lock = threading.Lock()
        # Hashing takes memory and CPU: a flood of wrong secrets may keep this many threads
        # busy, never every thread of the server (a remembered secret needs none of them).
        self._hashing = threading.BoundedSemaphore(HASHING_AT_ONCE)

    def verify(self, name: str, secret: bytes) -> Account | None:
        account = self._accounts.get(name)
        tag = hmac.new(self._key, name.encode() + b"\0" + secret, hashlib.sha256).digest()
        with self._lock:
            if account is not None and self._verified.get(tag) == name:
                return account
        with self._hashing:
            if account is None:
                # Hash anyway: a missing account takes as long to refuse as a wrong secret.
                _scrypt(secret, b"\0" * 16, SCRYPT_N, SCRYPT_R, SCRYPT_P)
                return None
            if not account.matches(secret):
                return None
        with self._lock:
            self._verified[tag] = name
        return account
