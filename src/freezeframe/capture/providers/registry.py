"""Which snapshot provider serves a volume, or why none does."""

from __future__ import annotations

from freezeframe.capture.providers.base import SnapshotProvider
from freezeframe.capture.providers.btrfs import BtrfsProvider
from freezeframe.capture.providers.loopclone import FREEZABLE, LoopCloneProvider
from freezeframe.capture.volumes import Volume

BTRFS = BtrfsProvider()
LOOP_CLONE = LoopCloneProvider()
BY_NAME: dict[str, SnapshotProvider] = {BTRFS.name: BTRFS, LOOP_CLONE.name: LOOP_CLONE}
ELSEWHERE = (
    "freezeframe snapshots btrfs, and ext4 or xfs on a loop device whose image lies on btrfs or "
    "xfs; LVM and ZFS need device-mapper or the ZFS module, which this kernel lacks"
)


def provider_for(volume: Volume) -> tuple[SnapshotProvider | None, str | None]:
    """The provider for ``volume`` and None, or None and the reason no provider can serve it."""
    if volume.fs_type == "btrfs":
        reason = BTRFS.unsupported_reason(volume)
        return (None, reason) if reason else (BTRFS, None)
    if volume.fs_type in FREEZABLE:
        reason = LOOP_CLONE.unsupported_reason(volume)
        if reason is None:
            return LOOP_CLONE, None
        return None, f"no snapshot provider for {volume.fs_type} here: {reason} ({ELSEWHERE})"
    return None, f"no snapshot provider for {volume.fs_type} ({ELSEWHERE})"
