"""``--quiesce KIND:TARGET``: the quiescer a string names. Each kind's module is imported only
when named, so a backup without databases never loads their client libraries."""

from __future__ import annotations

import importlib
from typing import cast

from freezeframe.errors import UsageError
from freezeframe.quiesce.base import Quiescer

# kind -> (module, class)
AVAILABLE: dict[str, tuple[str, str]] = {
    "sqlite": ("freezeframe.quiesce.sqlite", "SqliteQuiescer"),
    "script": ("freezeframe.quiesce.script", "ScriptQuiescer"),
    "redis": ("freezeframe.quiesce.redis", "RedisQuiescer"),
    "postgresql": ("freezeframe.quiesce.postgresql", "PostgresqlQuiescer"),
    "mysql": ("freezeframe.quiesce.mysql", "MysqlQuiescer"),
}
SERVICE = ("unit", "cgroup", "pid")  # service pauses: freezeframe.capture.service_pause


def parse(spec: str) -> Quiescer:
    kind, sep, target = spec.partition(":")
    if spec == "auto":
        raise UsageError("--quiesce auto is resolved by the backup command, not here")
    if not sep or not target:
        raise UsageError(f"--quiesce {spec!r}: expected KIND:TARGET, e.g. sqlite:/srv/app.db")
    if kind in AVAILABLE:
        module, name = AVAILABLE[kind]
        return cast(Quiescer, getattr(importlib.import_module(module), name)(target))
    known = ", ".join([*AVAILABLE, *SERVICE])
    raise UsageError(f"--quiesce {spec!r}: unknown kind {kind!r} (one of {known})")
