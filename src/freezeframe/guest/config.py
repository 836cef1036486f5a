"""``/etc/freezeframe/guest.toml``: which applications the guest hook holds, and for how long.

    cap_s = 60                      # the longest the applications stay held (the host may ask less)
    timeout_s = 30                  # each quiescer's prepare/freeze/thaw
    quiesce = ["postgresql:host=/run/postgresql dbname=postgres user=postgres"]

``quiesce`` takes the strings of ``freezeframe backup --quiesce``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field

from freezeframe.errors import UsageError
from freezeframe.quiesce import spec

DEFAULT_CAP_S = 60.0
DEFAULT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class GuestConfig:
    path: str
    quiesce: list[str] = field(default_factory=list)
    cap_s: float = DEFAULT_CAP_S
    timeout_s: float = DEFAULT_TIMEOUT_S


def load(path: str) -> GuestConfig:
    """The config, checked: every quiescer string must name a known kind."""
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except FileNotFoundError as exc:
        raise UsageError(f"{path}: no such file (the guest hook's configuration)") from exc
    except ValueError as exc:  # TOMLDecodeError, text that is not UTF-8, a 5000-digit number
        raise UsageError(f"{path}: {exc}") from exc
    except RecursionError as exc:
        raise UsageError(f"{path}: values nested too deeply") from exc
    unknown = sorted(set(document) - {"quiesce", "cap_s", "timeout_s"})
    if unknown:
        raise UsageError(f"{path}: unknown setting {unknown[0]!r} (quiesce, cap_s, timeout_s)")
    quiesce = document.get("quiesce", [])
    if not isinstance(quiesce, list) or not all(isinstance(q, str) for q in quiesce):
        raise UsageError(f"{path}: quiesce must be a list of strings such as 'postgresql:...'")
    numbers = {}
    for name, default in (("cap_s", DEFAULT_CAP_S), ("timeout_s", DEFAULT_TIMEOUT_S)):
        value = document.get(name, default)
        # Nor NaN, infinity or more than a timer takes (threading.TIMEOUT_MAX is about 9e9 s).
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e9:
            raise UsageError(f"{path}: {name} must be a positive number of seconds")
        numbers[name] = float(value)
    for text in quiesce:
        kind = text.partition(":")[0]
        if kind not in spec.AVAILABLE:
            known = ", ".join(spec.AVAILABLE)
            raise UsageError(f"{path}: quiesce {text!r}: unknown kind {kind!r} (one of {known})")
    return GuestConfig(path=path, quiesce=list(quiesce), **numbers)
