"""What lvm2 reports about a logical volume, and the snapshot plan that follows from it: thin or
thick, how big a thick snapshot's copy-on-write store must be, and when to refuse before
anything is suspended. Pure functions over ``lvs``/``vgs --reportformat json`` output, so the
decisions are tested without device-mapper; ``lvm.py`` runs the tools.

Numbers are asked for with ``--units b --nosuffix`` (sizes in bytes), percentages come as
strings such as ``"12.50"`` or ``""`` when they do not apply.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from freezeframe.errors import FreezeframeError, UsageError

LV_FIELDS = (
    "lv_name,vg_name,lv_attr,pool_lv,data_percent,metadata_percent,lv_size,origin,snap_percent"
)
VG_FIELDS = "vg_name,vg_free,vg_extent_size"
# A thin pool this full is refused: a snapshot's new blocks could fill it, and a full pool
# stops every thin volume in it, the origin's writers too.
POOL_LIMIT_PERCENT = 90.0
# A thick snapshot's CoW store, as a fraction of the origin, unless told otherwise.
DEFAULT_SNAPSHOT_FRACTION = 0.20
LVM_UUID_PREFIX = "LVM-"
# ff-<run id>-<origin LV>; a run id is base.new_run_id()'s.
SNAPSHOT_NAME = re.compile(r"^ff-(\d{8}T\d{6}-\d+-[0-9a-f]{6})-(.+)$")
SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
SIZE_TEXT = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?$", re.IGNORECASE)


@dataclass(frozen=True)
class SnapshotSize:
    """How big a thick snapshot's copy-on-write store is: ``size`` bytes, or when that is
    None, ``fraction`` of its origin's size."""

    size: int | None = None
    fraction: float = DEFAULT_SNAPSHOT_FRACTION

    def for_origin(self, origin_size: int) -> float:
        return self.size if self.size is not None else origin_size * self.fraction

    def __str__(self) -> str:
        return f"{self.size}b" if self.size is not None else f"{self.fraction * 100:g}%"


DEFAULT_SNAPSHOT_SIZE = SnapshotSize()


def parse_snapshot_size(text: str) -> SnapshotSize:
    """``--snapshot-size``: a percentage of the origin (``25%``) or a size (``512M``, ``2GiB``,
    ``1073741824``; binary units). One UsageError line for anything else."""
    value = text.strip()
    if value.endswith("%"):
        try:
            percent = float(value[:-1])
        except ValueError:
            percent = -1.0
        if not 0 < percent <= 100:
            raise UsageError(
                f"snapshot size {text!r}: a percentage must be above 0 and at most 100"
            )
        return SnapshotSize(fraction=percent / 100)
    match = SIZE_TEXT.match(value)
    if match is None:
        raise UsageError(
            f"snapshot size {text!r} is neither a size (512M, 2G) nor a percentage (25%)"
        )
    size = int(float(match.group(1)) * SIZE_UNITS[match.group(2).lower()])
    if size <= 0:
        raise UsageError(f"snapshot size {text!r} must be more than 0")
    return SnapshotSize(size=size)


@dataclass(frozen=True)
class LogicalVolume:
    name: str
    vg: str
    attr: str
    size: int  # bytes
    pool: str  # the thin pool of a thin volume, else ""
    origin: str  # the origin of a snapshot, else ""
    data_percent: float | None
    metadata_percent: float | None
    snap_percent: float | None

    @property
    def full_name(self) -> str:
        return f"{self.vg}/{self.name}"

    @property
    def kind(self) -> str:
        """``thin``, ``thick`` (a linear/striped LV, maybe already an origin), or what lvm
        calls it (``snapshot``, ``thin-pool``, ...), from the first lv_attr character."""
        return _KINDS.get(self.attr[:1], "unknown")

    @property
    def state(self) -> str:
        """lv_attr's fifth character: ``a`` active, ``I``/``S`` an invalid snapshot..."""
        return self.attr[4:5]


