"""``doctor``: what each path and VM can reach, and why not higher, before any backup runs
(the web console's plan editor asks the same question); and for a repository location, what
its storage answers (reachable, how fast, which operations its credentials may do), without
the repository's password and whether or not a repository is there yet."""

from __future__ import annotations

import os
import secrets
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from freezeframe.capture.doctor import PathReport, examine
from freezeframe.errors import FreezeframeError, TransientStorageError, UsageError
from freezeframe.quiesce import discovery
from freezeframe.repository.repository import read_config
from freezeframe.storage.base import PROBE_PREFIX, Description, Kind, Storage
from freezeframe.storage.registry import backend_for
from freezeframe.vm.machine import VmSpec
from freezeframe.vm.reach import examine as examine_vm

PROBE_BYTES = 4 * 2**20  # big enough to measure a rate, small enough to cost nothing
LATENCY_REQUESTS = 5
_T = TypeVar("_T")


@dataclass(frozen=True)
class DoctorRequest:
    paths: tuple[str, ...] = ()
    vms: tuple[VmSpec, ...] = ()
    repository: str | None = None  # a location whose storage to examine


@dataclass(frozen=True)
class Finding:
    """One thing found about a repository's storage: ``ok`` None when it was not tried (or
    only informs), False when it failed (``message`` then says why, in one line)."""

    check: str
    ok: bool | None
    message: str


@dataclass
class RepositoryReport:
    """What ``doctor --repo`` found; the numbers are None where they could not be measured."""

    location: str
    backend: str
    details: dict[str, str]
    filesystem: str | None = None
    free_bytes: int | None = None
    total_bytes: int | None = None
    reachable: bool = False
    latency_ms: float | None = None  # the median of LATENCY_REQUESTS small requests
    latency_samples_ms: list[float] = field(default_factory=list)
    probe_bytes: int = PROBE_BYTES
    upload_bytes_per_s: float | None = None
    download_bytes_per_s: float | None = None
    can: dict[str, bool | None] = field(
        default_factory=lambda: dict.fromkeys(("write", "read", "list", "delete"))
    )
    repository_exists: bool | None = None
    repository: dict[str, Any] | None = None  # the config's plain fields, when one is there
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether nothing failed: the storage can hold a repository with these credentials."""
        return all(f.ok is not False for f in self.findings)


@dataclass
class DoctorReport:
    paths: list[PathReport] = field(default_factory=list)
    vms: list[dict[str, Any]] = field(default_factory=list)
    repository: RepositoryReport | None = None


def doctor(request: DoctorRequest) -> DoctorReport:
    """Examine every path (with the databases running there), every VM and the repository's
    storage; changes nothing but a short-lived test object of the storage's."""
    if not request.paths and not request.vms and request.repository is None:
        raise UsageError("give paths, --vm SPEC, or --repo [LOCATION] to examine")
    running = discovery.running() if request.paths else []
    return DoctorReport(
        paths=[examine(path, running) for path in request.paths],
        vms=[examine_vm(spec) for spec in request.vms],
        repository=None if request.repository is None else examine_storage(request.repository),
    )


def examine_storage(location: str) -> RepositoryReport:
    """Probe the storage a location names: a listing (is it reachable, may these credentials
    list), small requests timed, then one PROBE_BYTES object under LOCKS written, listed, read
    back and deleted, never touching the repository's own objects. UsageError (exit 2) for a
    location that does not parse; every other failure is a finding."""
    storage = backend_for(location)
    try:
        return _Probe(storage, storage.describe()).run()
    finally:
        storage.close()


