"""The SFTP backend: a repository in a directory of an SSH server, laid out as the local backend
lays out its own (``PATH/config``, ``keys/``, ``index/``, ``snapshots/``, ``locks/`` and
``data/<first two hex digits>/``), so either copies into the other by a plain ``rsync``.

A location is ``sftp:USER@HOST:PATH`` or ``sftp://USER@HOST[:PORT]/PATH``
(``storage.sftp_location``); it never holds a password (keys only: ``storage.sftp_connect``).

A put writes ``.ff-tmp-<name>-<random>`` in the object's directory (hidden, so no listing shows
it), checks every write's status, fsyncs it where the server offers ``fsync@openssh.com``, then
renames it over the name with ``posix-rename@openssh.com`` (plain RENAME, which refuses to
replace, where that is missing: the old object is removed first). Files are created 0600 and
directories 0700 (0640/0750 for a group-readable repository, which its config's mode says).

Threads: the repository's uploaders and readers call one storage at once, and an SFTP channel
carries one request stream, so a pool of up to CHANNELS channels on one SSH connection serves
them, each channel used by one thread at a time. A dropped connection fails the calls using it
with TransientStorageError (the retrying wrapper calls again) and the next call connects anew.

Why 4 channels (bench/sftp_channels.py, 4 threads against the test sshd on loopback, medians of
3 rounds on 2 shared cores): against 1 channel, 4 take 439 small puts/s instead of 189 (each
put waits for its fsync, which channels overlap), 1,822 ranged 1 KiB gets/s instead of 613,
and 16 MiB packs at 79 MB/s up and 86 down instead of 53 and 53; 8 channels gain nothing more
(one SSH connection's packets all pass through paramiko's one transport thread).
"""

from __future__ import annotations

import builtins
import contextlib
import os
import posixpath
import secrets
import stat
import struct
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

import paramiko

from freezeframe.errors import (
    FreezeframeError,
    NotFound,
    RepositoryExists,
    StorageError,
    TransientStorageError,
)
from freezeframe.storage.base import Capabilities, Description, Kind, ObjectInfo
from freezeframe.storage.sftp_connect import Server, connect
from freezeframe.storage.sftp_location import SYNTAX, SftpLocation, parse_location
from freezeframe.storage.sftp_protocol import (
    CREATE,
    EXCLUSIVE,
    FAILURE,
    NO_SUCH_FILE,
    PERMISSION_DENIED,
    READ,
    TRUNCATE,
    WRITE,
    ProtocolError,
    SftpChannel,
    SftpStatus,
)
from freezeframe.storage.timeouts import io_timeout

_T = TypeVar("_T")

__all__ = ["SYNTAX", "SftpLocation", "SftpStorage", "parse_location"]

TEMP_PREFIX = ".ff-tmp-"
CHANNELS = 4  # see the module docstring: more gains nothing on one connection
PRIVATE_MODES = (0o700, 0o600)
GROUP_READABLE_MODES = (0o750, 0o640)
_AUDIT_SHOWN = 10


def _check_name(name: str) -> None:
    """As the local backend's: a name is one path segment that is neither hidden nor empty."""
    if not name or "/" in name or name.startswith("."):
        raise StorageError(f"invalid object name {name!r}")


class _Connection:
    """One SSH connection and its idle channels; ``generation`` tells a channel of an older
    connection (dropped meanwhile) from one of this."""

    def __init__(self, transport: paramiko.Transport, root: str, generation: int) -> None:
        self.transport = transport
        self.root = root
        self.generation = generation
        self.idle: list[SftpChannel] = []
        self.open = 0


