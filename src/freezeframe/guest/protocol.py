"""What the host and the guest hook exchange through files the guest agent reads and writes.

The agent runs the fsfreeze hook with no word from the host, so the host leaves a request in
the guest's state directory before it asks for the freeze; the hook takes it (a freeze nobody
asked for, e.g. another backup tool's, runs no quiescer) and reports in a state file that the
host reads through the agent while the guest is frozen and again after the thaw.
"""

from __future__ import annotations

import json
import os
from typing import Any

from freezeframe.documents import too_deep

STATE_DIR = "/var/lib/freezeframe/guest"  # the host reads and writes here through the agent
STATE_DIR_ENV = "FREEZEFRAME_GUEST_STATE_DIR"  # the guest side only (tests)
CONFIG_PATH = "/etc/freezeframe/guest.toml"
CONFIG_ENV = "FREEZEFRAME_GUEST_CONFIG"
HOOK_PATH = "/etc/qemu/fsfreeze-hook.d/freezeframe"  # run by Debian's /etc/qemu/fsfreeze-hook

# host -> guest, taken by the freeze hook: {"run": ID, "cap_s": SECONDS}
REQUEST = "request.json"
# guest -> host: {"run": ID, "phase": "held" | "failed" | "released", "error": TEXT,
#  "in_time": BOOL, "hold": {"window_ms", "cap_s", "quiescers": [...]}}
STATE = "state.json"
# written by `guest-hook install`: {"version", "hook", "config", "quiescers", "cap_s"}
INSTALLED = "installed.json"
HOLDER_PID = "holder.pid"  # the holder's pid, as plain text for the hook script

HELD, FAILED, RELEASED = "held", "failed", "released"


def state_dir() -> str:
    return os.environ.get(STATE_DIR_ENV) or STATE_DIR


def write_json(path: str, document: dict[str, Any]) -> None:
    """Written whole and renamed into place, so a reader never sees half a document."""
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(document, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def read_json(path: str) -> dict[str, Any] | None:
    """The document, or None when it is missing or not a JSON object (damaged, half-written by
    an older version, nested too deeply to parse)."""
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except (FileNotFoundError, ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


_HOLD_NUMBERS = ("window_ms", "cap_s")


def parse_hold(state: dict[str, Any]) -> dict[str, Any] | None:
    """The ``hold`` of a state document as the host may record it: ``window_ms`` and ``cap_s``
    numbers, ``quiescers`` a list of objects, nothing nested much deeper than a quiescer's
    positions.
    {} when the guest reported no hold, None when what it reported is not a hold (a guest is
    not trusted to write what the host's snapshot and output can take)."""
    hold = state.get("hold")
    if hold is None or hold == {}:
        return {}
    if not isinstance(hold, dict) or too_deep(hold, 6):
        return None
    for name in _HOLD_NUMBERS:
        value = hold.get(name, 0.0)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if not -1e15 < value < 1e15:  # NaN, infinity, and integers no float can hold
            return None
    quiescers = hold.get("quiescers", [])
    if not isinstance(quiescers, list) or not all(isinstance(q, dict) for q in quiescers):
        return None
    return dict(hold)
