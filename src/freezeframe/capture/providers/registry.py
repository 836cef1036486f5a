"""Which snapshot provider serves a volume, or why none does: every provider is asked, in
order, whether it can snapshot the volume (``unsupported_reason``), and the first that can
serves it. A provider claims volumes by what it checks, not by a table here: an LVM provider
put first would claim a device-mapper device whatever its file system."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from freezeframe.capture.providers.base import SnapshotProvider
from freezeframe.capture.providers.btrfs import BtrfsProvider
from freezeframe.capture.providers.loopclone import LoopCloneProvider
from freezeframe.capture.volumes import Volume

BTRFS = BtrfsProvider()
LOOP_CLONE = LoopCloneProvider()
# Asked in this order; the first that supports a volume snapshots it.
PROVIDERS: tuple[SnapshotProvider, ...] = (BTRFS, LOOP_CLONE)
BY_NAME: dict[str, SnapshotProvider] = {provider.name: provider for provider in PROVIDERS}
ELSEWHERE = (
    "freezeframe snapshots btrfs, and ext4 or xfs on a loop device whose image lies on btrfs or "
    "xfs; LVM and ZFS need device-mapper or the ZFS module, which this kernel lacks"
)


Answer = tuple[SnapshotProvider, str | None]  # a provider, and None or why it cannot


def provider_for(volume: Volume) -> tuple[SnapshotProvider | None, str | None]:
    """The provider for ``volume`` and None, or None and the reason no provider can serve it
    (the providers after the first that can are not asked)."""
    return choose(volume, _ask(volume))


def answers(volume: Volume) -> list[Answer]:
    """Every provider's answer for ``volume``, in order (for `doctor`)."""
    return list(_ask(volume))


def choose(volume: Volume, asked: Iterable[Answer]) -> tuple[SnapshotProvider | None, str | None]:
    """The first provider that can snapshot ``volume``, or None and each provider's reason."""
    refused = []
    for provider, reason in asked:
        if reason is None:
            return provider, None
        refused.append(f"{provider.name}: {reason}")
    return (
        None,
        f"no snapshot provider for {volume.fs_type} here: {'; '.join(refused)} ({ELSEWHERE})",
    )


def _ask(volume: Volume) -> Iterator[Answer]:
    for provider in PROVIDERS:
        yield provider, provider.unsupported_reason(volume)
