"""Debian's OpenSSH ``sshd`` on a free loopback port, for the SFTP backend: a generated ed25519
host key and client key, the client's public key as the only authorized key, no passwords,
``internal-sftp``, and a known_hosts file that names the host key; everything in a temporary
directory. ``kill()`` drops every connection at once (the listener and each session's process),
``start()`` brings the server back on the same port with the same keys."""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from servers.base import free_ports, log_tail, write_private

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")  # Debian's sshd refuses to start without it
READY_TIMEOUT = 15.0


def new_key(path: Path) -> str:
    """An ed25519 key pair in OpenSSH's formats at ``path`` and ``path.pub``; returns the
    public key's line (``ssh-ed25519 AAAA...``)."""
    key = ed25519.Ed25519PrivateKey.generate()
    write_private(
        path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    line = public.decode()
    path.with_name(path.name + ".pub").write_text(line + "\n")
    return line


@dataclass
class SshServer:
    """A running sshd serving SFTP to ``user`` with ``client_key``; ``known_hosts`` names its
    host key (``host_key_line``) for ``[127.0.0.1]:port``."""

    root: Path
    port: int
    user: str
    client_key: Path
    known_hosts: Path
    host_key_line: str
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log(self) -> Path:
        return self.root / "sshd.log"

    @property
    def known_hosts_name(self) -> str:
        return f"[127.0.0.1]:{self.port}"

    def location(self, path: Path | str) -> str:
        """The location of a repository at ``path`` (absolute) on this server."""
        return f"sftp://{self.user}@127.0.0.1:{self.port}/{Path(path).resolve()}"

    def env(self) -> dict[str, str]:
        """What a client of this server reads: its key and its known_hosts, no agent."""
        return {
            "FREEZEFRAME_SFTP_IDENTITY": str(self.client_key),
            "FREEZEFRAME_SFTP_KNOWN_HOSTS": str(self.known_hosts),
        }

    def start(self) -> None:
        """Start sshd (again) and wait until it sends its banner."""
        with open(self.log, "ab") as log:
            self._process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"sshd exited with status {self._process.returncode}:\n{log_tail(self.log)}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock,
            ):
                if sock.recv(64).startswith(b"SSH-2.0-"):
                    return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"sshd did not answer within {READY_TIMEOUT:g} s:\n{log_tail(self.log)}")

    def kill(self) -> None:
        """SIGKILL the listener and every session process it started (each session calls
        setsid, so they are found by their parents before the listener goes)."""
        process, self._process = self._process, None
        if process is None:
            return
        for pid in [process.pid, *_descendants(process.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait()


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def unavailable() -> str | None:
    """Why sshd cannot run here, or None."""
    if not os.path.exists(SSHD):
        return f"{SSHD} is not installed (tools/bootstrap.sh installs openssh-server)"
    if os.geteuid() != 0 and not PRIVSEP_DIR.is_dir():
        return f"sshd needs {PRIVSEP_DIR}, which only root can create"
    return None


@contextlib.contextmanager
def sshd(root: Path) -> Iterator[SshServer]:
    """A running sshd with its keys and config under ``root``; stopped when the block ends."""
    if os.geteuid() == 0:
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    host_key_line = new_key(root / "host_ed25519")
    client_line = new_key(root / "client_ed25519")
    (root / "authorized_keys").write_text(client_line + "\n")
    os.chmod(root / "authorized_keys", 0o600)
    user = getpass.getuser()
    for attempt in range(3):
        [port] = free_ports(1)
        (root / "sshd_config").write_text(
            "\n".join(
                [
                    f"Port {port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {root / 'host_ed25519'}",
                    f"PidFile {root / 'sshd.pid'}",
                    f"AuthorizedKeysFile {root / 'authorized_keys'}",
                    f"AllowUsers {user}",
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",  # the keys live in a temporary directory
                    "PrintMotd no",
                    "MaxStartups 100:30:200",
                    "MaxSessions 64",
                    "LogLevel VERBOSE",
                    "Subsystem sftp internal-sftp",
                    "",
                ]
            )
        )
        known_hosts = root / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{port} {host_key_line}\n")
        server = SshServer(root, port, user, root / "client_ed25519", known_hosts, host_key_line)
        try:
            server.start()
        except RuntimeError:
            if attempt == 2:
                raise
            continue  # the port was taken meanwhile
        break
    try:
        yield server
    finally:
        server.kill()
