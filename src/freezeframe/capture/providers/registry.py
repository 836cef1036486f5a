"""Which snapshot provider serves a volume, or why none does: every provider is asked, in
order, whether it can snapshot the volume (``unsupported_reason``), and the first that can
serves it. A provider claims volumes by what it checks, not by a table here: the LVM provider
claims ext4 and XFS on an LVM logical volume, the loop-clone provider ext4 and XFS on a loop
device, so their order does not matter between them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from freezeframe.capture.providers.base import SnapshotProvider
from freezeframe.capture.providers.btrfs import BtrfsProvider
from freezeframe.capture.providers.loopclone import LoopCloneProvider
from freezeframe.capture.providers.lvm import LvmProvider
from freezeframe.capture.providers.lvm_report import DEFAULT_SNAPSHOT_SIZE, SnapshotSize
from freezeframe.capture.volumes import Volume


@dataclass(frozen=True)
class SnapshotOptions:
    """What a user may tell the providers (``backup --snapshot-size``)."""

    lvm_snapshot_size: SnapshotSize = DEFAULT_SNAPSHOT_SIZE


def providers(options: SnapshotOptions) -> tuple[SnapshotProvider, ...]:
    """Every provider, in the order they are asked, configured by ``options``."""
    return (BtrfsProvider(), LvmProvider(options.lvm_snapshot_size), LoopCloneProvider())


DEFAULT_OPTIONS = SnapshotOptions()
PROVIDERS: tuple[SnapshotProvider, ...] = providers(DEFAULT_OPTIONS)
# By name, to remove a view or find its scratch paths (which no option changes).
BY_NAME: dict[str, SnapshotProvider] = {provider.name: provider for provider in PROVIDERS}
ELSEWHERE = (
    "freezeframe snapshots btrfs subvolumes, ext4 and XFS on LVM logical volumes, and ext4 and "
    "XFS on a loop device whose image lies on btrfs or XFS (ZFS is not supported yet)"
)


Answer = tuple[SnapshotProvider, str | None]  # a provider, and None or why it cannot


def provider_for(
    volume: Volume, options: SnapshotOptions = DEFAULT_OPTIONS
) -> tuple[SnapshotProvider | None, str | None]:
    """The provider for ``volume`` and None, or None and the reason no provider can serve it
    (the providers after the first that can are not asked)."""
    return choose(volume, _ask(volume, options))


def answers(volume: Volume, options: SnapshotOptions = DEFAULT_OPTIONS) -> list[Answer]:
    """Every provider's answer for ``volume``, in order (for `doctor`)."""
    return list(_ask(volume, options))


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


def _ask(volume: Volume, options: SnapshotOptions) -> Iterator[Answer]:
    for provider in providers(options) if options != DEFAULT_OPTIONS else PROVIDERS:
        yield provider, provider.unsupported_reason(volume)
