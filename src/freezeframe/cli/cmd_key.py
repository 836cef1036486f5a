"""``freezeframe key``: manage the passwords that open a repository."""

from __future__ import annotations

import argparse
import sys

from freezeframe.cli.context import CommandContext
from freezeframe.cli.output import table
from freezeframe.errors import FreezeframeError, NotFound, UsageError
from freezeframe.repository.crypto import content_name
from freezeframe.repository.keys import KdfParams, KeyFile
from freezeframe.repository.password import prompt_password, resolve_password
from freezeframe.repository.repository import add_key
from freezeframe.storage.base import Kind, Storage


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
    repo = ctx.open_repository(load_index=False)
    storage = repo.storage
    action = ctx.args.action
    if action == "list":
        keys = [_describe(storage, info.name, repo.key_name) for info in storage.list(Kind.KEYS)]
        keys.sort(key=lambda k: str(k["id"]))
        ctx.out.result(
            keys,
            lambda: table(
                ["", "ID", "User", "Host", "Created"],
                [
                    [
                        "*" if k["current"] else "",
                        str(k["id"])[:8],
                        str(k["user"]),
                        str(k["host"]),
                        str(k["created"]) + (" (damaged)" if k["damaged"] else ""),
                    ]
                    for k in keys
                ],
            ),
        )
        return 0
    if action in ("add", "passwd"):
        new_password = _new_password(ctx.args.new_password_file)
        current = KeyFile.from_bytes(storage.get(Kind.KEYS, repo.key_name), repo.key_name)
        name = add_key(storage, repo.master, new_password, current.kdf or KdfParams())
        if action == "passwd":
            storage.delete(Kind.KEYS, repo.key_name)
        ctx.out.result(
            {"id": name, "removed": repo.key_name if action == "passwd" else None},
            f"saved new key {name[:8]}"
            + (f", removed old key {repo.key_name[:8]}" if action == "passwd" else ""),
        )
        return 0
    matches = [i.name for i in storage.list(Kind.KEYS) if i.name.startswith(ctx.args.key_id)]
    if not matches:
        raise NotFound(f"no key {ctx.args.key_id}")
    if len(matches) > 1:
        raise UsageError(f"key id {ctx.args.key_id} is ambiguous")
    if matches[0] == repo.key_name:
        raise UsageError("refusing to remove the key in use; open with another password first")
    storage.delete(Kind.KEYS, matches[0])
    ctx.out.result({"removed": matches[0]}, f"removed key {matches[0][:8]}")
    return 0


def _describe(storage: Storage, name: str, current: str) -> dict[str, object]:
    """One key for `key list`; a damaged key is listed as such (`key remove` takes it away)."""
    doc: dict[str, object] = {"id": name, "current": name == current, "damaged": False}
    try:
        data = storage.get(Kind.KEYS, name)
        key = KeyFile.from_bytes(data, name)
    except FreezeframeError:
        return {**doc, "damaged": True, "user": "", "host": "", "created": ""}
    damaged = content_name(data) != name
    return {**doc, "damaged": damaged, "user": key.user, "host": key.host, "created": key.created}


def _new_password(path: str | None) -> bytes:
    if path:
        return resolve_password(path)
    if not sys.stdin.isatty():
        raise UsageError("give the new password with --new-password-file")
    return prompt_password("new password: ", confirm=True)
