"""One backup of a running VM: decide the level, take every disk at one instant (the guest's
file systems frozen around it at `filesystem`), read the disks while the VM runs, store them
and the VM's definition as a snapshot.

In the snapshot a VM is a directory ``/vm/<name>/`` holding one sparse raw image per disk,
named after the guest device (``vda.raw``), and ``definition.json`` (the disks, their formats
and sizes, QEMU's command line). A plain ``restore`` therefore writes bootable raw images.

Crash safety: before anything is started in QEMU, the watchdog is handed the release of the VM
(thaw the guest, cancel freezeframe's block jobs, remove its nodes and overlays); the guest's
freeze has a deadline of its own (``--freeze-cap``) after which the watchdog thaws it.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from freezeframe import hooks
from freezeframe.backup.commit import SnapshotRecord, commit_snapshot
from freezeframe.backup.images import DiskProgress, ImageReader, StoredDisk, store_disk
from freezeframe.capture.session import decide_level
from freezeframe.capture.watchdog import Watchdog
from freezeframe.errors import FreezeframeError, QmpError, UsageError
from freezeframe.guest import protocol
from freezeframe.levels import Level, parse_requested
from freezeframe.repository.pack import BlobType
from freezeframe.repository.repository import Repository
from freezeframe.repository.snapshot import ConsistencyReport, Snapshot
from freezeframe.repository.tree import Node, encode_tree
from freezeframe.vm import incremental
from freezeframe.vm.machine import Disk, VmSpec, disks_of
from freezeframe.vm.pointintime import PointInTime, cleanup, sole_run
from freezeframe.vm.qmp import GuestAgent, Qmp

# What a VM can reach, the highest first: it is always read from a point-in-time view.
LEVELS = tuple(level for level in Level.descending() if level >= Level.CRASH)
RELEASE_DEADLINE_S = 7 * 24 * 3600.0  # the read's own limit is the caller's; this is a backstop
AGENT_TIMEOUT_S = 10.0
PROVIDER = "qemu-fleecing"


@dataclass
class VmBackupResult:
    snapshot: Snapshot
    warnings: list[str] = field(default_factory=list)


def reachable(spec: VmSpec) -> tuple[Level, str]:
    """The highest level this VM reaches, and why not higher (`crash` needs only QMP)."""
    if spec.qga is None:
        return Level.CRASH, "no guest agent socket given (qga=PATH)"
    try:
        with GuestAgent(spec.qga, AGENT_TIMEOUT_S) as agent:
            agent.execute("guest-fsfreeze-status")
            hook = guest_hook(agent)
    except QmpError as exc:
        return Level.CRASH, f"the guest agent does not freeze: {exc}"
    if hook is None:
        return Level.FILESYSTEM, (
            "the guest hook is not installed in the guest (freezeframe guest-hook install)"
        )
    if not hook.get("quiescers"):
        return Level.FILESYSTEM, "the guest hook has no quiescer configured in the guest"
    return Level.APPLICATION, ""


def guest_hook(agent: GuestAgent) -> dict[str, Any] | None:
    """What ``freezeframe guest-hook install`` noted in the guest, or None."""
    return _guest_json(agent, protocol.INSTALLED)


def _guest_json(agent: GuestAgent, name: str) -> dict[str, Any] | None:
    """A JSON document of the guest hook's state directory, read through the agent (None when
    missing or not a JSON object)."""
    text = agent.read_file(_guest_file(name))
    try:
        document = json.loads(text) if text else None
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def examine(spec: VmSpec) -> dict[str, Any]:
    """``doctor --vm``: the disks, whether the guest agent answers and freezes, and the levels."""
    with Qmp(spec.qmp) as qmp:
        disks = disks_of(qmp)
        top, reason = reachable(spec)
        agent: dict[str, Any] = {"socket": spec.qga, "answers": False}
        hook: dict[str, Any] | None = None
        if spec.qga is not None:
            try:
                with GuestAgent(spec.qga, AGENT_TIMEOUT_S) as guest:
                    info = guest.execute("guest-info")
                    agent.update(
                        answers=True,
                        version=info.get("version"),
                        fsfreeze_status=guest.execute("guest-fsfreeze-status"),
                    )
                    hook = guest_hook(guest)
            except QmpError as exc:
                agent["error"] = str(exc)
        rank = LEVELS.index(top)
        return {
            "name": spec.name,
            "qemu": qmp.version,
            "disks": [d.to_json() for d in disks],
            "guest_agent": agent,
            "guest_hook": hook or False,
            "reachable": list(LEVELS[rank:]),
            "unreachable": {level: reason for level in LEVELS[:rank]},
        }


def backup_vm(
    repo: Repository,
    spec: VmSpec,
    open_reader: Callable[[str, str, str | None], ImageReader],
    *,
    requested: str = "auto",
    fallback: str = "fail",
    freeze_cap_s: float = 10.0,
    quiesce_cap_s: float = 60.0,
    tags: list[str] | None = None,
    progress: DiskProgress | None = None,
    before_commit: Callable[[], None] | None = None,
) -> VmBackupResult:
    """``open_reader(socket, export, bitmap)`` opens one connection to one exported disk (with
    the dirty bitmap of an incremental read)."""
    asked = parse_requested(requested)
    warnings: list[str] = []
    started = datetime.now(UTC)
    t0 = time.monotonic()
    with Qmp(spec.qmp) as qmp, sole_run(spec.name):
        leftovers = cleanup(qmp, spec.name)
        if leftovers:
            warnings.append(f"removed what an earlier run left: {', '.join(leftovers)}")
        disks = disks_of(qmp)
        if not disks:
            raise FreezeframeError(f"VM {spec.name}: QEMU reports no disk to back up")
        top, reason = reachable(spec)
        if asked == Level.NONE:
            raise UsageError("a VM is always read from a point-in-time view: use crash or higher")
        achieved, decided = decide_level(asked, top, reason, fallback)
        warnings += decided
        chain = incremental.chain_of(repo, qmp, spec.name, disks)
        definition = {
            "name": spec.name,
            "qemu": qmp.version,
            "command_line": qmp.qemu_command_line(),
            "disks": [d.to_json() for d in disks],
        }
        previous = {drive: link.bitmap for drive, link in chain.items()}
        with Watchdog() as watchdog:
            release = [sys.executable, "-m", "freezeframe.vm.release", "--qmp", spec.qmp]
            release += ["--vm", spec.name] + (["--qga", spec.qga] if spec.qga else [])
            token = watchdog.arm_command(release, {}, RELEASE_DEADLINE_S)
            view = _view(qmp, disks, spec.name, repo)
            run_id = f"{time.time_ns():x}"
            application = achieved == Level.APPLICATION
            freeze = _GuestFreeze(
                spec,
                watchdog,
                release,
                quiesce_cap_s if application else freeze_cap_s,
                run_id if application else None,
            )
            succeeded = False
            quiesce: dict[str, Any] = {}
            try:
                if achieved.at_rest:
                    try:
                        view.start(freeze.freeze, freeze.thaw, previous)
                    except QmpError as exc:
                        view.stop()
                        if not freeze.failed:
                            raise
                        achieved, decided = decide_level(
                            achieved,
                            Level.CRASH,
                            str(exc),
                            fallback,
                            message=f"VM {spec.name}: {exc}",
                            cause=exc,
                        )
                        warnings += decided
                        reason = str(exc)
                        view = _view(qmp, disks, spec.name, repo)
                        view.start(previous=previous)
                    if freeze.overran:
                        message = (
                            f"VM {spec.name}: the guest's freeze passed its {freeze_cap_s:g} s "
                            "cap and the watchdog thawed it before the disks were taken"
                        )
                        # The one transaction still took every disk at one instant.
                        achieved, decided = decide_level(
                            achieved, Level.CRASH, message, fallback, message=message
                        )
                        warnings += decided
                        reason = message
                    if achieved == Level.APPLICATION:
                        quiesce = freeze.hold_report()
                        if freeze.application_error:
                            achieved, decided = decide_level(
                                achieved,
                                Level.FILESYSTEM,
                                freeze.application_error,
                                fallback,
                                message=f"VM {spec.name}: {freeze.application_error}",
                            )
                            warnings += decided
                            reason = freeze.application_error
                else:
                    view.start(previous=previous)
                hooks.reached(hooks.Point.VM_READING)
                stored = {
                    disk.drive: store_disk(
                        repo,
                        functools.partial(
                            open_reader,
                            view.nbd_socket,
                            view.export_of(disk),
                            chain[disk.drive].bitmap,
                        ),
                        progress=progress,
                        parent=chain[disk.drive].chunks,
                    )
                    for disk in disks
                }
                view.stop()
                repo.flush()
                report = ConsistencyReport(
                    requested=asked,
                    achieved=achieved,
                    volumes=[
                        _volume_record(d, view, freeze, achieved, chain[d.drive]) for d in disks
                    ],
                    reason=reason,
                    quiesce=quiesce,
                )
                root = _save_tree(repo, spec.name, disks, stored, definition)
                record = SnapshotRecord(
                    started=started,
                    paths=[f"/vm/{spec.name}"],
                    tree=root,
                    consistency=report,
                    summary=_summary(stored, time.monotonic() - t0),
                    tags=list(tags or []),
                )
                snapshot = commit_snapshot(repo, record, before_commit)
                succeeded = True
            finally:
                view.stop()
                # Only once the snapshot is saved may the previous bitmap go: until then the
                # changes since the last saved snapshot must stay recorded.
                view.finish(succeeded)
                watchdog.disarm(token)
    return VmBackupResult(snapshot, warnings)


class _GuestFreeze:
    """The guest's file systems frozen for the transaction, under a cap the watchdog keeps.
    The agent's socket takes one client at a time, so it is not held open across the freeze:
    the watchdog must be able to reach the agent to thaw.

    At `application` (``run_id`` given) a request left in the guest first makes the agent's
    fsfreeze hook hold the guest's applications (``freezeframe guest-hook``) before the freeze;
    the hook's state, read back after the thaw (the agent serves no file while frozen), says
    whether they were held across the transaction and what the quiescers recorded."""

    def __init__(
        self,
        spec: VmSpec,
        watchdog: Watchdog,
        release: list[str],
        cap_s: float,
        run_id: str | None = None,
    ) -> None:
        self.spec = spec
        self.watchdog = watchdog
        self.release = [*release, "--thaw-only"]
        self.cap_s = cap_s
        self.run_id = run_id
        self.frozen_at = 0.0
        self.freeze_ms = 0.0
        self.frozen_count = 0
        self.failed = False
        self.overran = False
        self.application_error = ""
        self._hold_state: dict[str, Any] = {}
        self._token: int | None = None

    def hold_report(self) -> dict[str, Any]:
        """The applications' hold as the guest reported it after the thaw."""
        report = protocol.parse_hold(self._hold_state) or {}
        if report:
            report["in_guest"] = True
        return report

    def freeze(self) -> None:
        assert self.spec.qga is not None
        try:
            with GuestAgent(self.spec.qga, AGENT_TIMEOUT_S) as agent:
                if agent.execute("guest-fsfreeze-status") == "frozen":
                    raise QmpError("the guest's file systems are already frozen by someone else")
        except QmpError:
            self.failed = True
            raise
        self._token = self.watchdog.arm_command(self.release, {}, self.cap_s)
        self.frozen_at = time.monotonic()
        try:
            with GuestAgent(self.spec.qga, AGENT_TIMEOUT_S) as agent:
                if self.run_id is not None:
                    request = {"run": self.run_id, "cap_s": self.cap_s}
                    agent.write_file(_guest_file(protocol.REQUEST), json.dumps(request).encode())
                self.frozen_count = int(
                    agent.execute("guest-fsfreeze-freeze", timeout_s=self.cap_s)
                )
        except QmpError:
            self.failed = True
            self.thaw()
            raise
        hooks.reached(hooks.Point.VM_FROZEN)

    def thaw(self) -> None:
        assert self.spec.qga is not None
        try:
            with GuestAgent(self.spec.qga, AGENT_TIMEOUT_S) as agent:
                if agent.execute("guest-fsfreeze-status") == "frozen":
                    agent.execute("guest-fsfreeze-thaw", timeout_s=self.cap_s)
                if self.run_id is not None:
                    # The agent refuses file commands while frozen; by now the thaw hook has
                    # released the holder, which reported first.
                    self._hold_state = _guest_json(agent, protocol.STATE) or {}
                    self.application_error = _hold_problem(self._hold_state, self.run_id)
        finally:
            self.freeze_ms = (time.monotonic() - self.frozen_at) * 1000
            if self._token is not None and not self.watchdog.disarm(self._token):
                self.overran = True
            self._token = None


