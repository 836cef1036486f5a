"""``python -m freezeframe.guest freeze|thaw``: the hook's own entry, lighter to start than the
``freezeframe`` command (no command-line parser, no output library), as the guest's file
systems and applications wait for it. Prints nothing and exits 0: the host reads the outcome
from the state file."""

import os
import sys

from freezeframe.guest import hook, protocol

if len(sys.argv) != 2 or sys.argv[1] not in ("freeze", "thaw"):
    sys.stderr.write("usage: python -m freezeframe.guest freeze|thaw\n")
    sys.exit(2)
directory = protocol.state_dir()
os.makedirs(directory, mode=0o700, exist_ok=True)
if sys.argv[1] == "freeze":
    hook.freeze(directory, hook.config_path())
else:
    hook.thaw(directory)
