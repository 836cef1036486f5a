"""Which consistency a VM can reach (`crash` needs only QMP; `filesystem` a guest agent that
freezes; `application` the guest hook with quiescers), and ``doctor --vm``'s report of it."""

from __future__ import annotations

import json
from typing import Any

from freezeframe.errors import QmpError
from freezeframe.guest import protocol
from freezeframe.levels import Level
from freezeframe.vm.machine import VmSpec, disks_of
from freezeframe.vm.qmp import GuestAgent, Qmp

# What a VM can reach, the highest first: it is always read from a point-in-time view.
LEVELS = tuple(level for level in Level.descending() if level >= Level.CRASH)


def reachable(spec: VmSpec) -> tuple[Level, str]:
    """The highest level this VM reaches, and why not higher (`crash` needs only QMP)."""
    if spec.qga is None:
        return Level.CRASH, "no guest agent socket given (qga=PATH)"
    try:
        with GuestAgent(spec.qga) as agent:
            agent.execute("guest-fsfreeze-status")
            hook = guest_hook(agent)
    except QmpError as exc:
        return Level.CRASH, f"the guest agent does not freeze: {exc}"
    if hook is None:
        return Level.FILESYSTEM, (
            "the guest hook is not installed in the guest (freezeframe guest-hook install)"
        )
    if not hook.get("quiescers"):
        return Level.FILESYSTEM, "the guest hook has no quiescer configured in the guest"
    return Level.APPLICATION, ""


def guest_hook(agent: GuestAgent) -> dict[str, Any] | None:
    """What ``freezeframe guest-hook install`` noted in the guest, or None."""
    return guest_json(agent, protocol.INSTALLED)


def guest_file(name: str) -> str:
    """A file of the guest hook's state directory, as the agent names it."""
    return f"{protocol.STATE_DIR}/{name}"


def guest_json(agent: GuestAgent, name: str) -> dict[str, Any] | None:
    """A JSON document of the guest hook's state directory, read through the agent (None when
    missing or not a JSON object)."""
    text = agent.read_file(guest_file(name))
    try:
        document = json.loads(text) if text else None
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def examine(spec: VmSpec) -> dict[str, Any]:
    """``doctor --vm``: the disks, whether the guest agent answers and freezes, and the levels."""
    with Qmp(spec.qmp) as qmp:
        disks = disks_of(qmp)
        top, reason = reachable(spec)
        agent: dict[str, Any] = {"socket": spec.qga, "answers": False}
        hook: dict[str, Any] | None = None
        if spec.qga is not None:
            try:
                with GuestAgent(spec.qga) as guest:
                    info = guest.execute("guest-info")
                    agent.update(
                        answers=True,
                        version=info.get("version"),
                        fsfreeze_status=guest.execute("guest-fsfreeze-status"),
                    )
                    hook = guest_hook(guest)
            except QmpError as exc:
                agent["error"] = str(exc)
        rank = LEVELS.index(top)
        return {
            "name": spec.name,
            "qemu": qmp.version,
            "disks": [d.to_json() for d in disks],
            "guest_agent": agent,
            "guest_hook": hook or False,
            "reachable": list(LEVELS[rank:]),
            "unreachable": {level: reason for level in LEVELS[:rank]},
        }
