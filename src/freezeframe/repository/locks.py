"""Repository locks: shared for backup, restore and check; *maintenance* for prune and forget
(one at a time, beside any number of shared locks: backups never wait for a prune, see
``prune.py``); exclusive for repairs, migrations and key changes (alone).

A lock is an encrypted file in ``locks/``, refreshed every few minutes while its holder lives.
A lock is stale when it has not been refreshed for 30 minutes, or when it belongs to this host and
its process is gone; stale locks are ignored and removed by ``unlock``. A lock that cannot be
read (damaged) might be an exclusive one: it conflicts with every lock until ``unlock`` removes
it.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType

from freezeframe.errors import FreezeframeError, IntegrityError, NotFound, RepositoryLocked
from freezeframe.process import process_exists
from freezeframe.repository.repository import Repository
from freezeframe.storage.base import PROBE_PREFIX, Kind

LOCK_AAD = b"freezeframe-lock"
REFRESH_SECONDS = 5 * 60
STALE_SECONDS = 30 * 60


@dataclass(frozen=True)
class LockInfo:
    name: str
    time: float
    exclusive: bool
    host: str
    pid: int
    user: str
    damaged: bool = False
    maintenance: bool = False
    since: float | None = None
    """When the holder first took the lock (its own clock), kept across refreshes; None for a
    lock written by a version that did not record it."""
    holder: str = ""
    """A random id of the holder, kept across refreshes (a refresh renames the lock)."""

    def conflicts(self, other: LockInfo) -> bool:
        """Whether the two locks cannot be held at once."""
        if self.exclusive or other.exclusive:
            return True
        return self.maintenance and other.maintenance

    def is_stale(self, now: float) -> bool:
        if self.damaged:
            return False
        if now - self.time > STALE_SECONDS:
            return True
        return self.host == socket.gethostname() and not process_exists(self.pid)

    def describe(self) -> str:
        if self.damaged:
            return f"a lock that cannot be read (locks/{self.name[:16]}..., damaged)"
        kind = (
            "an exclusive"
            if self.exclusive
            else "a maintenance"
            if self.maintenance
            else "a shared"
        )
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.time))
        return f"{kind} lock by PID {self.pid} on {self.host} ({self.user}) since {when}"


_MAX_SKEW_S = 86400.0


def parse_lock(data: bytes, name: str) -> LockInfo:
    """A decrypted lock document; IntegrityError when it is not one."""
    try:
        doc = json.loads(data)
        info = LockInfo(
            name,
            float(doc["time"]),
            bool(doc["exclusive"]),
            str(doc["host"]),
            int(doc["pid"]),
            str(doc["user"]),
            maintenance=bool(doc.get("maintenance", False)),
            since=float(doc["since"]) if "since" in doc else None,
            holder=str(doc.get("holder", "")),
        )
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError, AttributeError) as exc:
        raise IntegrityError(f"lock {name[:8]} is malformed: {exc}") from exc
    # A time more than a day ahead of this clock is no skew but damage (and would never go
    # stale); a PID outside what a kernel hands out cannot be asked about.
    in_time = math.isfinite(info.time) and 0 <= info.time <= time.time() + _MAX_SKEW_S
    if not isinstance(doc["exclusive"], bool) or not in_time or not 0 < info.pid < 2**31:
        raise IntegrityError(f"lock {name[:8]} is malformed")
    if info.since is not None and not (math.isfinite(info.since) and info.since <= info.time):
        raise IntegrityError(f"lock {name[:8]} is malformed")
    return info


def read_locks(repo: Repository) -> list[LockInfo]:
    locks = []
    for name in repo.list_names(Kind.LOCKS):
        if name.startswith(PROBE_PREFIX):
            continue  # doctor --repo's test object, no lock
        try:
            locks.append(parse_lock(repo.load_file(Kind.LOCKS, name, LOCK_AAD), name))
        except NotFound:
            continue  # removed since the listing
        except IntegrityError:
            locks.append(LockInfo(name, 0.0, True, "", 0, "", damaged=True))
    return locks


def remove_locks(repo: Repository, *, include_live: bool) -> list[LockInfo]:
    """Remove stale and damaged locks (all locks with ``include_live``); returns what was
    removed. A damaged lock's holder, if it lives, notices before it commits anything."""
    now = time.time()
    removed = []
    for lock in read_locks(repo):
        if include_live or lock.damaged or lock.is_stale(now):
            repo.storage.delete(Kind.LOCKS, lock.name)
            removed.append(lock)
    return removed