def _guest_file(name: str) -> str:
    return f"{protocol.STATE_DIR}/{name}"


def _hold_problem(state: dict[str, Any], run_id: str) -> str:
    """Why the guest's applications were not held across the transaction ('' when they were).
    The hook returns to the agent, which then freezes, only once they are held or failed."""
    if state.get("run") != run_id:
        return (
            "the guest hook did not run on the freeze (qemu-ga needs its fsfreeze hook "
            "enabled, -F, and freezeframe guest-hook install in the guest)"
        )
    if state.get("phase") == "failed" or state.get("error"):
        return f"the guest hook could not hold the applications: {state.get('error', '')}"
    if state.get("phase") != "released" or not state.get("in_time"):
        return "the guest's applications were released at their cap before the disks were taken"
    if protocol.parse_hold(state) is None:
        return "the guest hook's report of the hold is malformed"
    return ""


def _view(qmp: Qmp, disks: list[Disk], name: str, repo: Repository) -> PointInTime:
    run_id = f"{time.time_ns():x}"[-8:]
    return PointInTime(qmp, disks, name, run_id, incremental.bitmap_prefix(repo))


def _volume_record(
    disk: Disk,
    view: PointInTime,
    freeze: _GuestFreeze,
    achieved: Level,
    link: incremental.Link,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "drive": disk.drive,
        "node": disk.node,
        "format": disk.format,
        "size": disk.size,
        "provider": PROVIDER,
        "snapshot_time": datetime.fromtimestamp(view.instant_ns / 1e9, UTC).strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ"
        ),
        "snapshot_ms": round(view.transaction_ms, 3),
    }
    if achieved.at_rest:
        record.update(freeze_ms=round(freeze.freeze_ms, 3), guest_filesystems=freeze.frozen_count)
    record["bitmap"] = view.bitmap  # records the writes after this instant, for the next backup
    if link.parent is not None:
        record["incremental"] = {"parent": link.parent, "bitmap": link.bitmap}
    else:
        record["full_read"] = link.why_full
    return record


