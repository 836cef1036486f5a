"""``--quiesce KIND:TARGET``: the quiescer a string names."""

from __future__ import annotations

from collections.abc import Callable

from freezeframe.errors import UsageError
from freezeframe.quiesce.base import Quiescer
from freezeframe.quiesce.redis import RedisQuiescer
from freezeframe.quiesce.script import ScriptQuiescer
from freezeframe.quiesce.sqlite import SqliteQuiescer

AVAILABLE: dict[str, Callable[[str], Quiescer]] = {
    "sqlite": SqliteQuiescer,
    "script": ScriptQuiescer,
    "redis": RedisQuiescer,
}
PLANNED = ("postgresql", "mysql")
SERVICE = ("unit", "cgroup", "pid")  # service pauses: freezeframe.capture.service_pause


def parse(spec: str) -> Quiescer:
    kind, sep, target = spec.partition(":")
    if spec == "auto":
        raise UsageError("--quiesce auto is not available yet in this version")
    if not sep or not target:
        raise UsageError(f"--quiesce {spec!r}: expected KIND:TARGET, e.g. sqlite:/srv/app.db")
    if kind in AVAILABLE:
        return AVAILABLE[kind](target)
    if kind in PLANNED:
        raise UsageError(f"--quiesce {kind}: is not available yet in this version")
    known = ", ".join([*AVAILABLE, *SERVICE, *PLANNED])
    raise UsageError(f"--quiesce {spec!r}: unknown kind {kind!r} (one of {known})")