class _Probe:
    def __init__(self, storage: Storage, described: Description) -> None:
        self.storage = storage
        self.report = RepositoryReport(
            storage.location,
            described.backend,
            dict(described.details),
            described.filesystem,
            described.free_bytes,
            described.total_bytes,
        )
        self.name = f"{PROBE_PREFIX}{secrets.token_hex(16)}"

    def note(self, check: str, ok: bool | None, message: str) -> None:
        self.report.findings.append(Finding(check, ok, message))

    def attempt(self, check: str, fn: Callable[[], _T]) -> tuple[_T | None, bool]:
        """``fn()``, or its error as the failed finding ``check``."""
        try:
            return fn(), True
        except FreezeframeError as exc:
            self.note(check, False, str(exc))
            return None, False

    def run(self) -> RepositoryReport:
        report = self.report
        self.note("backend", None, _backend_line(report))
        if not self._reach():
            why = "the storage refused the first request" if report.reachable else "unreachable"
            self._not_tried("repository", "write", "list", "read", "delete", why=why)
            return report
        self._repository()
        local = self.storage.capabilities.local_directory
        if local is not None and not os.path.isdir(os.path.join(local, Kind.LOCKS.value)):
            self._before_init(local)
        else:
            self._round_trip()
        self._space()
        return report

    def _reach(self) -> bool:
        """The first request: a listing of the locks, timed with a few lookups after it."""
        try:
            list(self.storage.list(Kind.LOCKS))
        except FreezeframeError as exc:  # no answer, or one refusing (a bucket, credentials)
            answered = not isinstance(exc, TransientStorageError)
            self.report.reachable = answered
            self.note("access" if answered else "reachable", False, str(exc))
            return False
        self.report.reachable = True
        self.report.can["list"] = True
        samples = []
        for _ in range(LATENCY_REQUESTS):
            start = time.perf_counter()
            _, fine = self.attempt("latency", lambda: self.storage.exists(Kind.LOCKS, self.name))
            if not fine:
                return False
            samples.append((time.perf_counter() - start) * 1000)
        self.report.latency_samples_ms = [round(s, 3) for s in samples]
        self.report.latency_ms = round(statistics.median(samples), 3)
        self.note(
            "reachable",
            True,
            f"yes, {_ms(self.report.latency_ms)} round trip (median of {len(samples)} requests)",
        )
        return True

    def _repository(self) -> None:
        found, fine = self.attempt("repository", lambda: self.storage.exists(Kind.CONFIG, "config"))
        if not fine:
            return
        self.report.repository_exists = bool(found)
        keys, fine = (None, True) if found else self.attempt("repository", self._keys)
        if not fine:
            return
        if not found and not keys:
            self.note("repository", None, "none here yet (no config): `freezeframe init` makes one")
            return
        # With the config: its plain fields. Without it but with keys: the repository's error.
        config, fine = self.attempt("repository", lambda: read_config(self.storage))
        if config is None or not fine:
            return
        self.report.repository = {
            "id": config.repository_id,
            "version": config.version,
            "created": config.created,
        }
        self.note(
            "repository",
            True,
            f"found: id {config.repository_id[:8]}, format version {config.version}, "
            f"created {config.created}",
        )

    def _keys(self) -> bool:
        return any(True for _ in self.storage.list(Kind.KEYS))

    def _round_trip(self) -> None:
        """Write, list, read and delete the probe object, each timed; the probe is removed on
        every way out."""
        data = os.urandom(PROBE_BYTES)
        report = self.report
        start = time.perf_counter()
        _, wrote = self.attempt("write", lambda: self.storage.put(Kind.LOCKS, self.name, data))
        report.can["write"] = wrote
        if not wrote:
            self.note("list", True, "allowed")
            if report.repository is not None:
                report.can["read"] = True
                self.note("read", True, "allowed (the repository's config was read)")
            else:
                self._not_tried("read", why="nothing was written")
            self._not_tried("delete", why="nothing was written")
            return
        try:
            report.upload_bytes_per_s = PROBE_BYTES / (time.perf_counter() - start)
            self.note("write", True, f"allowed, {_rate(report.upload_bytes_per_s)} up")
            listed, fine = self.attempt("list", lambda: list(self.storage.list(Kind.LOCKS)))
            if fine:
                seen = any(info.name == self.name for info in listed or [])
                report.can["list"] = seen
                self.note("list", seen, "allowed" if seen else "the object written is not listed")
            else:
                report.can["list"] = False
            start = time.perf_counter()
            back, read = self.attempt("read", lambda: self.storage.get(Kind.LOCKS, self.name))
            if read:
                report.download_bytes_per_s = PROBE_BYTES / (time.perf_counter() - start)
                same = back == data
                report.can["read"] = same
                self.note(
                    "read",
                    same,
                    f"allowed, {_rate(report.download_bytes_per_s)} down"
                    if same
                    else "the object read back differs from the one written",
                )
            else:
                report.can["read"] = False
            _, deleted = self.attempt("delete", lambda: self.storage.delete(Kind.LOCKS, self.name))
            if deleted:
                gone, fine = self.attempt(
                    "delete", lambda: not self.storage.exists(Kind.LOCKS, self.name)
                )
                if fine:
                    report.can["delete"] = bool(gone)
                    self.note("delete", bool(gone), "allowed" if gone else "the object stays")
            else:
                report.can["delete"] = False
        finally:
            if report.can["delete"] is not True:
                try:
                    self.storage.delete(Kind.LOCKS, self.name)
                except FreezeframeError:
                    self.note("cleanup", False, f"locks/{self.name} is left behind; remove it")

    def _before_init(self, directory: str) -> None:
        """A local place without the repository's directories: nothing can be written through
        the storage yet; say whether ``init`` could create them."""
        existing = self.report.details.get("nearest_existing", directory)
        writable = os.access(existing, os.W_OK | os.X_OK)
        self.note(
            "write",
            writable,
            f"{existing} is writable: `freezeframe init` can create the repository there"
            if writable
            else f"{existing} is not writable by this user: `freezeframe init` would fail",
        )
        self.report.can["write"] = writable
        self._not_tried("read", "delete", why="no repository directories yet")

    def _space(self) -> None:
        report = self.report
        if report.free_bytes is None:
            return
        on = f" on {report.filesystem}" if report.filesystem else ""
        total = f" of {_size(report.total_bytes)}" if report.total_bytes else ""
        self.note("space", None, f"{_size(report.free_bytes)} free{total}{on}")

    def _not_tried(self, *checks: str, why: str) -> None:
        for check in checks:
            self.note(check, None, f"not tried: {why}")


def _backend_line(report: RepositoryReport) -> str:
    details = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in report.details.items() if v)
    return f"{report.backend}: {details}" if details else report.backend


def _ms(value: float) -> str:
    return f"{value:.2f} ms" if value < 10 else f"{value:.0f} ms"


def _rate(value: float) -> str:
    return f"{value / 1e6:.1f} MB/s"


def _size(value: int | None) -> str:
    size = float(value or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} TiB"
