"""``freezeframe serve``: serve a repository's storage over HTTP(S) to hosts with accounts
(``server/``), or manage the accounts file (``--add-account``, ``--remove-account``)."""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import sys
from pathlib import Path

from freezeframe.cli.context import CommandContext
from freezeframe.errors import UsageError
from freezeframe.server.accounts import (
    Role,
    Verifier,
    check_name,
    load_accounts,
    new_account,
    save_accounts,
)
from freezeframe.server.app import RepositoryServer
from freezeframe.server.run import DEFAULT_LISTEN, bind, check_tls, parse_listen, serve
from freezeframe.storage.base import Kind


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"address to listen on (default {DEFAULT_LISTEN}: this machine only)",
    )
    parser.add_argument("--accounts", type=Path, metavar="FILE", help="the accounts file")
    parser.add_argument(
        "--append-only",
        action="store_true",
        help="no account may delete or overwrite anything but its own locks",
    )
    parser.add_argument("--tls-cert", type=Path, metavar="FILE", help="certificate chain (PEM)")
    parser.add_argument("--tls-key", type=Path, metavar="FILE", help="its private key (PEM)")
    parser.add_argument(
        "--add-account",
        metavar="NAME",
        help="add (or replace) an account in --accounts FILE and exit",
    )
    parser.add_argument(
        "--role",
        choices=[r.value for r in Role],
        default=Role.APPEND.value,
        help="the new account's role (default append)",
    )
    parser.add_argument(
        "--secret-file",
        metavar="FILE",
        help="read the new account's secret from the first line of FILE ('-': stdin); "
        "without it a random secret is made and printed once",
    )
    parser.add_argument(
        "--remove-account", metavar="NAME", help="remove an account from --accounts FILE and exit"
    )


def run(ctx: CommandContext) -> int:
    args = ctx.args
    if args.accounts is None:
        raise UsageError("serve needs --accounts FILE (make one with --add-account NAME)")
    if args.add_account is not None:
        return _add_account(ctx, args.accounts)
    if args.remove_account is not None:
        return _remove_account(ctx, args.accounts)
    return _serve(ctx)


def _read_secret(source: str) -> bytes:
    try:
        if source == "-":
            raw = sys.stdin.buffer.readline()
        else:
            with open(source, "rb") as f:
                raw = f.readline()
    except OSError as exc:
        raise UsageError(f"cannot read secret file {source}: {exc.strerror}") from exc
    secret = raw.rstrip(b"\r\n")
    if len(secret) < 8:
        raise UsageError("the secret is shorter than 8 bytes")
    return secret


def _add_account(ctx: CommandContext, path: Path) -> int:
    name = check_name(ctx.args.add_account)
    accounts = load_accounts(path) if path.exists() else {}
    generated = ctx.args.secret_file is None
    secret = secrets.token_urlsafe(24).encode() if generated else _read_secret(ctx.args.secret_file)
    replaced = name in accounts
    accounts[name] = new_account(name, Role(ctx.args.role), secret)
    save_accounts(path, accounts)
    doc: dict[str, object] = {"account": name, "role": ctx.args.role, "replaced": replaced}
    text = f"{'replaced' if replaced else 'added'} account {name} ({ctx.args.role}) in {path}"
    if generated:  # shown once: only its hash is kept
        doc["secret"] = secret.decode()
        text += (
            "\nsecret (shown once; give it to the host as FREEZEFRAME_REST_PASSWORD): "
            + secret.decode()
        )
    ctx.out.result(doc, text)
    return 0


def _remove_account(ctx: CommandContext, path: Path) -> int:
    accounts = load_accounts(path)
    name = ctx.args.remove_account
    if accounts.pop(name, None) is None:
        raise UsageError(f"accounts file {path} has no account {name!r}")
    save_accounts(path, accounts)
    ctx.out.result({"removed": name}, f"removed account {name} from {path}")
    return 0


def _serve(ctx: CommandContext) -> int:
    args = ctx.args
    listen = parse_listen(args.listen)
    check_tls(args.tls_cert, args.tls_key)
    accounts = load_accounts(args.accounts)
    if not accounts:
        raise UsageError(f"accounts file {args.accounts} has no account: add one first")
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s freezeframe serve: %(message)s",
    )
    storage = ctx.storage()
    storage.exists(Kind.CONFIG, "config")  # unreachable storage: one line now, not per request
    cap = Role.APPEND if args.append_only else Role.FULL
    server = RepositoryServer(storage, Verifier(accounts), cap=cap)
    sock = bind(listen)
    port = sock.getsockname()[1]
    tls = args.tls_cert is not None
    url = f"{'https' if tls else 'http'}://{listen.netloc(port)}/"
    if not tls:
        ctx.out.warn(
            "serving plain HTTP: secrets and objects cross the network unencrypted "
            "(give --tls-cert and --tls-key for HTTPS)"
        )
    if not listen.is_loopback:
        ctx.out.warn(f"listening on {listen.host}, reachable from other machines")
    doc = {
        "listening": listen.netloc(port),
        "url": url,
        "location": f"rest:{url}",
        "tls": tls,
        "append_only": args.append_only,
        "repository": storage.location,
        "accounts": len(accounts),
    }
    if ctx.out.json_mode:  # one line, so a supervisor (or a test) can wait for it
        ctx.out.stdout.write(json.dumps(doc) + "\n")
    elif not ctx.out.quiet:
        mode = ", append-only" if args.append_only else ""
        ctx.out.stdout.write(
            f"serving {storage.location} at {url} ({len(accounts)} accounts{mode})\n"
        )
    ctx.out.stdout.flush()
    try:
        serve(server.app(), sock, tls_cert=args.tls_cert, tls_key=args.tls_key)
    finally:
        sock.close()
        storage.close()
    ctx.out.info("stopped")
    return 0
