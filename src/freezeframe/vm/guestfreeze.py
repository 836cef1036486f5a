"""The guest's file systems frozen through its agent around the instant a VM's disks are
taken, under a cap the watchdog keeps; at `application`, the guest hook's hold of the
applications inside the guest, requested and read back through the agent."""

from __future__ import annotations

import json
import time
from typing import Any

from freezeframe import hooks
from freezeframe.capture.watchdog import Watchdog
from freezeframe.errors import QmpError
from freezeframe.guest import protocol
from freezeframe.vm.machine import VmSpec
from freezeframe.vm.qmp import GuestAgent
from freezeframe.vm.reach import guest_file, guest_json


class GuestFreeze:
    """The guest's file systems frozen for the transaction, under a cap the watchdog keeps.
    The agent's socket takes one client at a time, so it is not held open across the freeze:
    the watchdog must be able to reach the agent to thaw.

    At `application` (``run_id`` given) a request left in the guest first makes the agent's
    fsfreeze hook hold the guest's applications (``freezeframe guest-hook``) before the freeze;
    the hook's state, read back after the thaw (the agent serves no file while frozen), says
    whether they were held across the transaction and what the quiescers recorded."""

    def __init__(
        self,
        spec: VmSpec,
        watchdog: Watchdog,
        release: list[str],
        cap_s: float,
        run_id: str | None = None,
    ) -> None:
        self.spec = spec
        self.watchdog = watchdog
        self.release = [*release, "--thaw-only"]
        self.cap_s = cap_s
        self.run_id = run_id
        self.frozen_at = 0.0
        self.freeze_ms = 0.0
        self.frozen_count = 0
        self.failed = False
        self.overran = False
        self.application_error = ""
        self._hold_state: dict[str, Any] = {}
        self._token: int | None = None

    def hold_report(self) -> dict[str, Any]:
        """The applications' hold as the guest reported it after the thaw."""
        report = protocol.parse_hold(self._hold_state) or {}
        if report:
            report["in_guest"] = True
        return report

    def freeze(self) -> None:
        assert self.spec.qga is not None
        try:
            with GuestAgent(self.spec.qga) as agent:
                if agent.execute("guest-fsfreeze-status") == "frozen":
                    raise QmpError("the guest's file systems are already frozen by someone else")
        except QmpError:
            self.failed = True
            raise
        self._token = self.watchdog.arm_command(self.release, {}, self.cap_s)
        self.frozen_at = time.monotonic()
        try:
            with GuestAgent(self.spec.qga) as agent:
                if self.run_id is not None:
                    request = {"run": self.run_id, "cap_s": self.cap_s}
                    agent.write_file(guest_file(protocol.REQUEST), json.dumps(request).encode())
                self.frozen_count = int(
                    agent.execute("guest-fsfreeze-freeze", timeout_s=self.cap_s)
                )
        except QmpError:
            self.failed = True
            self.thaw()
            raise
        hooks.reached(hooks.Point.VM_FROZEN)

    def thaw(self) -> None:
        assert self.spec.qga is not None
        try:
            with GuestAgent(self.spec.qga) as agent:
                if agent.execute("guest-fsfreeze-status") == "frozen":
                    agent.execute("guest-fsfreeze-thaw", timeout_s=self.cap_s)
                if self.run_id is not None:
                    # The agent refuses file commands while frozen; by now the thaw hook has
                    # released the holder, which reported first.
                    self._hold_state = guest_json(agent, protocol.STATE) or {}
                    self.application_error = hold_problem(self._hold_state, self.run_id)
        finally:
            self.freeze_ms = (time.monotonic() - self.frozen_at) * 1000
            if self._token is not None and not self.watchdog.disarm(self._token):
                self.overran = True
            self._token = None


def hold_problem(state: dict[str, Any], run_id: str) -> str:
    """Why the guest's applications were not held across the transaction ('' when they were).
    The hook returns to the agent, which then freezes, only once they are held or failed."""
    if state.get("run") != run_id:
        return (
            "the guest hook did not run on the freeze (qemu-ga needs its fsfreeze hook "
            "enabled, -F, and freezeframe guest-hook install in the guest)"
        )
    if state.get("phase") == "failed" or state.get("error"):
        return f"the guest hook could not hold the applications: {state.get('error', '')}"
    if state.get("phase") != "released" or not state.get("in_time"):
        return "the guest's applications were released at their cap before the disks were taken"
    if protocol.parse_hold(state) is None:
        return "the guest hook's report of the hold is malformed"
    return ""
