"""The LVM provider's decisions from lvm's reports: which LVs it takes, thin or thick, how big a
thick snapshot's store is, what it refuses before suspending anything, and how it recognises an
overflowed snapshot and a dead run's snapshots. The fixtures are lvm2 2.03's own output
(``lvs``/``vgs --reportformat json --units b --nosuffix``), recorded in the VM lab's guest: a VG
``lab`` with a thick LV, a thin pool and a thin LV, then with a snapshot of each, then with the
thick one's store overflowed by writes to its origin."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from freezeframe.capture.providers.lvm_report import (
    LogicalVolume,
    SnapshotSize,
    damage,
    parse_lvs,
    parse_snapshot_size,
    parse_vgs,
    plan_snapshot,
    refusal,
    run_of_snapshot,
    split_dm_name,
)
from freezeframe.errors import FreezeframeError, UsageError

FIXTURES = Path(__file__).parent / "lvm_fixtures"
RUN = "20261207T160300-4242-a1b2c3"
MIB = 1 << 20


def _lvs(name: str) -> dict[str, LogicalVolume]:
    return {lv.name: lv for lv in parse_lvs((FIXTURES / name).read_text())}


def test_recorded_report_is_parsed_thin_and_thick() -> None:
    lvs = _lvs("lvs-lab.json")
    assert lvs["thick"].kind == "thick" and lvs["thick"].size == 128 * MIB
    assert lvs["thin"].kind == "thin" and lvs["thin"].pool == "pool"
    assert lvs["pool"].kind == "thin-pool"
    assert lvs["pool"].data_percent == 25.17 and lvs["pool"].metadata_percent == 11.43
    assert lvs["thick"].data_percent is None
    (vg,) = parse_vgs((FIXTURES / "vgs-lab.json").read_text())
    assert (vg.name, vg.free, vg.extent_size) == ("lab", 390070272, 4 * MIB)


def test_an_origin_of_a_snapshot_is_still_thick_and_snapshots_are_refused() -> None:
    lvs = _lvs("lvs-lab-snapshots.json")
    assert lvs["thick"].attr.startswith("o") and lvs["thick"].kind == "thick"
    assert lvs["s1"].kind == "snapshot" and lvs["s1"].origin == "thick"
    assert refusal(lvs["s1"], None) == "lab/s1 is a snapshot LV, not a thin or linear one"
    assert refusal(lvs["pool"], None) is not None
    assert lvs["s2"].kind == "thin" and lvs["s2"].origin == "thin"  # a thin snapshot is thin


def test_thin_plan_has_no_size_and_activates_the_snapshot() -> None:
    lvs = _lvs("lvs-lab.json")
    plan = plan_snapshot(lvs["thin"], lvs["pool"], None, RUN)
    assert plan.thin and plan.name == f"ff-{RUN}-thin"
    assert plan.lvcreate_argv() == [
        "lvcreate", "--snapshot", "--setactivationskip", "n", "--name", f"ff-{RUN}-thin",
        "lab/thin",
    ]  # fmt: skip


@pytest.mark.parametrize("field", ["data_percent", "metadata_percent"])
def test_thin_pool_above_90_percent_is_refused_in_one_line(field: str) -> None:
    lvs = _lvs("lvs-lab.json")
    full = replace(lvs["pool"], **{field: 90.5})
    with pytest.raises(FreezeframeError) as caught:
        plan_snapshot(lvs["thin"], full, None, RUN)
    message = str(caught.value)
    assert "\n" not in message
    what = field.removesuffix("_percent")
    assert message == (
        f"cannot snapshot lab/thin: thin pool lab/pool is 90.5% full ({what}); above 90% a "
        "snapshot could fill it and stop its volumes"
    )
    assert plan_snapshot(lvs["thin"], replace(full, **{field: 90.0}), None, RUN).thin


def test_thick_plan_defaults_to_a_fifth_of_the_origin_in_whole_extents() -> None:
    lvs = _lvs("lvs-lab.json")
    (vg,) = parse_vgs((FIXTURES / "vgs-lab.json").read_text())
    plan = plan_snapshot(lvs["thick"], None, vg, RUN)
    # 20 % of 128 MiB is 25.6 MiB: rounded up to 7 extents of 4 MiB.
    assert plan.size == 28 * MIB
    assert plan.lvcreate_argv()[:4] == ["lvcreate", "--snapshot", "--size", f"{28 * MIB}b"]
    assert plan_snapshot(lvs["thick"], None, vg, RUN, snapshot_size=SnapshotSize(1)).size == 4 * MIB


def test_thick_snapshot_larger_than_the_free_space_is_refused_before_anything() -> None:
    lvs = _lvs("lvs-lab.json")
    (vg,) = parse_vgs((FIXTURES / "vgs-lab.json").read_text())
    with pytest.raises(FreezeframeError) as caught:
        plan_snapshot(lvs["thick"], None, vg, RUN, snapshot_size=SnapshotSize(vg.free + 1))
    assert str(caught.value) == (
        "cannot snapshot lab/thick: its snapshot needs 376.0 MiB and volume group lab has "
        "372.0 MiB free (give --snapshot-size or free space)"
    )
    whole = plan_snapshot(lvs["thick"], None, vg, RUN, snapshot_size=SnapshotSize(vg.free))
    assert whole.size == vg.free


def test_inactive_lv_is_refused() -> None:
    thick = _lvs("lvs-lab.json")["thick"]
    assert refusal(replace(thick, attr="-wi-------"), None) == (
        "lab/thick is not active (lv_attr -wi-------)"
    )


def test_overflowed_thick_snapshot_is_damaged_and_a_fresh_one_is_not() -> None:
    fresh = _lvs("lvs-lab-snapshots.json")
    assert damage(fresh["s1"]) is None and damage(fresh["s2"]) is None
    overflowed = _lvs("lvs-lab-s1-overflowed.json")["s1"]
    assert overflowed.state == "I"
    assert damage(overflowed) == ("snapshot lab/s1 is invalid (its copy-on-write store overflowed)")
    # A full store that lvm does not (yet) mark invalid is not trusted either.
    assert damage(replace(fresh["s1"], snap_percent=100.0)) is not None


def test_dm_names_split_as_lvm_escapes_them() -> None:
    assert split_dm_name("lab-thick") == ("lab", "thick")
    assert split_dm_name("my--vg-root--lv") == ("my-vg", "root-lv")
    assert split_dm_name(f"lab-ff--{RUN.replace('-', '--')}--thin") == ("lab", f"ff-{RUN}-thin")
    assert split_dm_name("lab-thick-real") is None  # a snapshot origin's layer
    assert split_dm_name("lab-pool-tpool") is None
    assert split_dm_name("sda1") is None


def test_snapshot_names_carry_the_run() -> None:
    assert run_of_snapshot(f"ff-{RUN}-root-lv") == RUN
    assert run_of_snapshot("ff-notarun-root") is None
    assert run_of_snapshot("root") is None


def test_unreadable_report_is_one_error() -> None:
    with pytest.raises(FreezeframeError, match="cannot read lvm's report"):
        parse_lvs("  WARNING: something\n")
    broken = json.dumps({"report": [{"lv": [{"lv_name": "x"}]}]})
    with pytest.raises(FreezeframeError, match="no 'vg_name' in an LV row"):
        parse_lvs(broken)


@pytest.mark.parametrize(
    ("text", "size"),
    [("25%", SnapshotSize(fraction=0.25)), ("512M", SnapshotSize(512 * MIB)),
     ("2GiB", SnapshotSize(2 << 30)), ("1.5g", SnapshotSize(3 << 29)), ("4096", SnapshotSize(4096)),
     ("100%", SnapshotSize(fraction=1.0))],
)  # fmt: skip
def test_snapshot_size_is_a_size_or_a_share_of_the_origin(text: str, size: SnapshotSize) -> None:
    assert parse_snapshot_size(text) == size


@pytest.mark.parametrize("text", ["", "0", "0%", "150%", "-3M", "12X", "big", "%"])
def test_a_bad_snapshot_size_is_one_usage_line(text: str) -> None:
    with pytest.raises(UsageError, match="snapshot size") as caught:
        parse_snapshot_size(text)
    assert "\n" not in str(caught.value)


def test_a_share_of_the_origin_sizes_the_store() -> None:
    lvs, vg = _lvs("lvs-lab.json"), parse_vgs((FIXTURES / "vgs-lab.json").read_text())[0]
    half = plan_snapshot(lvs["thick"], None, vg, RUN, SnapshotSize(fraction=0.5))
    assert half.size == 64 * MIB
