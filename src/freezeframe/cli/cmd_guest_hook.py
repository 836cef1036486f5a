"""``freezeframe guest-hook``: inside a VM's guest, qemu-ga's fsfreeze hook (``freeze``,
``thaw``), its installation, and what it last did (``status``).

``freeze`` and ``thaw`` exit 0 even when a quiescer fails: the file systems must still freeze
and thaw, and the host reads the failure from the state file and fails or degrades the backup.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from freezeframe.cli.context import CommandContext
from freezeframe.guest import hook, protocol


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=["freeze", "thaw", "install", "status"],
        help="freeze/thaw: as qemu-ga's fsfreeze hook; install: write the hook; status: show",
    )
    parser.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help=f"the guest's configuration (default ${protocol.CONFIG_ENV} or "
        f"{protocol.CONFIG_PATH})",
    )
    parser.add_argument(
        "--hook",
        default=protocol.HOOK_PATH,
        metavar="FILE",
        help=f"install: where qemu-ga's hook runs it from (default {protocol.HOOK_PATH})",
    )


def run(ctx: CommandContext) -> int:
    directory = protocol.state_dir()
    config_file = ctx.args.config or hook.config_path()
    action = ctx.args.action
    if action == "freeze":
        os.makedirs(directory, mode=0o700, exist_ok=True)
        doc = hook.freeze(directory, config_file)
    elif action == "thaw":
        doc = hook.thaw(directory)
    elif action == "install":
        doc = hook.install(directory, config_file, ctx.args.hook)
    else:
        doc = {
            "installed": protocol.read_json(os.path.join(directory, protocol.INSTALLED)),
            "last": protocol.read_json(os.path.join(directory, protocol.STATE)),
        }
    ctx.out.result(doc, lambda: _text(action, doc))
    return 0


def _text(action: str, doc: dict[str, Any]) -> str:
    if action == "install":
        kinds = ", ".join(doc["quiescers"]) or "no quiescer"
        return f"hook written to {doc['hook']} ({kinds}; cap {doc['cap_s']:g} s)"
    return json.dumps(doc, indent=2, sort_keys=True)