def _save_tree(
    repo: Repository,
    name: str,
    disks: list[Disk],
    stored: dict[str, StoredDisk],
    definition: dict[str, Any],
) -> bytes:
    now = time.time_ns()
    text = json.dumps(definition, indent=2, sort_keys=True).encode()
    text_id, _ = repo.save_blob(BlobType.DATA, text)
    files = [
        Node(
            name=b"definition.json",
            type="file",
            mode=0o644,
            uid=0,
            gid=0,
            mtime_ns=now,
            size=len(text),
            content=[text_id],
        )
    ]
    for disk in disks:
        image = stored[disk.drive]
        files.append(
            Node(
                name=f"{disk.drive}.raw".encode(),
                type="file",
                mode=0o600,
                uid=0,
                gid=0,
                mtime_ns=now,
                size=image.size,
                content=image.content,
                sparse_map=image.sparse_map,
            )
        )
    files.sort(key=lambda n: n.name)
    vm_dir = _dir(repo, name.encode(), files, now)
    vms = _dir(repo, b"vm", [vm_dir], now)
    root_id, _ = repo.save_blob(BlobType.TREE, encode_tree([vms]))
    repo.flush()
    return root_id


def _dir(repo: Repository, name: bytes, nodes: list[Node], mtime_ns: int) -> Node:
    subtree, _ = repo.save_blob(BlobType.TREE, encode_tree(nodes))
    return Node(name=name, type="dir", mode=0o700, uid=0, gid=0, mtime_ns=mtime_ns, subtree=subtree)


def _summary(stored: dict[str, StoredDisk], seconds: float) -> dict[str, Any]:
    read = sum(s.bytes_read for s in stored.values())
    return {
        "disks": len(stored),
        "bytes_total": sum(s.size for s in stored.values()),
        "bytes_read": read,
        "bytes_added": sum(s.bytes_added for s in stored.values()),
        "duration_seconds": round(seconds, 3),
        "read_mb_per_s": round(read / seconds / 1e6, 1) if seconds > 0 else 0.0,
    }
