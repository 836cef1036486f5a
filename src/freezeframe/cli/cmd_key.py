"""``freezeframe key``: manage the passwords that open a repository."""

from __future__ import annotations

import argparse
import sys

from freezeframe.cli.context import CommandContext
from freezeframe.cli.output import table
from freezeframe.errors import UsageError
from freezeframe.repository.password import prompt_password, resolve_password
from freezeframe.service.keys import (
    AddKeyRequest,
    KeyAdded,
    KeyInfo,
    RemoveKeyRequest,
    add_key,
    list_keys,
    remove_key,
)


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    actions.add_parser("list", help="list the keys")
    add = actions.add_parser("add", help="add a password")
    add.add_argument("--new-password-file", metavar="FILE", help="read the new password here")
    remove = actions.add_parser("remove", help="remove a key (not the one in use)")
    remove.add_argument("key_id", help="key id (prefix)")
    passwd = actions.add_parser("passwd", help="change the password in use")
    passwd.add_argument("--new-password-file", metavar="FILE", help="read the new password here")


def run(ctx: CommandContext) -> int:
    action = ctx.args.action
    with ctx.repository(load_index=False) as repo:
        if action == "list":
            keys = list_keys(repo)
            ctx.out.result([_key_json(k) for k in keys], lambda: _key_table(keys))
        elif action in ("add", "passwd"):
            new_password = _new_password(ctx.args.new_password_file)
            _show_added(ctx, add_key(repo, AddKeyRequest(new_password, action == "passwd")))
        else:
            removed = remove_key(repo, RemoveKeyRequest(ctx.args.key_id))
            ctx.out.result({"removed": removed}, f"removed key {removed[:8]}")
    return 0


def _show_added(ctx: CommandContext, change: KeyAdded) -> None:
    ctx.out.result(
        {"id": change.id, "removed": change.removed},
        f"saved new key {change.id[:8]}"
        + (f", removed old key {change.removed[:8]}" if change.removed else ""),
    )


def _key_json(key: KeyInfo) -> dict[str, object]:
    return {
        "id": key.id,
        "current": key.current,
        "damaged": key.damaged,
        "user": key.user,
        "host": key.host,
        "created": key.created,
    }


def _key_table(keys: list[KeyInfo]) -> str:
    return table(
        ["", "ID", "User", "Host", "Created"],
        [
            [
                "*" if k.current else "",
                k.id[:8],
                k.user,
                k.host,
                k.created + (" (damaged)" if k.damaged else ""),
            ]
            for k in keys
        ],
    )


def _new_password(path: str | None) -> bytes:
    if path:
        return resolve_password(path)
    if not sys.stdin.isatty():
        raise UsageError("give the new password with --new-password-file")
    return prompt_password("new password: ", confirm=True)
