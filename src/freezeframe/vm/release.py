"""What the watchdog runs if freezeframe dies while it holds a VM: thaw the guest's file
systems, and (unless ``--thaw-only``) cancel freezeframe's block jobs, remove its nodes, NBD
server and overlays. Also run by every backup of a VM first, for what a dead run left.

    python -m freezeframe.vm.release --qmp PATH [--qga PATH] --vm NAME [--thaw-only]
"""

from __future__ import annotations

import argparse
import sys

from freezeframe.errors import FreezeframeError, QmpError
from freezeframe.vm.pointintime import cleanup
from freezeframe.vm.qmp import GuestAgent, Qmp
from freezeframe.vm.timeouts import RELEASE_S, vm_timeout


def thaw_guest(qga_socket: str) -> int | None:
    """Thaw, if frozen; returns how many file systems were thawed (None: not frozen)."""
    with GuestAgent(qga_socket, vm_timeout(RELEASE_S)) as agent:
        if agent.execute("guest-fsfreeze-status") != "frozen":
            return None
        return int(agent.execute("guest-fsfreeze-thaw"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="freezeframe.vm.release")
    parser.add_argument("--qmp", required=True)
    parser.add_argument("--qga")
    parser.add_argument("--vm", required=True)
    parser.add_argument("--thaw-only", action="store_true")
    args = parser.parse_args(argv)
    failed = False
    if args.qga:
        try:
            thaw_guest(args.qga)
        except FreezeframeError as exc:
            print(f"freezeframe: thawing {args.vm}: {exc}", file=sys.stderr)
            failed = True
    if not args.thaw_only:
        try:
            with Qmp(args.qmp, vm_timeout(RELEASE_S)) as qmp:
                cleanup(qmp, args.vm)
        except QmpError as exc:
            print(f"freezeframe: cleaning up {args.vm}: {exc}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
