"""PostgreSQL 15 in the LVM lab's guest (tests/vmlvmlab.py): a cluster on an ext4 LV of its own,
pgbench flat out against it, and restored copies started and checked beside it, all in the
guest, as user postgres (the guest's userland is the host's, so PG_BIN is the same path).

The cluster's LV is thick (``PG_LV``, ``PG_LV_MIB``): the lab's thin pool is shared with the
other thin LVs, and a cluster whose WAL grows could fill it, which would stall PostgreSQL; a
thick LV's snapshot has a store of its own that the backup sizes (``--snapshot-size``).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from pgfixtures import Recovery, recovery_of
from vmfixtures import Vm
from vmguestlab import BALANCES_SQL, PG_BIN, PG_SETTINGS
from vmlvmlab import VG, guest_sh, must

PG_LV = "pg-ext4"
PG_LV_MIB = 192
PG_MOUNT = f"/mnt/lv/{PG_LV}"
PG_DATA = f"{PG_MOUNT}/pgdata"
SOCKET_DIR = "/run/pg"  # made 1777 by the lab's setup
LIVE_LOG = "/run/pg/live.log"
PGBENCH_LOG = "/run/pg/pgbench.log"  # pgbench's -P progress lines, with Unix timestamps
PGBENCH_PID = "/run/pg/pgbench.pid"
# The lab's settings but for the WAL: kept well inside the LV (ext4 made with no reserve).
SETTINGS = {**PG_SETTINGS, "max_wal_size": "64MB", "unix_socket_directories": f"'{SOCKET_DIR}'"}
CONNINFO = f"host={SOCKET_DIR} dbname=postgres user=postgres"


@dataclass
class GuestRun:
    """A guest command's exit status and its output (stdout and stderr together)."""

    exitcode: int
    output: str


def as_postgres(*argv: str) -> str:
    """A shell command running ``argv`` as postgres."""
    return shlex.join(["/usr/sbin/runuser", "-u", "postgres", "--", *argv])


def make_pg_lv(vm: Vm) -> None:
    """PG_LV made in the lab's VG, ext4 with no reserved blocks (postgres is not root),
    mounted at PG_MOUNT."""
    must(vm, f"set -e; lvcreate -q -n {PG_LV} -L {PG_LV_MIB}m {VG}; "
             f"mkfs.ext4 -q -m 0 /dev/{VG}/{PG_LV}; mkdir -p {PG_MOUNT}; "
             f"mount /dev/{VG}/{PG_LV} {PG_MOUNT}; chmod 0755 {PG_MOUNT}", timeout=300)  # fmt: skip


def start_server(vm: Vm, data_dir: str, log: str, socket_dir: str | None = None) -> GuestRun:
    """pg_ctl start as postgres (waits until it accepts connections); ``socket_dir``
    overrides the cluster's own (a restored copy must not take the live server's)."""
    options = ["-o", f"-c unix_socket_directories={socket_dir}"] if socket_dir else []
    argv = [f"{PG_BIN}/pg_ctl", "-D", data_dir, "-l", log, *options, "-w", "-t", "600", "start"]
    result = guest_sh(vm, as_postgres(*argv) + " </dev/null 2>&1", timeout=700)
    return GuestRun(result.exitcode, result.stdout.decode(errors="replace"))


def stop_server(vm: Vm, data_dir: str, mode: str = "immediate") -> None:
    argv = [f"{PG_BIN}/pg_ctl", "-D", data_dir, "-m", mode, "-w", "-t", "300", "stop"]
    guest_sh(vm, as_postgres(*argv) + " </dev/null 2>&1", timeout=400)


def make_cluster(vm: Vm) -> None:
    """initdb on PG_DATA with SETTINGS, started, ``pgbench -i`` (scale 1)."""
    must(vm, f"mkdir -p {PG_DATA} && chown postgres:postgres {PG_DATA} && chmod 0700 {PG_DATA}")
    initdb = [f"{PG_BIN}/initdb", "-D", PG_DATA, "-U", "postgres", "--auth=trust", "-N"]
    must(vm, as_postgres(*initdb) + " </dev/null", timeout=900)
    conf = "".join(f"{name} = {value}\n" for name, value in SETTINGS.items())
    must(vm, f"cat >>{PG_DATA}/postgresql.auto.conf <<'EOF'\n{conf}EOF\nsync")
    started = start_server(vm, PG_DATA, LIVE_LOG)
    if started.exitcode != 0:
        raise RuntimeError(f"postgres did not start in the guest: {started.output}")
    init = [f"{PG_BIN}/pgbench", "-h", SOCKET_DIR, "-i", "-q", "-s", "1", "postgres"]
    must(vm, as_postgres(*init) + " </dev/null", timeout=900)


