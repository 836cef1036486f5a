"""Every disk of a running VM at one instant, readable while the VM runs ("image fleecing").

For each disk a temporary qcow2 overlay is added whose backing is the disk itself; one QMP
``transaction`` then starts, for all disks together, a ``blockdev-backup`` with ``sync: none``
from the disk into its overlay: from that instant, before the guest overwrites a cluster, QEMU
copies the old cluster into the overlay. Reading the overlay therefore shows the disk as it was
at the transaction, whatever the guest writes meanwhile. The overlays are exported read-only by
QEMU's NBD server on a unix socket, and the backup reads them there.

Everything is named with the run's prefix, so what a dead run left behind (block jobs, nodes,
the NBD server, overlay files) is found and removed by ``cleanup`` (the watchdog runs it the
moment freezeframe dies, and the next run runs it first).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

from freezeframe.errors import FreezeframeError, QmpError
from freezeframe.vm.machine import Disk
from freezeframe.vm.qmp import Qmp
from freezeframe.vm.timeouts import CANCEL_S, vm_timeout

PREFIX = "ffz"  # node names, job ids and export names of freezeframe's own
BITMAP_PREFIX = "freezeframe-"  # dirty bitmaps: kept across runs, never removed by cleanup
BITMAP_GRANULARITY = 256 * 1024  # the chunk size of the disk store: a dirty bit is a chunk
SCRATCH_ROOT = "/var/tmp/freezeframe-vm"


def scratch_dir(vm_name: str) -> str:
    return os.path.join(SCRATCH_ROOT, vm_name)


@contextlib.contextmanager
def sole_run(vm_name: str) -> Iterator[None]:
    """One backup of a VM at a time on this host: each run first removes what a dead one left
    (``cleanup``), which must never be a live run's view. The lock dies with its process."""
    os.makedirs(SCRATCH_ROOT, mode=0o700, exist_ok=True)
    fd = os.open(f"{scratch_dir(vm_name)}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise FreezeframeError(
                f"VM {vm_name}: another freezeframe backup of it is running on this host"
            ) from exc
        yield
    finally:
        os.close(fd)