_KINDS = {
    "V": "thin",
    "-": "thick",
    "o": "thick",  # an origin of (other) thick snapshots
    "O": "thick",  # an origin being merged into
    "s": "snapshot",
    "S": "snapshot",
    "t": "thin-pool",
    "m": "mirror",
    "M": "mirror",
    "r": "raid",
    "R": "raid",
    "C": "cache",
    "v": "virtual",
    "e": "pool-metadata-or-raid-image",
}


@dataclass(frozen=True)
class VolumeGroup:
    name: str
    free: int  # bytes
    extent_size: int  # bytes


@dataclass(frozen=True)
class SnapshotPlan:
    """What ``lvcreate`` will be asked for: ``size`` is None for a thin snapshot."""

    origin: LogicalVolume
    name: str
    size: int | None

    @property
    def thin(self) -> bool:
        return self.size is None

    def lvcreate_argv(self) -> list[str]:
        if self.size is None:
            # Thin snapshots are made with the activation-skip flag set: clear it, so the
            # snapshot is active at once and `lvchange -ay` works on it later too.
            return ["lvcreate", "--snapshot", "--setactivationskip", "n", "--name", self.name,
                    self.origin.full_name]  # fmt: skip
        return ["lvcreate", "--snapshot", "--size", f"{self.size}b", "--name", self.name,
                self.origin.full_name]  # fmt: skip


def parse_lvs(text: str) -> list[LogicalVolume]:
    """The LVs of ``lvs --reportformat json --units b --nosuffix -o LV_FIELDS``."""
    return [_logical_volume(row) for row in _rows(text, "lv")]


def parse_vgs(text: str) -> list[VolumeGroup]:
    """The VGs of ``vgs --reportformat json --units b --nosuffix -o VG_FIELDS``."""
    return [
        VolumeGroup(row["vg_name"], _bytes(row["vg_free"]), _bytes(row["vg_extent_size"]))
        for row in _rows(text, "vg")
    ]


def split_dm_name(dm_name: str) -> tuple[str, str] | None:
    """VG and LV from a device-mapper name (``vg--a-lv`` is VG ``vg-a``, LV ``lv``): lvm
    doubles the dashes inside each name and joins them with one. None for layer devices
    (``vg-lv-real``, ``vg-pool_tdata``...) or names that are not lvm's."""
    index = 0
    while True:
        index = dm_name.find("-", index)
        if index < 0:
            return None
        if dm_name[index + 1 : index + 2] == "-":
            index += 2
            continue
        vg, lv = dm_name[:index], dm_name[index + 1 :]
        if not vg or not lv or "-" in lv.replace("--", ""):
            return None  # a layer suffix (-real, -cow, -tpool) or not lvm's scheme
        return vg.replace("--", "-"), lv.replace("--", "-")


def snapshot_name(run_id: str, origin: LogicalVolume) -> str:
    """``ff-<run id>-<origin>``: the run is named so a dead run's snapshot is recognised."""
    name = f"ff-{run_id}-{origin.name}"
    if len(name) > 127 or SNAPSHOT_NAME.match(name) is None:
        raise FreezeframeError(f"cannot name a snapshot of {origin.full_name} for run {run_id}")
    return name


def run_of_snapshot(name: str) -> str | None:
    """The run id in a snapshot name freezeframe gave, else None."""
    match = SNAPSHOT_NAME.match(name)
    return match.group(1) if match else None


def refusal(lv: LogicalVolume, pool: LogicalVolume | None) -> str | None:
    """Why ``lv`` cannot be snapshotted at all (its kind, a too-full thin pool), or None."""
    if lv.kind not in ("thin", "thick"):
        return f"{lv.full_name} is a {lv.kind} LV, not a thin or linear one"
    if lv.state != "a":
        return f"{lv.full_name} is not active (lv_attr {lv.attr})"
    if lv.kind == "thin":
        if pool is None:
            return f"the thin pool {lv.vg}/{lv.pool} of {lv.full_name} is not reported"
        for what, value in (("data", pool.data_percent), ("metadata", pool.metadata_percent)):
            if value is not None and value > POOL_LIMIT_PERCENT:
                return (
                    f"thin pool {pool.full_name} is {value:.1f}% full ({what}); above "
                    f"{POOL_LIMIT_PERCENT:.0f}% a snapshot could fill it and stop its volumes"
                )
    return None


