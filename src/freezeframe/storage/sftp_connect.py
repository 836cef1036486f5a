"""An authenticated SSH connection to an SFTP server: the host key checked against known_hosts
before anything is sent, then key authentication (never a password).

Keys are ``FREEZEFRAME_SFTP_IDENTITY`` alone when it is set (as ``ssh -i KEY -o
IdentitiesOnly=yes``), else the agent's (``SSH_AUTH_SOCK``) and then ``~/.ssh/id_ed25519``,
``id_ecdsa`` and ``id_rsa``. The host keys are ``FREEZEFRAME_SFTP_KNOWN_HOSTS`` or
``~/.ssh/known_hosts`` (hashed entries too); an unknown or changed host key is refused, never
learnt: which key is the server's is for its operator to say.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

import paramiko

from freezeframe.errors import StorageError, TransientStorageError
from freezeframe.storage.timeouts import io_timeout

IDENTITY_ENV = "FREEZEFRAME_SFTP_IDENTITY"
KNOWN_HOSTS_ENV = "FREEZEFRAME_SFTP_KNOWN_HOSTS"
DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")
CONNECT_TIMEOUT = 15.0
KEEPALIVE = 15  # seconds between SSH keepalives: a dead peer is noticed, a NAT keeps the flow
WINDOW = 8 * 1024 * 1024  # per channel: enough for IN_FLIGHT writes and reads of 32 KiB

# paramiko logs what its transport thread meets (a bad banner, a reset) with tracebacks; with
# no handler of its own, Python would print them on stderr, beside the one line of the error
# this module raises for the same failure. A program that configures logging still sees them.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


@dataclass(frozen=True)
class Server:
    """Where to connect and as whom."""

    user: str
    host: str
    port: int = 22

    @property
    def known_hosts_name(self) -> str:
        """The host as known_hosts names it: ``host``, or ``[host]:port`` off port 22."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    @property
    def keyscan(self) -> str:
        port = "" if self.port == 22 else f"-p {self.port} "
        return f"ssh-keyscan {port}{self.host} | ssh-keygen -lf -"


def _home_ssh(env: Mapping[str, str], name: str) -> str:
    home = env.get("HOME") or os.path.expanduser("~")
    return os.path.join(home, ".ssh", name)


def known_hosts_path(env: Mapping[str, str]) -> str:
    return env.get(KNOWN_HOSTS_ENV) or _home_ssh(env, "known_hosts")