class PointInTime:
    """``start`` freezes the view (``before`` and ``after`` run around the transaction: the
    guest's file-system freeze), ``nbd_socket`` and ``export_of`` say where to read, ``stop``
    removes every trace. Use ``with``: leaving it stops."""

    def __init__(
        self,
        qmp: Qmp,
        disks: list[Disk],
        vm_name: str,
        run_id: str,
        bitmap_prefix: str = BITMAP_PREFIX,
    ) -> None:
        self.qmp = qmp
        self.disks = disks
        self.tag = f"{PREFIX}{run_id[:8]}"
        self.dir = os.path.join(scratch_dir(vm_name), self.tag)
        self.nbd_socket = os.path.join(self.dir, "nbd.sock")
        self.transaction_ms = 0.0
        self.instant_ns = 0
        self._nodes: list[str] = []
        self._jobs: list[str] = []
        self._server = False
        self.bitmap = f"{bitmap_prefix}{run_id[:8]}"
        # per drive: the bitmap of the previous backup, read now (None: a full read)
        self.previous: dict[str, str | None] = {}
        self._handed_over = False

    def __enter__(self) -> PointInTime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def node_of(self, disk: Disk) -> str:
        return f"{self.tag}-{disk.drive}"

    def export_of(self, disk: Disk) -> str:
        return disk.drive

    def start(
        self,
        before: Callable[[], None] | None = None,
        after: Callable[[], None] | None = None,
        previous: dict[str, str | None] | None = None,
    ) -> None:
        """``previous``: per drive, the bitmap that recorded writes since the last backup
        (None or absent: read the disk whole). In the same transaction as the view, a new
        bitmap starts recording for the next backup and the previous one stops."""
        self.previous = {d.drive: (previous or {}).get(d.drive) for d in self.disks}
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        for disk in self.disks:
            overlay = os.path.join(self.dir, f"{disk.drive}.qcow2")
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", overlay, str(disk.size)],
                check=True,
                capture_output=True,
            )
            self.qmp.execute(
                "blockdev-add",
                {
                    "driver": "qcow2",
                    "node-name": self.node_of(disk),
                    "file": {"driver": "file", "filename": overlay},
                    "backing": disk.node,
                },
            )
            self._nodes.append(self.node_of(disk))
        actions: list[dict[str, Any]] = [
            {
                "type": "blockdev-backup",
                "data": {
                    "device": disk.node,
                    "target": self.node_of(disk),
                    "sync": "none",
                    "job-id": self.node_of(disk),
                },
            }
            for disk in self.disks
        ]
        for disk in self.disks:
            actions.append(
                {
                    "type": "block-dirty-bitmap-add",
                    "data": {
                        "node": disk.node,
                        "name": self.bitmap,
                        "granularity": BITMAP_GRANULARITY,
                        "persistent": disk.format == "qcow2",
                    },
                }
            )
            old = self.previous[disk.drive]
            if old is not None:
                actions.append(
                    {"type": "block-dirty-bitmap-disable", "data": {"node": disk.node, "name": old}}
                )
        if before is not None:
            before()
        try:
            started = time.monotonic()
            self.instant_ns = time.time_ns()
            self.qmp.execute("transaction", {"actions": actions})
            self.transaction_ms = (time.monotonic() - started) * 1000
            self._jobs = [self.node_of(d) for d in self.disks]
            self._handed_over = True
        finally:
            if after is not None:
                after()
        self.qmp.execute(
            "nbd-server-start", {"addr": {"type": "unix", "data": {"path": self.nbd_socket}}}
        )
        self._server = True
        for disk in self.disks:
            export: dict[str, Any] = {
                "device": self.node_of(disk),
                "name": self.export_of(disk),
                "writable": False,
            }
            if self.previous[disk.drive] is not None:
                export["bitmap"] = self.previous[disk.drive]  # found down the backing chain
            self.qmp.execute("nbd-server-add", export)

    def finish(self, succeeded: bool) -> None:
        """The bitmaps after the read: on success the previous one goes (the new one has
        recorded since this backup's instant); on failure the previous one is merged into the
        new one first, so the next backup still reads everything written since the last
        good one."""
        if not self._handed_over:
            return
        self._handed_over = False
        for disk in self.disks:
            old = self.previous.get(disk.drive)
            if old is None:
                continue
            if not succeeded:
                quietly(
                    self.qmp,
                    "block-dirty-bitmap-merge",
                    {"node": disk.node, "target": self.bitmap, "bitmaps": [old]},
                )
            quietly(self.qmp, "block-dirty-bitmap-remove", {"node": disk.node, "name": old})

    def stop(self) -> None:
        """Remove the exports, the server, the jobs, the nodes and the overlays; each step
        tolerates what an earlier failure left undone."""
        if self._server:
            quietly(self.qmp, "nbd-server-stop")
            self._server = False
        for job in self._jobs:
            _cancel_job(self.qmp, job)
        self._jobs = []
        for node in reversed(self._nodes):
            quietly(self.qmp, "blockdev-del", {"node-name": node})
        self._nodes = []
        shutil.rmtree(self.dir, ignore_errors=True)


def cleanup(qmp: Qmp, vm_name: str) -> list[str]:
    """Remove what runs of freezeframe left in this QEMU and on disk; returns what it found."""
    found = []
    jobs = [j["device"] for j in qmp.execute("query-block-jobs") if j["device"].startswith(PREFIX)]
    nodes = [
        n["node-name"]
        for n in qmp.execute("query-named-block-nodes", {"flat": True})
        if n.get("node-name", "").startswith(PREFIX)
    ]
    if jobs or nodes:
        quietly(qmp, "nbd-server-stop")
    for job in jobs:
        _cancel_job(qmp, job)
        found.append(f"block job {job}")
    for node in sorted(set(nodes)):
        quietly(qmp, "blockdev-del", {"node-name": node})
        found.append(f"node {node}")
    for directory in glob.glob(os.path.join(scratch_dir(vm_name), f"{PREFIX}*")):
        shutil.rmtree(directory, ignore_errors=True)
        found.append(f"overlay directory {directory}")
    return found


def _cancel_job(qmp: Qmp, job: str) -> None:
    try:
        qmp.execute("block-job-cancel", {"device": job, "force": True})
    except QmpError:
        return  # already gone
    try:
        qmp.wait_event("BLOCK_JOB_CANCELLED", vm_timeout(CANCEL_S), {"device": job})
    except QmpError:
        # A sync=none job may also report itself completed on cancel.
        if any(j["device"] == job for j in qmp.execute("query-block-jobs")):
            raise


def quietly(qmp: Qmp, command: str, arguments: dict[str, Any] | None = None) -> None:
    """A command whose failure means there was nothing left to undo."""
    with contextlib.suppress(QmpError):
        qmp.execute(command, arguments)