def plan_snapshot(
    lv: LogicalVolume,
    pool: LogicalVolume | None,
    vg: VolumeGroup | None,
    run_id: str,
    snapshot_size: SnapshotSize = DEFAULT_SNAPSHOT_SIZE,
) -> SnapshotPlan:
    """The snapshot to take of ``lv``, or one FreezeframeError saying why not. A thick
    snapshot's store is ``snapshot_size`` (default DEFAULT_SNAPSHOT_FRACTION of the origin),
    rounded up to whole extents, and must fit in the VG's free space."""
    reason = refusal(lv, pool)
    if reason is not None:
        raise FreezeframeError(f"cannot snapshot {lv.full_name}: {reason}")
    name = snapshot_name(run_id, lv)
    if lv.kind == "thin":
        return SnapshotPlan(lv, name, None)
    if vg is None:
        raise FreezeframeError(f"cannot snapshot {lv.full_name}: volume group {lv.vg} not reported")
    wanted = snapshot_size.for_origin(lv.size)
    if wanted <= 0:
        raise FreezeframeError(f"cannot snapshot {lv.full_name}: the snapshot size must be > 0")
    extents = max(1, math.ceil(wanted / vg.extent_size))
    size = extents * vg.extent_size
    if size > vg.free:
        raise FreezeframeError(
            f"cannot snapshot {lv.full_name}: its snapshot needs {_mib(size)} MiB and volume "
            f"group {vg.name} has {_mib(vg.free)} MiB free (give --snapshot-size or free space)"
        )
    return SnapshotPlan(lv, name, size)


def damage(snapshot: LogicalVolume) -> str | None:
    """Why a snapshot's content cannot be trusted (invalid, its CoW store full), or None. A
    thick snapshot whose store fills becomes invalid: what was read from it may be partial."""
    if snapshot.state in ("I", "S"):
        return f"snapshot {snapshot.full_name} is invalid (its copy-on-write store overflowed)"
    used = snapshot.snap_percent if snapshot.snap_percent is not None else snapshot.data_percent
    if used is not None and used >= 100.0:
        return f"snapshot {snapshot.full_name} is {used:.1f}% full: its content is not whole"
    if snapshot.state != "a":
        return f"snapshot {snapshot.full_name} is not active (lv_attr {snapshot.attr})"
    return None


def _rows(text: str, key: str) -> list[dict[str, Any]]:
    try:
        document = json.loads(text)
        rows = [row for report in document["report"] for row in report.get(key, [])]
    except (ValueError, KeyError, TypeError) as exc:
        raise FreezeframeError(f"cannot read lvm's report: {exc}") from exc
    if not all(isinstance(row, dict) for row in rows):
        raise FreezeframeError("cannot read lvm's report: a row is not an object")
    return rows


def _logical_volume(row: dict[str, Any]) -> LogicalVolume:
    try:
        return LogicalVolume(
            name=row["lv_name"],
            vg=row["vg_name"],
            attr=row["lv_attr"],
            size=_bytes(row["lv_size"]),
            pool=row.get("pool_lv", ""),
            origin=row.get("origin", ""),
            data_percent=_percent(row.get("data_percent", "")),
            metadata_percent=_percent(row.get("metadata_percent", "")),
            snap_percent=_percent(row.get("snap_percent", "")),
        )
    except KeyError as exc:
        raise FreezeframeError(f"cannot read lvm's report: no {exc} in an LV row") from exc


def _bytes(value: str) -> int:
    try:
        return int(value.strip().rstrip("Bb"))
    except (AttributeError, ValueError) as exc:
        raise FreezeframeError(f"cannot read lvm's report: size {value!r}") from exc


def _percent(value: str) -> float | None:
    value = (value or "").strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError as exc:
        raise FreezeframeError(f"cannot read lvm's report: percentage {value!r}") from exc


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f}"
