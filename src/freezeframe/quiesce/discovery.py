"""Running databases found through /proc, each with the ``--quiesce`` string that would hold it.

PostgreSQL, MariaDB/MySQL and Redis all change into their data directory when they start, so a
server's working directory is where its data lie; how to reach it comes from what it listens
on (its unix sockets in /proc/net/unix, its TCP ports in /proc/net/tcp*) and, for PostgreSQL,
from the postmaster.pid it keeps in that directory. Nothing is connected to here: discovery
only proposes; the quiescer's ``prepare`` checks.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from freezeframe.quiesce.base import within_any
from freezeframe.quiesce.script import hooks_dir, hooks_in

PROC = "/proc"
LISTEN = "0A"  # TCP state in /proc/net/tcp
ACCEPTING = 0x10000  # __SO_ACCEPTCON in /proc/net/unix: a listening socket
SERVERS = {
    "postgres": "postgresql",
    "postmaster": "postgresql",
    "mariadbd": "mysql",
    "mysqld": "mysql",
    "redis-server": "redis",
}


@dataclass(frozen=True)
class Instance:
    kind: str  # the quiescer kind: postgresql, mysql or redis
    pid: int
    data_dir: str
    spec: str  # --quiesce KIND:TARGET that would hold it ("" when no way in was found)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def running() -> list[Instance]:
    """Every database server running on this machine (main processes only)."""
    found = []
    for pid in _pids():
        kind = SERVERS.get(_comm(pid))
        if kind is None or _is_child_of_same(pid):
            continue
        try:
            data_dir = os.readlink(f"{PROC}/{pid}/cwd")
        except OSError:
            continue  # gone, or not ours to see
        found.append(Instance(kind, pid, data_dir, _spec(kind, pid, data_dir)))
    return found


def under(paths: Iterable[str], instances: list[Instance] | None = None) -> list[Instance]:
    """The instances whose data directory lies inside one of ``paths``."""
    roots = list(paths)
    return [
        instance
        for instance in (running() if instances is None else instances)
        if within_any(instance.data_dir, roots)
    ]


def _spec(kind: str, pid: int, data_dir: str) -> str:
    if kind == "postgresql":
        return _postgresql_spec(data_dir)
    sockets = _unix_sockets(pid)
    ports = _tcp_ports(pid)
    if kind == "mysql":
        if sockets:
            return f"mysql:mysql://root@localhost/?unix_socket={sockets[0]}"
        return f"mysql:mysql://root@127.0.0.1:{ports[0]}" if ports else ""
    if sockets:
        return f"redis:unix://{sockets[0]}"
    return f"redis:redis://127.0.0.1:{ports[0]}" if ports else ""


def _postgresql_spec(data_dir: str) -> str:
    """From postmaster.pid: line 4 the port, line 5 the first socket directory, line 6 the
    first listen address."""
    try:
        with open(os.path.join(data_dir, "postmaster.pid"), encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    if len(lines) < 6:
        return ""
    port, socket_dir, address = lines[3].strip(), lines[4].strip(), lines[5].strip()
    host = socket_dir or ("127.0.0.1" if address in ("*", "0.0.0.0", "::") else address)
    if not host:
        return ""
    return f"postgresql:host={host} port={port} dbname=postgres user=postgres"


def _pids() -> list[int]:
    return [int(name) for name in os.listdir(PROC) if name.isdigit()]


def _comm(pid: int) -> str:
    try:
        with open(f"{PROC}/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def _ppid(pid: int) -> int:
    try:
        with open(f"{PROC}/{pid}/stat", encoding="utf-8", errors="replace") as f:
            return int(f.read().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _is_child_of_same(pid: int) -> bool:
    """PostgreSQL's backends and workers are children of the postmaster, and may show the
    same name."""
    parent = _ppid(pid)
    return parent > 1 and SERVERS.get(_comm(parent)) == SERVERS.get(_comm(pid))


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in os.listdir(f"{PROC}/{pid}/fd"):
            try:
                target = os.readlink(f"{PROC}/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def _unix_sockets(pid: int) -> list[str]:
    """Paths of the unix sockets ``pid`` listens on (abstract ones left out)."""
    inodes = _socket_inodes(pid)
    paths = []
    try:
        with open(f"{PROC}/net/unix", encoding="utf-8", errors="replace") as f:
            next(f, None)
            for line in f:
                fields = line.split()
                listening = len(fields) >= 8 and int(fields[3], 16) & ACCEPTING
                if listening and fields[6] in inodes and fields[7].startswith("/"):
                    paths.append(fields[7])
    except OSError:
        pass
    return sorted(paths)


def _tcp_ports(pid: int) -> list[int]:
    inodes = _socket_inodes(pid)
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"{PROC}/net/{table}", encoding="utf-8") as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) >= 10 and fields[3] == LISTEN and fields[9] in inodes:
                        ports.add(int(fields[1].rpartition(":")[2], 16))
        except OSError:
            continue
    return sorted(ports)


def expand_auto(
    specs: list[str], paths: list[str], instances: list[Instance] | None = None
) -> tuple[list[str], list[str]]:
    """``--quiesce auto`` replaced by a quiescer for every database found under ``paths``,
    then by the hooks of the hooks directory (the databases are held first); and a warning
    for every such database left without one (counted per kind: two PostgreSQL clusters
    need two ``postgresql:`` quiescers). PostgreSQL comes first: its freeze is a checkpoint
    that blocks nothing, and what freezes after it is not held while it runs.
    ``instances``: what runs (looked up when not given)."""
    found = sorted(under(paths, instances), key=lambda i: (i.kind != "postgresql", i.pid))
    warnings = []
    expanded = [spec for spec in specs if spec != "auto"]
    if "auto" in specs:
        for instance in found:
            if not instance.spec:
                warnings.append(
                    f"--quiesce auto: {_describe(instance)} listens nowhere freezeframe can "
                    f"reach; name it with --quiesce {instance.kind}:TARGET"
                )
            elif instance.spec not in expanded:
                expanded.append(instance.spec)
        hooks = hooks_in(hooks_dir()) if os.path.isdir(hooks_dir()) else []
        expanded += [f"script:{hook}" for hook in hooks if f"script:{hook}" not in expanded]
        if not found and not hooks:
            warnings.append(
                "--quiesce auto found no running database under the paths and no hook in "
                f"{hooks_dir()}"
            )
    given = [spec.partition(":")[0] for spec in expanded]
    for kind in sorted({i.kind for i in found}):
        running_here = [i for i in found if i.kind == kind]
        if given.count(kind) < len(running_here):
            for instance in running_here[given.count(kind) :]:
                warnings.append(
                    f"{_describe(instance)} runs under the paths and no quiescer holds it: "
                    f"its copy will need crash recovery (add --quiesce {instance.kind}:... "
                    "or --quiesce auto)"
                )
    return expanded, warnings


def _describe(instance: Instance) -> str:
    return f"{instance.kind} (pid {instance.pid}, data in {instance.data_dir})"
