"""How long freezeframe waits for one answer from a VM's QEMU: its monitor (QMP), its guest
agent, its NBD server.

Each wait has a default sized for a VM on a host with room to spare; a VM that answers slowly
(an emulated guest without KVM, a loaded host) needs longer, and ``FREEZEFRAME_VM_TIMEOUT``
then replaces every one of them. A wait only ends early when the answer comes, so a longer
timeout costs nothing on a VM that answers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from freezeframe.envseconds import seconds_from_env

TIMEOUT_ENV = "FREEZEFRAME_VM_TIMEOUT"
QMP_S = 30.0  # a QMP command, and the greeting
AGENT_S = 10.0  # a guest-agent command, and its sync
RELEASE_S = 5.0  # the watchdog's thaw and clean-up after freezeframe died: soon or not at all
CANCEL_S = 10.0  # a block job's cancellation event
# NBD: nbd.DEFAULT_TIMEOUT, one answer of the NBD server while the disks are read


def vm_timeout(default: float, env: Mapping[str, str] | None = None) -> float:
    """``FREEZEFRAME_VM_TIMEOUT`` when set, else ``default``."""
    return seconds_from_env(os.environ if env is None else env, TIMEOUT_ENV, default)