def start_pgbench(vm: Vm, clients: int = 2) -> None:
    """pgbench flat out in the background, a progress line (with its Unix time) a second."""
    argv = [f"{PG_BIN}/pgbench", "-h", SOCKET_DIR, "-n", "-c", str(clients), "-j", "1",
            "-T", "100000", "-P", "1", "--progress-timestamp", "postgres"]  # fmt: skip
    must(vm, f"setsid {as_postgres(*argv)} </dev/null >{PGBENCH_LOG} 2>&1 & "
             f"echo $! >{PGBENCH_PID}")  # fmt: skip


def pgbench_alive(vm: Vm) -> bool:
    return guest_sh(vm, f"kill -0 $(cat {PGBENCH_PID})").exitcode == 0


def stop_pgbench(vm: Vm) -> None:
    guest_sh(vm, f"kill $(cat {PGBENCH_PID}) 2>/dev/null; sleep 0.5; true")


PROGRESS = re.compile(r"^progress: (\d+(?:\.\d+)?) s, (\d+(?:\.\d+)?) tps", re.MULTILINE)


def progress(vm: Vm) -> list[tuple[float, float]]:
    """pgbench's progress so far: (Unix time, transactions a second over the second before)."""
    text = vm.read_guest_file(PGBENCH_LOG).decode(errors="replace")
    return [(float(t), float(tps)) for t, tps in PROGRESS.findall(text)]


def guest_clock(vm: Vm) -> float:
    return float(must(vm, "date +%s.%N").strip())


def psql(vm: Vm, socket_dir: str, sql: str, timeout: float = 300.0) -> str:
    argv = [f"{PG_BIN}/psql", "-h", socket_dir, "-U", "postgres", "-d", "postgres", "-XAtq",
            "-v", "ON_ERROR_STOP=1", "-c", sql]  # fmt: skip
    return must(vm, as_postgres(*argv) + " </dev/null", timeout=timeout).strip()


def committed(vm: Vm, socket_dir: str = SOCKET_DIR) -> int:
    """Rows in pgbench_history: one per committed pgbench transaction."""
    return int(psql(vm, socket_dir, "SELECT count(*) FROM pgbench_history"))


def balances(vm: Vm, socket_dir: str) -> tuple[int, int, int, int]:
    """pgbench's invariant's four sums (pgfixtures.balances), read in one snapshot."""
    a, t, b, h = (int(x) for x in psql(vm, socket_dir, BALANCES_SQL).split("|"))
    return a, t, b, h


def amcheck(vm: Vm, socket_dir: str) -> GuestRun:
    """pg_amcheck of every table and index (heap and B-tree), as pgfixtures.amcheck."""
    argv = [f"{PG_BIN}/pg_amcheck", "-h", socket_dir, "-U", "postgres", "--all",
            "--install-missing", "--heapallindexed"]  # fmt: skip
    result = guest_sh(vm, as_postgres(*argv) + " </dev/null 2>&1", timeout=900)
    return GuestRun(result.exitcode, result.stdout.decode(errors="replace"))


@dataclass
class RestoredServer:
    socket_dir: str
    log: str
    started: GuestRun

    def log_text(self, vm: Vm) -> str:
        return vm.read_guest_file(self.log).decode(errors="replace")

    def recovery(self, vm: Vm) -> Recovery:
        return recovery_of(self.log_text(vm))


def start_restored(vm: Vm, data_dir: str, name: str) -> RestoredServer:
    """The restored cluster at ``data_dir`` started as postgres on a socket of its own
    (/run/NAME, which also holds its log)."""
    socket_dir = f"/run/{name}"
    must(vm, f"rm -rf {socket_dir} && mkdir -p {socket_dir} && "
             f"chown postgres:postgres {socket_dir}")  # fmt: skip
    log = f"{socket_dir}/server.log"
    return RestoredServer(socket_dir, log, start_server(vm, data_dir, log, socket_dir))