class SftpStorage:
    """A repository on an SFTP server, safe to call from many threads (a pool of channels)."""

    def __init__(
        self,
        location: str | SftpLocation,
        *,
        env: Mapping[str, str] | None = None,
        channels: int = CHANNELS,
    ) -> None:
        """``env``: where keys and known hosts are looked up (this process's environment
        unless given); nothing connects until the first call."""
        self.place = location if isinstance(location, SftpLocation) else parse_location(location)
        self.location = str(self.place)
        self.capabilities = Capabilities(writable=True, local_modes=True, local_directory=None)
        self._env = os.environ if env is None else env
        self._io_timeout = io_timeout(self._env)  # without a reply, a channel counts as dead
        self._server = Server(self.place.user, self.place.host, self.place.port)
        self._channels = max(1, channels)
        self._lock = threading.Condition()
        self._connection: _Connection | None = None
        self._connecting = False
        self._generation = 0
        self._modes: tuple[int, int] | None = None

    # -- paths ----------------------------------------------------------------------------

    def _dir_of(self, root: str, kind: Kind, name: str) -> str:
        if kind is Kind.CONFIG:
            return root
        if kind is Kind.DATA:
            return f"{root}/data/{name[:2]}"
        return f"{root}/{kind.value}"

    def _path(self, root: str, kind: Kind, name: str) -> str:
        _check_name(name)
        if kind is Kind.CONFIG:
            return f"{root}/config"
        return f"{self._dir_of(root, kind, name)}/{name}"

    def _show(self, path: str) -> str:
        """A remote path as users name it: the server, then the path."""
        return f"{self.place.user}@{self._server.known_hosts_name}:{path}"

    # -- the pool -------------------------------------------------------------------------

    def _connect(self) -> _Connection:
        """The current connection, made (by one thread, the others waiting) when there is none."""
        with self._lock:
            while True:
                current = self._connection
                if current is not None and current.transport.is_active():
                    return current
                if not self._connecting:
                    break
                self._lock.wait()
            if current is not None:
                self._drop(current)
            self._connecting = True
        try:
            transport = connect(self._server, self._env)
            try:
                channel = self._new_channel(transport)
                root = self.place.path
                if not root.startswith("/"):
                    home = self._call(f"cannot find {root}", lambda: channel.realpath("."))
                    root = posixpath.join(home, root)
            except BaseException:
                transport.close()
                raise
            with self._lock:
                self._generation += 1
                connection = _Connection(transport, root, self._generation)
                connection.idle.append(channel)
                connection.open = 1
                self._connection = connection
                return connection
        finally:
            with self._lock:
                self._connecting = False
                self._lock.notify_all()

    def _new_channel(self, transport: paramiko.Transport) -> SftpChannel:
        try:
            raw = transport.open_session(timeout=self._io_timeout)
            raw.settimeout(self._io_timeout)
            raw.invoke_subsystem("sftp")
            return SftpChannel(raw)
        except (paramiko.SSHException, EOFError, OSError, ProtocolError) as exc:
            where = self._show(self.place.path)
            raise TransientStorageError(f"cannot open an SFTP session on {where}: {exc}") from exc

    def _drop(self, connection: _Connection) -> None:
        """Close a connection that failed (under the lock); its busy channels fail alone."""
        if self._connection is connection:
            self._connection = None
        for channel in connection.idle:
            with contextlib.suppress(Exception):
                channel.close()
        connection.idle.clear()
        with contextlib.suppress(Exception):
            connection.transport.close()
        self._lock.notify_all()

    @contextlib.contextmanager
    def _channel(self) -> Iterator[tuple[SftpChannel, str]]:
        """A channel for this thread alone, and the repository's absolute path."""
        connection = self._connect()
        channel: SftpChannel | None = None
        with self._lock:
            while channel is None:
                if connection.idle:
                    channel = connection.idle.pop()
                elif connection.open < self._channels:
                    connection.open += 1
                    break
                elif self._connection is not connection:
                    raise TransientStorageError(f"the connection to {self.location} was lost")
                else:
                    self._lock.wait()
        if channel is None:
            try:
                channel = self._new_channel(connection.transport)
            except BaseException:
                with self._lock:
                    connection.open -= 1
                    self._lock.notify_all()
                raise
        healthy = False
        try:
            yield channel, connection.root
            healthy = True
        except (SftpStatus, FreezeframeError):
            healthy = True  # the server refused a request, or we did: the stream is in step
            raise
        finally:
            with self._lock:
                if healthy and self._connection is connection:
                    connection.idle.append(channel)
                else:
                    connection.open -= 1
                    with contextlib.suppress(Exception):
                        channel.close()
                    if not connection.transport.is_active():
                        self._drop(connection)
                self._lock.notify_all()

    def _run(self, what: str, fn: Callable[[SftpChannel, str], _T], missing: str = "") -> _T:
        """``fn(channel, root)`` on a pooled channel, its errors as ours."""

        def on_channel() -> _T:
            with self._channel() as (channel, root):
                return fn(channel, root)

        return self._call(what, on_channel, missing)

    def _call(self, what: str, fn: Callable[[], _T], missing: str = "") -> _T:
        try:
            return fn()
        except SftpStatus as exc:
            if exc.code == NO_SUCH_FILE and missing:
                raise NotFound(missing) from exc
            if exc.code == PERMISSION_DENIED:
                raise StorageError(
                    f"{what}: permission denied on the server (for {self.place.user})"
                ) from exc
            raise StorageError(f"{what}: the server answered {exc}") from exc
        except FreezeframeError:
            raise
        except TimeoutError as exc:
            raise TransientStorageError(f"{what}: no answer within {self._io_timeout:g} s") from exc
        except (paramiko.SSHException, EOFError, OSError, ProtocolError, struct.error) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise TransientStorageError(f"{what}: the connection failed ({reason})") from exc

    def _file_modes(self, channel: SftpChannel, root: str) -> tuple[int, int]:
        """The modes a writer uses: group-readable when the config is (as the local backend)."""
        if self._modes is None:
            try:
                mode = channel.stat(f"{root}/config").mode or 0
            except SftpStatus:
                return PRIVATE_MODES  # no repository yet: create_layout decides
            self._modes = GROUP_READABLE_MODES if mode & stat.S_IRGRP else PRIVATE_MODES
        return self._modes

    # -- the Protocol ---------------------------------------------------------------------

    def create_layout(self, *, group_readable: bool = False) -> builtins.list[str]:
        """Create the repository's directories in an empty (or new) directory; a directory
        holding anything but an unfinished layout is refused."""
        modes = GROUP_READABLE_MODES if group_readable else PRIVATE_MODES
        what = f"cannot create a repository at {self.location}"

        def create(channel: SftpChannel, root: str) -> builtins.list[str]:
            notes: builtins.list[str] = []
            try:
                attributes = channel.stat(root)
            except SftpStatus as exc:
                if exc.code != NO_SUCH_FILE:
                    raise
                _make_parents(channel, root)
                channel.mkdir(root, modes[0])
            else:
                if attributes.mode is not None and not stat.S_ISDIR(attributes.mode):
                    raise StorageError(f"{what}: {root} is not a directory") from None
                self._refuse_held(channel, root, what)
                mode = stat.S_IMODE(attributes.mode or 0)
                if mode & ~modes[0]:
                    notes.append(
                        f"{self._show(root)} was mode {mode:04o}, which let other users read "
                        f"or delete what it holds; it is now {modes[0]:04o}"
                    )
            channel.chmod(root, modes[0])
            wanted = [f"{root}/{k.value}" for k in Kind if k is not Kind.CONFIG]
            wanted += [f"{root}/data/{prefix:02x}" for prefix in range(256)]
            channel.mkdirs(wanted, modes[0])  # those there already fail, and are checked below
            listed = channel.listdirs([root, f"{root}/data"])
            for directory, entries in zip([root, f"{root}/data"], listed, strict=True):
                if isinstance(entries, SftpStatus):
                    raise entries
                for entry, attributes in entries:
                    path = f"{directory}/{entry}"
                    if path in wanted and attributes.mode is not None:
                        if not stat.S_ISDIR(attributes.mode):
                            raise StorageError(f"{what}: {path} is not a directory")
                        if stat.S_IMODE(attributes.mode) != modes[0]:  # the server's umask
                            channel.chmod(path, modes[0])
                        wanted.remove(path)
            if wanted:
                raise StorageError(f"{what}: {wanted[0]} could not be created")
            return notes

        notes = self._run(what, create)
        self._modes = modes
        return notes

    def _refuse_held(self, channel: SftpChannel, root: str, what: str) -> None:
        """RepositoryExists where a repository's objects are, StorageError for foreign files."""
        layout = {k.value for k in Kind}
        entries = channel.listdir(root)
        foreign = sorted(
            n for n, _a in entries if n not in layout and not n.startswith(TEMP_PREFIX)
        )
        held = sorted(
            f"{n}/"
            for n, _a in entries
            if n in layout - {"config", "data"} and _has_files(channel, f"{root}/{n}")
        )
        if any(n == "config" for n, _a in entries):
            held.insert(0, "config")
        if held:
            raise RepositoryExists(
                f"{self.location} already holds a repository's objects ({', '.join(held)}); "
                "a new repository needs an empty directory"
            )
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise StorageError(
                f"{what}: {root} is not empty (it holds {shown}); a new repository needs an "
                "empty or new directory"
            )

    def put(self, kind: Kind, name: str, data: bytes) -> None:
        what = f"cannot write {self._show(self._path(self.place.path, kind, name))}"

        def write(channel: SftpChannel, root: str) -> None:
            path = self._path(root, kind, name)
            directory, base = posixpath.split(path)
            tmp = f"{directory}/{TEMP_PREFIX}{base}-{secrets.token_hex(6)}"
            file_mode = self._file_modes(channel, root)[1]
            handle = channel.open(tmp, WRITE | CREATE | TRUNCATE | EXCLUSIVE, file_mode)
            try:
                try:
                    channel.fchmod(handle, file_mode)  # the server's umask filtered open's
                    channel.write(handle, data)
                    channel.fsync(handle)
                finally:
                    channel.close_handle(handle)
                try:
                    channel.rename(tmp, path)
                except SftpStatus:
                    if channel.replaces_atomically:
                        raise
                    channel.remove(path)  # plain RENAME does not replace
                    channel.rename(tmp, path)
            except SftpStatus as exc:
                # OpenSSH answers ENOSPC, EDQUOT and EIO alike with a bare "Failure": what is
                # free tells a full disk (asked before the half-written file goes and frees).
                free = _free_bytes(channel, directory) if exc.code == FAILURE else None
                with contextlib.suppress(SftpStatus):
                    channel.remove(tmp)
                if free is not None and free < len(data) + 64 * 1024:
                    raise StorageError(
                        f"{what}: no space left on the server's file system ({free} bytes "
                        f"free, {len(data)} needed)"
                    ) from exc
                if free is not None:
                    raise StorageError(
                        f"{what}: the server answered {exc}, naming no cause ({free} bytes are "
                        "free there: a quota, or an I/O error?)"
                    ) from exc
                raise

        self._run(what, write)

    def get(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        shown = self._show(self._path(self.place.path, kind, name))
        what = f"cannot read {shown}"
        missing = f"{kind.value}/{name} is missing from the repository"
        if offset < 0 or (length is not None and length < 0):
            raise StorageError(f"{what}: invalid range {offset}+{length}")

        def read(channel: SftpChannel, root: str) -> bytes:
            handle = channel.open(self._path(root, kind, name), READ)
            try:
                count = length
                if count is None:
                    size = channel.fstat(handle).size
                    if size is None:
                        raise StorageError(f"{what}: the server did not say its size")
                    count = max(0, size - offset)
                return channel.read(handle, offset, count)
            finally:
                channel.close_handle(handle)

        data = self._run(what, read, missing)
        if length is not None and len(data) != length:
            raise StorageError(f"{kind.value}/{name} is shorter than expected")
        return data

    def list(self, kind: Kind) -> Iterator[ObjectInfo]:
        what = f"cannot list {self._show(self.place.path + '/' + kind.value)}"

        def listing(channel: SftpChannel, root: str) -> builtins.list[ObjectInfo]:
            if kind is Kind.CONFIG:
                try:
                    size = channel.stat(f"{root}/config").size
                except SftpStatus as exc:
                    if exc.code == NO_SUCH_FILE:
                        return []
                    raise
                return [ObjectInfo("config", size or 0)]
            base = f"{root}/{kind.value}"
            if kind is Kind.DATA:
                dirs = sorted(
                    f"{base}/{n}"
                    for n, a in channel.listdir(base)
                    if a.mode is not None and stat.S_ISDIR(a.mode) and len(n) == 2
                )
            else:
                dirs = [base]
            found = []
            for entries in channel.listdirs(dirs):
                if isinstance(entries, SftpStatus):
                    if entries.code == NO_SUCH_FILE:
                        continue  # a shard removed meanwhile
                    raise entries
                for entry, attributes in entries:
                    if entry.startswith(".") or attributes.mode is None:
                        continue
                    if stat.S_ISREG(attributes.mode):
                        found.append(ObjectInfo(entry, attributes.size or 0))
            return found

        yield from self._run(what, listing)

    def delete(self, kind: Kind, name: str) -> None:
        what = f"cannot delete {self._show(self._path(self.place.path, kind, name))}"
        with contextlib.suppress(NotFound):
            self._run(what, lambda c, root: c.remove(self._path(root, kind, name)), "absent")

    def exists(self, kind: Kind, name: str) -> bool:
        what = f"cannot look for {self._show(self._path(self.place.path, kind, name))}"

        def look(channel: SftpChannel, root: str) -> bool:
            try:
                channel.lstat(self._path(root, kind, name))
            except SftpStatus as exc:
                if exc.code == NO_SUCH_FILE:
                    return False
                raise
            return True

        return self._run(what, look)

    def remove_stale_temporaries(self) -> int:
        """Delete what crashed writers left (``.ff-tmp-*``) in every directory of the layout."""

        def sweep(channel: SftpChannel, root: str) -> int:
            removed = 0
            dirs = _layout_dirs(channel, root)
            for directory, entries in zip(dirs, channel.listdirs(dirs), strict=True):
                for entry, _attributes in [] if isinstance(entries, SftpStatus) else entries:
                    if entry.startswith(TEMP_PREFIX):
                        with contextlib.suppress(SftpStatus):
                            channel.remove(f"{directory}/{entry}")
                            removed += 1
            return removed

        return self._run(f"cannot clean up {self.location}", sweep)

    def audit(self) -> builtins.list[str]:
        """Directories and files whose modes let more users in than the repository's own."""

        def walk(channel: SftpChannel, root: str) -> builtins.list[str]:
            dir_mode, file_mode = self._file_modes(channel, root)
            problems = []
            dirs = _layout_dirs(channel, root)
            listed = channel.listdirs(dirs)
            modes = {root: stat.S_IMODE(channel.lstat(root).mode or 0)}
            for directory, entries in zip(dirs, listed, strict=True):
                for entry, attributes in [] if isinstance(entries, SftpStatus) else entries:
                    if attributes.mode is not None and stat.S_ISDIR(attributes.mode):
                        modes[f"{directory}/{entry}"] = stat.S_IMODE(attributes.mode)
            for directory, entries in zip(dirs, listed, strict=True):
                mode = modes.get(directory, 0)
                if mode & ~dir_mode:
                    shown = self._show(directory)
                    problems.append(
                        f"{shown} is mode {mode:04o} (a repository's is {dir_mode:04o})"
                    )
                for entry, attributes in [] if isinstance(entries, SftpStatus) else entries:
                    if attributes.mode is None or not stat.S_ISREG(attributes.mode):
                        continue
                    mode = stat.S_IMODE(attributes.mode)
                    if mode & ~file_mode:
                        shown = self._show(f"{directory}/{entry}")
                        problems.append(
                            f"{shown} is mode {mode:04o} (a repository's is {file_mode:04o})"
                        )
            return problems

        problems = self._run(f"cannot audit {self.location}", walk)
        if len(problems) > _AUDIT_SHOWN:
            more = len(problems) - _AUDIT_SHOWN
            problems = [*problems[:_AUDIT_SHOWN], f"... and {more} more with loose modes"]
        return problems

    def describe(self) -> Description:
        """The server, the user and the path, and where the key and the known hosts come from
        (never a key); sends nothing."""
        identity = self._env.get("FREEZEFRAME_SFTP_IDENTITY")
        details = {
            "host": self.place.host,
            "port": str(self.place.port),
            "user": self.place.user,
            "path": self.place.path,
            "credentials": f"key file {identity}" if identity else "ssh agent or ~/.ssh keys",
            "known_hosts": self._env.get("FREEZEFRAME_SFTP_KNOWN_HOSTS", "~/.ssh/known_hosts"),
        }
        return Description("sftp", details)

    def close(self) -> None:
        """Close the connection; a later call connects again."""
        with self._lock:
            if self._connection is not None:
                self._drop(self._connection)


def _free_bytes(channel: SftpChannel, directory: str) -> int | None:
    try:
        return channel.free_bytes(directory)
    except SftpStatus:
        return None


def _make_parents(channel: SftpChannel, path: str) -> None:
    """Create the missing directories above ``path`` (with the server's default modes)."""
    parent = posixpath.dirname(path)
    missing = []
    while parent not in ("", "/"):
        try:
            channel.stat(parent)
            break
        except SftpStatus as exc:
            if exc.code != NO_SUCH_FILE:
                raise
            missing.append(parent)
            parent = posixpath.dirname(parent)
    for directory in reversed(missing):
        channel.mkdir(directory)


def _layout_dirs(channel: SftpChannel, root: str) -> builtins.list[str]:
    """The repository's directory, each kind's, and every data shard (in order)."""
    dirs = [root] + [f"{root}/{k.value}" for k in Kind if k is not Kind.CONFIG]
    with contextlib.suppress(SftpStatus):
        dirs += sorted(
            f"{root}/data/{n}"
            for n, a in channel.listdir(f"{root}/data")
            if a.mode is not None and stat.S_ISDIR(a.mode)
        )
    return dirs


def _has_files(channel: SftpChannel, directory: str) -> bool:
    try:
        return any(not n.startswith(".") for n, _a in channel.listdir(directory))
    except SftpStatus:
        return False
