"""``doctor``: what each path and VM can reach, and why not higher, before any backup runs
(the web console's plan editor asks the same question)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from freezeframe.capture.doctor import PathReport, examine
from freezeframe.errors import UsageError
from freezeframe.quiesce import discovery
from freezeframe.vm.machine import VmSpec
from freezeframe.vm.reach import examine as examine_vm


@dataclass(frozen=True)
class DoctorRequest:
    paths: tuple[str, ...] = ()
    vms: tuple[VmSpec, ...] = ()


@dataclass
class DoctorReport:
    paths: list[PathReport] = field(default_factory=list)
    vms: list[dict[str, Any]] = field(default_factory=list)


def doctor(request: DoctorRequest) -> DoctorReport:
    """Examine every path (with the databases running there) and every VM; changes nothing."""
    if not request.paths and not request.vms:
        raise UsageError("give paths, or --vm SPEC, to examine")
    running = discovery.running() if request.paths else []
    return DoctorReport(
        paths=[examine(path, running) for path in request.paths],
        vms=[examine_vm(spec) for spec in request.vms],
    )