class RepositoryLock:
    """A held lock as a context manager; a background thread keeps it fresh."""

    def __init__(
        self,
        repo: Repository,
        *,
        exclusive: bool,
        load_index: bool = True,
        maintenance: bool = False,
    ) -> None:
        self._repo = repo
        self._exclusive = exclusive
        self._maintenance = maintenance and not exclusive
        self._load_index = load_index
        self.holder = secrets.token_hex(8)
        self.since = time.time()
        self._name: str | None = None
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None
        self._refresh_lock = threading.Lock()

    def __enter__(self) -> RepositoryLock:
        self._name = self._write()
        try:
            conflict = self._conflict()
            if conflict is not None:
                raise RepositoryLocked(
                    f"the repository is locked: {conflict.describe()}; if that process is "
                    "gone, run `freezeframe unlock`"
                )
            if self._load_index:
                self._repo.ensure_index()  # only now: see Repository.ensure_index
        except BaseException:
            self._release_quietly()
            raise
        self._refresher = threading.Thread(target=self._refresh_loop, daemon=True)
        self._refresher.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join()
        if exc is not None:
            self._release_quietly()  # the error that ended the block is the one to report
        elif self._name is not None:
            self._repo.storage.delete(Kind.LOCKS, self._name)

    def _release_quietly(self) -> None:
        """Remove our lock on the way out of a failure; if even that fails, the lock goes
        stale (its refresher has stopped) and is removed by the next writer or `unlock`."""
        if self._name is None:
            return
        try:
            self._repo.storage.delete(Kind.LOCKS, self._name)
        except FreezeframeError as exc:
            self._repo.warn(f"our lock could not be removed ({exc}); it goes stale")

    def ensure_held(self) -> None:
        """Fail if our lock has vanished (removed as stale while this process was suspended):
        a prune may have run meanwhile, so nothing that relies on the index may be committed."""
        self._refresh()
        if self._name is None or not self._repo.storage.exists(Kind.LOCKS, self._name):
            raise RepositoryLocked(
                "this process lost its repository lock (it was removed as stale); "
                "nothing was committed, run the command again"
            )

    def _conflict(self) -> LockInfo | None:
        now = time.time()
        mine = LockInfo("", now, self._exclusive, "", 1, "", maintenance=self._maintenance)
        for lock in read_locks(self._repo):
            if lock.name == self._name or lock.is_stale(now):
                continue
            if mine.conflicts(lock):
                return lock
        return None

    def others(self) -> list[LockInfo]:
        """Every lock in the repository but this one (stale ones too)."""
        return [lock for lock in read_locks(self._repo) if lock.holder != self.holder]

    def _write(self) -> str:
        doc = {
            "time": time.time(),
            "exclusive": self._exclusive,
            "maintenance": self._maintenance,
            "since": self.since,
            "holder": self.holder,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "user": getpass.getuser(),
        }
        return self._repo.save_file(Kind.LOCKS, json.dumps(doc).encode(), LOCK_AAD)

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH_SECONDS):
            self._refresh()

    def _refresh(self) -> None:
        """Rewrite the lock with a fresh time, unless it was taken away from us."""
        with self._refresh_lock:
            old = self._name
            if old is None or not self._repo.storage.exists(Kind.LOCKS, old):
                return
            self._name = self._write()
            self._repo.storage.delete(Kind.LOCKS, old)


@contextlib.contextmanager
def reading(repo: Repository, *, lock: bool = True) -> Iterator[None]:
    """A shared lock for a command that only reads, or with ``lock=False`` none at all (its
    index loaded all the same): for storage that takes no write, such as an object store that
    lost a replica, or read-only credentials. Unlocked, nothing keeps a prune elsewhere from
    deleting what it reads; such a read fails rather than returns wrong data."""
    if not lock:
        repo.ensure_index()
        yield
        return
    with RepositoryLock(repo, exclusive=False):
        yield
