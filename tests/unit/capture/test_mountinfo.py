"""Reading the mount table right decides which provider snapshots a path: a wrong mount means
snapshotting the wrong file system."""

from __future__ import annotations

import pytest

from freezeframe.capture.volumes import mount_of, parse_mountinfo
from freezeframe.errors import NotFound

TABLE = """\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 22 0:40 / /srv rw,relatime - btrfs /dev/loop0 rw,space_cache=v2,subvolid=5,subvol=/
31 30 0:41 /data /srv/with\\040space rw,relatime - btrfs /dev/loop0 rw,subvolid=256,subvol=/data
32 22 0:50 / /mnt ro,relatime - xfs /dev/loop1 ro
33 22 0:51 / /mnt rw,relatime - tmpfs tmpfs rw
"""


def test_fields_and_escapes_are_parsed() -> None:
    mounts = parse_mountinfo(TABLE)
    assert [m.mount_point for m in mounts] == ["/", "/srv", "/srv/with space", "/mnt", "/mnt"]
    data = mounts[2]
    assert (data.fs_type, data.source, data.root, data.device) == (
        "btrfs",
        "/dev/loop0",
        "/data",
        "0:41",
    )
    assert mounts[3].read_only and not mounts[4].read_only


@pytest.mark.parametrize(
    ("path", "point", "fs_type"),
    [
        ("/", "/", "ext4"),
        ("/etc/passwd", "/", "ext4"),
        ("/srv", "/srv", "btrfs"),
        ("/srv/x/y", "/srv", "btrfs"),
        ("/srv/with space/f", "/srv/with space", "btrfs"),
        ("/srvx/f", "/", "ext4"),  # a prefix of the name is not a parent
        ("/mnt/f", "/mnt", "tmpfs"),  # the later mount on the same point hides the earlier
    ],
)
def test_the_longest_and_latest_mount_wins(path: str, point: str, fs_type: str) -> None:
    mount = mount_of(path, parse_mountinfo(TABLE))
    assert (mount.mount_point, mount.fs_type) == (point, fs_type)


def test_no_mount_is_an_error() -> None:
    with pytest.raises(NotFound):
        mount_of("/x", parse_mountinfo("30 22 0:40 / /srv rw - btrfs /dev/loop0 rw\n"))
