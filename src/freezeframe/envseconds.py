"""A number of seconds a user may set in an environment variable (the storage and VM timeouts):
one reading and one error line for every such setting."""

from __future__ import annotations

import math
from collections.abc import Mapping

from freezeframe.errors import UsageError


def seconds_from_env(env: Mapping[str, str], name: str, default: float) -> float:
    """``env[name]`` as a positive, finite number of seconds, ``default`` when it is unset or
    empty; a UsageError naming the variable for anything else."""
    given = env.get(name)
    if not given:
        return default
    try:
        seconds = float(given)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise UsageError(f"{name}={given!r} is not a positive number of seconds")
    return seconds
