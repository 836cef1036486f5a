"""A VM source: ``--vm qmp:PATH[,qga=PATH][,name=NAME]``, and the disks its QEMU reports."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from typing import Any

from freezeframe.errors import UsageError
from freezeframe.vm.qmp import Qmp

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PERIPHERAL = re.compile(r"^/machine/peripheral/([^/]+)")


@dataclass(frozen=True)
class VmSpec:
    qmp: str
    qga: str | None
    name: str

    @classmethod
    def parse(cls, spec: str) -> VmSpec:
        kind, sep, rest = spec.partition(":")
        if kind != "qmp" or not sep or not rest:
            raise UsageError(f"--vm {spec!r}: expected qmp:PATH[,qga=PATH][,name=NAME]")
        path, *options = rest.split(",")
        fields: dict[str, str] = {}
        for option in options:
            key, eq, value = option.partition("=")
            if key not in ("qga", "name") or not eq or not value:
                raise UsageError(f"--vm {spec!r}: unknown option {option!r} (qga=, name=)")
            fields[key] = value
        name = fields.get("name") or os.path.basename(os.path.dirname(os.path.abspath(path)))
        if not NAME.match(name):
            raise UsageError(f"--vm {spec!r}: name {name!r} must be letters, digits, . _ -")
        qga = fields.get("qga")
        return cls(os.path.abspath(path), os.path.abspath(qga) if qga else None, name)


@dataclass(frozen=True)
class Disk:
    drive: str  # the guest device's id (-device ...,id=vda): what restore names the image
    node: str  # the block node the device reads and writes
    format: str
    size: int
    filename: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def disks_of(qmp: Qmp) -> list[Disk]:
    """Every fixed disk attached to a guest device, in QEMU's order (removable media, such as
    CD-ROMs, are not backed up)."""
    found = []
    for entry in qmp.execute("query-block"):
        inserted = entry.get("inserted")
        if not inserted or entry.get("removable"):
            continue
        qdev = entry.get("qdev") or ""
        peripheral = PERIPHERAL.match(qdev)
        drive = peripheral.group(1) if peripheral else (entry.get("device") or qdev)
        image = inserted.get("image", {})
        found.append(
            Disk(
                drive=drive,
                node=inserted.get("node-name") or entry.get("device", ""),
                format=image.get("format") or inserted.get("drv", ""),
                size=int(image.get("virtual-size", 0)),
                filename=inserted.get("file", ""),
            )
        )
    return [d for d in found if d.drive and d.node and d.size > 0]
