"""The watchdog's undo for an LVM snapshot (lvm.RESUME_SCRIPT): after a run dies while lvcreate
holds its origin suspended, every suspended device of that VG goes back to the table it ran
with (a table lvcreate loaded but did not switch to is cleared first) and is resumed, layers
first, under the VG's lock; no other VG's device is touched. Run against a sysfs-shaped tree
and a recording dmsetup."""

from __future__ import annotations

import fcntl
import os
import subprocess
import threading
import time
from pathlib import Path

from freezeframe.capture.providers.lvm import resume_argv

# dm-N: (device-mapper name, suspended?)
DEVICES = {
    "dm-0": ("lab-pool_tmeta", False),
    "dm-1": ("lab-pool-tpool", True),
    "dm-2": ("lab-thin--xfs", True),
    "dm-3": ("lab-thick--ext4", True),
    "dm-4": ("lab-thick--ext4-real", True),
    "dm-5": ("lab-thick--xfs", False),
    "dm-6": ("other-lv", True),
    "dm-7": ("lab2-lv", True),
    "dm-8": ("lab--x-lv", True),  # VG lab-x
    "dm-9": ("lab-ff--1--thick--ext4-cow", True),  # made by lvcreate, no live table yet
}
NO_LIVE_TABLE = {"lab-ff--1--thick--ext4-cow"}


def _resumed(tmp_path: Path, vg: str) -> list[str]:
    sys_block = tmp_path / "block"
    for device, (name, suspended) in DEVICES.items():
        dm = sys_block / device / "dm"
        dm.mkdir(parents=True)
        (dm / "name").write_text(name + "\n")
        (dm / "suspended").write_text("1\n" if suspended else "0\n")
    (sys_block / "loop0").mkdir()  # not device-mapper's
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "dmsetup.log"
    fake = bin_dir / "dmsetup"
    no_live = " ".join(NO_LIVE_TABLE)
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = info ]; then\n'
        f'  for d in {no_live}; do [ "$6" = "$d" ] && {{ echo " -I-w"; exit 0; }}; done\n'
        '  echo " L--w"; exit 0\n'
        "fi\n"
        f'echo "$*" >>{log}\n'
    )
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    argv = resume_argv("ff-20260101T000000-1-000000-thin--xfs", vg, str(sys_block), str(tmp_path))
    subprocess.run(argv, env=env, check=True, timeout=30)
    calls = log.read_text().splitlines() if log.exists() else []
    # Every device is cleared, then resumed, one after the other.
    assert calls[0::2] == [c.replace("resume", "clear") for c in calls[1::2]], calls
    return calls[1::2]


def test_every_suspended_device_of_the_vg_is_resumed_layers_first(tmp_path: Path) -> None:
    """...but one lvcreate was still making (no live table): lvremove removes it."""
    calls = _resumed(tmp_path, "lab")
    assert sorted(calls[:2]) == ["resume lab-pool-tpool", "resume lab-thick--ext4-real"]
    assert sorted(calls[2:]) == ["resume lab-thick--ext4", "resume lab-thin--xfs"]


def test_the_repair_waits_for_the_vgs_lock(tmp_path: Path) -> None:
    """While another lvm command holds the VG's lock, nothing is resumed under it."""
    lock = tmp_path / "V_lab"
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        repair = threading.Thread(target=_resumed, args=(tmp_path, "lab"))
        repair.start()
        time.sleep(1.0)
        assert not (tmp_path / "dmsetup.log").exists()  # still waiting for the lock
    repair.join(timeout=30)
    assert len((tmp_path / "dmsetup.log").read_text().splitlines()) == 8


def test_only_the_vgs_own_devices_are_resumed(tmp_path: Path) -> None:
    assert _resumed(tmp_path / "a", "lab-x") == ["resume lab--x-lv"]
    assert _resumed(tmp_path / "b", "lab2") == ["resume lab2-lv"]
    assert _resumed(tmp_path / "c", "lab3") == []
