"""``freezeframe serve`` as a test server: the real command in a child process, over a
repository location (a temporary directory, or a bucket of an S3 test server), on a port the
kernel picks on loopback, with three accounts (``admin`` full, ``host`` append, ``reader``
read) whose secrets only the test knows. The server announces its address as one JSON line on
stdout; its log (stderr) goes to a file the tests read."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ffharness import freezeframe_executable
from freezeframe.server.accounts import Role, new_account, save_accounts
from servers.base import log_tail, stop
from servers.tls import make_tls

READY_TIMEOUT = 30.0
ROLES = {"admin": Role.FULL, "host": Role.APPEND, "reader": Role.READ}


@dataclass
class RestServer:
    url: str  # http(s)://127.0.0.1:PORT/
    repository: str  # the location it serves
    log: Path
    secrets: dict[str, str]
    accounts: Path
    process: subprocess.Popen[bytes]
    ca_bundle: Path | None = None
    announced: dict[str, object] = field(default_factory=dict)

    @property
    def location(self) -> str:
        return f"rest:{self.url}"

    def env(self, account: str = "admin", *, secret: str | None = None) -> dict[str, str]:
        """What a client of this server as ``account`` is given (``secret``: a wrong one)."""
        env = {
            "FREEZEFRAME_REST_USER": account,
            "FREEZEFRAME_REST_PASSWORD": self.secrets[account] if secret is None else secret,
        }
        if self.ca_bundle is not None:
            env["FREEZEFRAME_REST_CA_BUNDLE"] = str(self.ca_bundle)
        return env

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def write_accounts(path: Path) -> dict[str, str]:
    """The three accounts, each with a fresh secret; returns the secrets by account."""
    made = {name: secrets.token_urlsafe(18) for name in ROLES}
    save_accounts(path, {n: new_account(n, ROLES[n], made[n].encode()) for n in ROLES})
    return made


@contextlib.contextmanager
def rest_server(
    root: Path,
    repository: str,
    *,
    append_only: bool = False,
    tls: bool = False,
    env: dict[str, str] | None = None,
    listen: str = "127.0.0.1:0",
    accounts: Path | None = None,
) -> Iterator[RestServer]:
    """A running ``freezeframe serve`` of ``repository``, stopped (SIGTERM) when the block ends.
    ``env``: what the server's own backend needs (an S3 server's keys)."""
    root.mkdir(parents=True, exist_ok=True)
    if accounts is None:
        accounts = root / "accounts.json"
        made = write_accounts(accounts)
    else:
        made = {}
    certificates = make_tls(root) if tls else None
    argv = [
        freezeframe_executable(), "--repo", repository, "--json", "serve",
        "--accounts", str(accounts),
    ]  # fmt: skip
    if listen:  # "": the default
        argv += ["--listen", listen]
    if append_only:
        argv.append("--append-only")
    if certificates is not None:
        argv += ["--tls-cert", str(certificates.cert), "--tls-key", str(certificates.key)]
    log = root / "serve.log"
    with open(log, "ab") as stderr:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )  # fmt: skip
    try:
        announced = _wait_announced(process, log)
        server = RestServer(
            str(announced["url"]),
            repository,
            log,
            made,
            accounts,
            process,
            certificates.ca_bundle if certificates else None,
            announced,
        )
    except BaseException:
        stop(process)
        raise
    try:
        yield server
    finally:
        stop(process)
        if process.stdout is not None:
            process.stdout.close()


def _wait_announced(process: subprocess.Popen[bytes], log: Path) -> dict[str, object]:
    """The JSON line the server prints once it listens."""
    assert process.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.2)
        if ready:
            line = process.stdout.readline()
            if line:
                doc: dict[str, object] = json.loads(line)
                return doc
        if process.poll() is not None:
            raise RuntimeError(
                f"freezeframe serve exited with status {process.returncode}:\n{log_tail(log)}"
            )
    raise RuntimeError(f"freezeframe serve did not announce itself:\n{log_tail(log)}")