def connect(server: Server, env: Mapping[str, str]) -> paramiko.Transport:
    """An authenticated transport; StorageError for what a retry cannot mend (host keys,
    keys), TransientStorageError for what it may (a refused or dropped connection)."""
    where = f"{server.user}@{server.host}:{server.port}"
    path = known_hosts_path(env)
    known = _load_known_hosts(path)
    timeout = min(CONNECT_TIMEOUT, io_timeout(env))
    try:
        sock = socket.create_connection((server.host, server.port), timeout=timeout)
    except socket.gaierror as exc:
        raise StorageError(f"cannot find SFTP server {server.host!r}: {exc.strerror}") from exc
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise TransientStorageError(f"cannot connect to SFTP server {where}: {reason}") from exc
    transport = paramiko.Transport(sock, default_window_size=WINDOW)
    transport.banner_timeout = transport.handshake_timeout = timeout
    try:
        expected = known.lookup(server.known_hosts_name) if known is not None else None
        if expected:
            _prefer_known_key_types(transport, set(expected.keys()))
        try:
            transport.start_client(timeout=timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            reason = _reason(exc)
            if "banner" in reason:
                reason = "it does not answer as an SSH server"
            raise TransientStorageError(
                f"SSH with {where} failed before authentication: {reason}"
            ) from exc
        try:
            # start_client returns, without raising, when its timeout passes mid-negotiation.
            offered = transport.get_remote_server_key()
        except paramiko.SSHException as exc:
            raise TransientStorageError(
                f"SSH with {where} failed before authentication: it sent nothing for {timeout:g} s"
            ) from exc
        _check_host_key(server, offered, expected, path, known)
        _authenticate(server, transport, env)
        transport.set_keepalive(KEEPALIVE)
    except BaseException:
        transport.close()
        raise
    return transport


def _load_known_hosts(path: str) -> paramiko.HostKeys | None:
    """The known hosts, or None when the file does not exist."""
    try:
        return paramiko.HostKeys(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot read the known hosts file {path}: {exc.strerror}") from exc


def _prefer_known_key_types(transport: paramiko.Transport, known: set[str]) -> None:
    """Ask for a host key of a type known_hosts holds, so a server with several keys is not
    taken for one whose key changed (as OpenSSH's client does)."""
    wanted = set(known)
    if "ssh-rsa" in known:
        wanted |= {"rsa-sha2-512", "rsa-sha2-256"}
    options = transport.get_security_options()
    types = [t for t in options.key_types if t in wanted]
    if types:
        options.key_types = types


def _check_host_key(
    server: Server,
    key: paramiko.PKey,
    expected: MutableMapping[str, paramiko.PKey] | None,
    path: str,
    known: paramiko.HostKeys | None,
) -> None:
    name = server.known_hosts_name
    offered = f"{key.algorithm_name} key {key.fingerprint}"
    if expected and key.get_name() in expected:
        if expected[key.get_name()] == key:
            return
        old = expected[key.get_name()].fingerprint
        raise StorageError(
            f"the host key of {name} has CHANGED: it offered {offered}, but {path} holds "
            f"{old} for it; the server was reinstalled or someone is intercepting the "
            f"connection. Nothing was sent. Confirm the new fingerprint with the server's "
            f"operator (`{server.keyscan}` shows it), then replace the line "
            f"(`ssh-keygen -R '{name}' -f {path}`)"
        )
    missing = "" if known is not None else f" ({path} does not exist)"
    raise StorageError(
        f"the host key of {name} is not known{missing}: it offered {offered}; nothing was "
        f"sent. Compare that fingerprint with the server's own (`ssh-keygen -lf "
        f"/etc/ssh/ssh_host_*_key.pub` there, or `{server.keyscan}` from a network you "
        f"trust), then add the host's line to {path} (or name a file in {KNOWN_HOSTS_ENV})"
    )


def _authenticate(server: Server, transport: paramiko.Transport, env: Mapping[str, str]) -> None:
    keys, notes = _keys(env)
    where = f"{server.user}@{server.known_hosts_name}"
    if not keys:
        raise StorageError(
            f"no SSH key to offer {where}{_notes(notes)}: load one into ssh-agent, put one "
            f"in ~/.ssh, or name one in {IDENTITY_ENV}"
        )
    for _label, key in keys:
        try:
            transport.auth_publickey(server.user, key)
        except paramiko.BadAuthenticationType as exc:
            allowed = ", ".join(exc.allowed_types) or "none"
            raise StorageError(
                f"{where} does not take SSH keys (it allows: {allowed}); freezeframe "
                "authenticates by key only"
            ) from exc
        except paramiko.AuthenticationException:
            continue
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise TransientStorageError(
                f"SSH with {where} failed during authentication: {_reason(exc)}"
            ) from exc
        if transport.is_authenticated():
            return
    offered = ", ".join(label for label, _key in keys)
    raise StorageError(
        f"{where} refused every SSH key offered ({offered}){_notes(notes)}: add the public "
        f"key to the server's authorized_keys for {server.user}, or name the right one in "
        f"{IDENTITY_ENV}"
    )


def _notes(notes: list[str]) -> str:
    return f" ({'; '.join(notes)})" if notes else ""


def _keys(env: Mapping[str, str]) -> tuple[list[tuple[str, paramiko.PKey]], list[str]]:
    """The keys to offer, each with how to name it, and why others were left out."""
    identity = env.get(IDENTITY_ENV)
    if identity:
        return [(identity, _load_key(identity, explicit=True))], []
    keys: list[tuple[str, paramiko.PKey]] = []
    notes: list[str] = []
    if env.get("SSH_AUTH_SOCK"):
        try:
            agent_keys = paramiko.Agent().get_keys()
        except paramiko.SSHException as exc:
            notes.append(f"the agent did not answer: {_reason(exc)}")
        else:
            keys += [(f"agent key {k.fingerprint}", k) for k in agent_keys]
    for name in DEFAULT_KEYS:
        path = _home_ssh(env, name)
        if not os.path.exists(path):
            continue
        try:
            keys.append((path, _load_key(path, explicit=False)))
        except StorageError as exc:
            notes.append(str(exc))
    return keys, notes


def _load_key(path: str, *, explicit: bool) -> paramiko.PKey:
    try:
        return paramiko.PKey.from_path(path)
    except (paramiko.PasswordRequiredException, TypeError) as exc:
        # PEM keys say so by PasswordRequiredException, OpenSSH-format ones by a TypeError
        # from cryptography ("Key is password-protected, but password was not provided").
        if isinstance(exc, TypeError) and "password" not in str(exc).lower():
            raise StorageError(f"{path} is not an SSH private key paramiko reads: {exc}") from exc
        hint = f" and unset {IDENTITY_ENV}" if explicit else ""
        raise StorageError(
            f"{path} is protected by a passphrase: load it into ssh-agent (`ssh-add {path}`){hint}"
        ) from exc
    except OSError as exc:
        raise StorageError(f"cannot read SSH key {path}: {exc.strerror or exc}") from exc
    except (paramiko.SSHException, ValueError) as exc:
        raise StorageError(f"{path} is not an SSH private key paramiko reads: {exc}") from exc


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
