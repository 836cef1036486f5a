"""An "application lab" on top of tests/vmfixtures.py: the same tiny guest (Debian's kernel, a
busybox initramfs) whose userland for PostgreSQL 15 and Python is the HOST's root file system,
shared read-only over 9p and mounted at /host. The guest agent runs chrooted into /host with an
fsfreeze hook (``-F``), so freezeframe's guest hook runs in the guest with the host's Python and
the clone's sources, and the agent's file and exec commands see the chroot's paths.

Layout in the guest (the same paths inside the chroot, where qemu-ga, PostgreSQL and the hook
run, and outside it, where /init and the dependent-writes workload run, since /mnt is a link to
/host/mnt):

- /dev/vda (ext4) at /mnt/a: DEPENDENT_WRITES' a.log and PostgreSQL's WAL (/mnt/a/pg_wal);
- /dev/vdb (ext4) at /mnt/b: b.commit and the data directory (/mnt/b/pgdata, whose pg_wal links
  to /mnt/a/pg_wal);
- tmpfs on /run (PostgreSQL's socket and log in /run/pg, the hook at /run/freezeframe-hook, the
  guest config at /run/freezeframe/guest.toml, the agent's log), /var/lib (with an empty
  /var/lib/freezeframe/guest) and /mnt; everything else is the host's, read-only, /tmp too
  (where a clone of the project, and so the Python the guest runs, may live).

Use ``make_app_disks`` + ``running_app_vm`` (a context manager yielding a ``vmfixtures.Vm``)
with ``APP_WORKLOAD`` (dependent writes + PostgreSQL + pgbench flat out), then
``wait_pg_ready``, ``pgbench_progress``, ``guest_balances``; ``boot_restored`` boots images a
backup restored with ``START_PG_ONLY`` and reports whether PostgreSQL came up and its sums.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ffharness import is_root, privileged_required
from freezeframe.errors import QmpError
from pgfixtures import BIN, PgServer, Recovery, initdb, pgbench_init, recovery_of, run_as_postgres
from vmfixtures import (
    DEPENDENT_WRITES,
    FAILED_MARKER,
    Vm,
    _run,
    _which,
    cache_root,
    ext4_disk,
    guest_initramfs,
    running_vm,
)

PG_READY_MARKER = "FREEZEFRAME-LAB-PG-READY"
PG_FAILED_MARKER = "FREEZEFRAME-LAB-PG-FAILED"
PG_BIN = str(BIN)  # the same path in the guest's chroot
PG_DATA = "/mnt/b/pgdata"  # guest paths
PG_WAL = "/mnt/a/pg_wal"
PG_SOCKET_DIR = "/run/pg"  # not /tmp: the guest sees the host's /tmp (a clone may live there)
PG_LOG = "/run/pg/postgresql.log"
HOOK_PATH = "/run/freezeframe-hook"
GUEST_CONFIG_PATH = "/run/freezeframe/guest.toml"
HOOK_LOG = "/run/hook.log"  # STUB_HOOK's log
MEMORY_MIB = 1024

# Byte code for the clone's sources (which has none: PYTHONDONTWRITEBYTECODE) and the modules
# they import, compiled on the host by ``warm_pycache`` (``running_app_vm`` does) and read by
# the guest through 9p: Python in the guest cannot write byte code to the read-only share, and
# compiling under TCG costs a second of each start. Stale entries are just not used.
PYCACHE_PREFIX = cache_root() / "pycache"

# The hook for real use: freezeframe's guest command, run by the agent (in the chroot) with
# ``freeze`` before it freezes the file systems and ``thaw`` after it thawed them.
DEFAULT_HOOK = f"""#!/bin/sh
export FREEZEFRAME_GUEST_CONFIG={GUEST_CONFIG_PATH}
export PYTHONPYCACHEPREFIX={PYCACHE_PREFIX}
exec {sys.executable} -m freezeframe guest-hook "$@"
"""
# For checks of the lab itself: records each call ("freeze <time>" / "thaw <time>").
STUB_HOOK = f"""#!/bin/sh
echo "$1 $(date +%s.%N)" >>{HOOK_LOG}
"""
DEFAULT_GUEST_CONFIG = ""

# Loaded by /init (deps first) for the 9p shares.
APP_MODULES = ("9pnet_virtio", "9p")

# Sourced by /init before it mounts the disks: the host's root over 9p at /host, the guest's
# own writable file systems over it, /mnt turned into a link to /host/mnt (the disks are
# mounted there: no bind mounts, the agent would freeze each mount of a disk), and the
# per-VM files (hook, guest config) copied from the second, per-VM share.
APP_SETUP = r"""
p9=trans=virtio,version=9p2000.L
mkdir -p /host /labconf
mount -t 9p -o $p9,ro,cache=loose,msize=512000 hostroot /host || fail "mount 9p hostroot"
mount -t proc proc /host/proc || fail "mount /host/proc"
mount -t sysfs sysfs /host/sys || fail "mount /host/sys"
mount -t devtmpfs devtmpfs /host/dev || fail "mount /host/dev"
mkdir -p /host/dev/shm
mount -t tmpfs -o mode=1777 tmpfs /host/dev/shm || fail "mount /host/dev/shm"
for d in /host/run:0755 /host/var/lib:0755 /host/mnt:0755; do
    mount -t tmpfs -o "mode=${d#*:}" tmpfs "${d%:*}" || fail "mount tmpfs ${d%:*}"
done
mkdir -p /host/mnt/a /host/mnt/b /host/var/lib/freezeframe/guest /host/run/freezeframe
mkdir -m 1777 /host/run/pg
rmdir /mnt/a /mnt/b /mnt && ln -s /host/mnt /mnt || fail "link /mnt"
mount -t 9p -o $p9,ro labconf /labconf || fail "mount 9p labconf"
cp /labconf/hook /host/run/freezeframe-hook || fail "copy the hook"
chmod 0755 /host/run/freezeframe-hook
cp /labconf/guest.toml /host/run/freezeframe/guest.toml || fail "copy the guest config"
umount /labconf
"""

# The agent in the chroot: its commands see the host's userland and the guest's mounts.
# Python in the guest cannot write byte code to the read-only share: the agent (and so the hook
# that `guest-hook install` writes, and guest-exec) uses what warm_pycache compiled on the host.
APP_AGENT = (
    f"PYTHONPYCACHEPREFIX={PYCACHE_PREFIX} chroot /host /usr/sbin/qemu-ga -m virtio-serial "
    f'-p "$port" -t /run -l /run/qemu-ga.log -F{HOOK_PATH}'
)

# Starts PostgreSQL (as postgres, in the chroot) and prints PG_READY_MARKER once it accepts
# connections, or PG_FAILED_MARKER; $? is pg_ctl's status.
_START_PG = f"""
chroot /host /usr/sbin/runuser -u postgres -- {PG_BIN}/pg_ctl -D {PG_DATA} -l {PG_LOG} \\
    -w -t 300 start >/host/run/pg/pg_ctl.out 2>&1
status=$?
if [ $status -eq 0 ]; then
    echo "{PG_READY_MARKER}"
else
    echo "{PG_FAILED_MARKER} pg_ctl exit $status"
fi
"""

# Just PostgreSQL: for booting restored images (nothing else writes to the disks).
START_PG_ONLY = _START_PG

# Dependent writes across the disks, and PostgreSQL with pgbench's TPC-B-like transactions flat
# out (two clients) on a data directory and WAL split across the same two disks.
APP_WORKLOAD = f"""
(
{_START_PG}
    [ $status -eq 0 ] || exit 1
    exec chroot /host /usr/sbin/runuser -u postgres -- {PG_BIN}/pgbench -h {PG_SOCKET_DIR} \\
        -n -c 2 -T 100000 postgres >/host/run/pg/pgbench.log 2>&1
) &
{DEPENDENT_WRITES}
"""

# The settings the cluster is made with (postgresql.auto.conf), valid on the host and in the
# guest: the socket in /run/pg, no TCP, a log on stderr (pg_ctl -l), memory for a 1 GiB guest.
PG_SETTINGS = {
    "unix_socket_directories": "'/run/pg'",
    "listen_addresses": "''",
    "shared_buffers": "32MB",
    "max_wal_size": "96MB",
    "min_wal_size": "32MB",
    "fsync": "on",
    "logging_collector": "off",
    "log_checkpoints": "on",
    "dynamic_shared_memory_type": "posix",
}

BALANCES_SQL = (
    "BEGIN ISOLATION LEVEL REPEATABLE READ;"
    " SELECT (SELECT sum(abalance) FROM pgbench_accounts),"
    " (SELECT sum(tbalance) FROM pgbench_tellers),"
    " (SELECT sum(bbalance) FROM pgbench_branches),"
    " (SELECT coalesce(sum(delta), 0) FROM pgbench_history);"
    " COMMIT;"
)


# --- disks --------------------------------------------------------------------------------


def make_app_disks(
    workdir: Path, size_mib: int = 256, fmt: str = "qcow2", scale: int = 1
) -> list[Path]:
    """Two ext4 disks (vda, vdb) holding a PostgreSQL 15 cluster initialised on the host with
    ``pgbench -i -s scale`` and stopped cleanly: its data directory /pgdata on vdb, its WAL
    /pg_wal on vda, pgdata/pg_wal a link to the guest's /mnt/a/pg_wal.
    """
    if not is_root():
        privileged_required("the application lab needs root (initdb as postgres, mkfs)")
    _which("mkfs.ext4", "qemu-img", "runuser")
    if not (BIN / "initdb").exists():
        privileged_required("PostgreSQL 15 is not installed (make setup installs it)")
    if fmt not in ("qcow2", "raw"):
        raise ValueError(f"unsupported disk format {fmt}")
    workdir.mkdir(parents=True, exist_ok=True)
    # The staging trees: traversable by postgres (pytest's tmp_path is not), roots 0755 as the
    # disks' roots will be (mkfs.ext4 -d copies owners and modes, the root's too).
    staging = Path(tempfile.mkdtemp(prefix="ffapp", dir="/var/tmp"))
    try:
        staging.chmod(0o755)
        content_a, content_b = staging / "a", staging / "b"
        for content in (content_a, content_b):
            content.mkdir(mode=0o755)
            content.chmod(0o755)
        data_dir, wal_dir = content_b / "pgdata", content_a / "pg_wal"
        initdb(data_dir, wal_dir)
        with (data_dir / "postgresql.auto.conf").open("a") as conf:
            for name, value in PG_SETTINGS.items():
                conf.write(f"{name} = {value}\n")
        socket_dir = staging / "sock"
        socket_dir.mkdir()
        shutil.chown(socket_dir, "postgres", "postgres")
        log = socket_dir / "host-postgresql.log"
        server = PgServer(data_dir, socket_dir, log)
        start = subprocess.run(
            ["runuser", "-u", "postgres", "--", f"{BIN}/pg_ctl", "-D", str(data_dir),
             "-l", str(log), "-o", f"-c unix_socket_directories={socket_dir}", "-w", "start"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        try:
            if start.returncode != 0:
                raise RuntimeError(f"postgres did not start: {start.stdout}\n{server.log_text()}")
            pgbench_init(server, scale)
        finally:
            run_as_postgres(BIN / "pg_ctl", "-D", data_dir, "-m", "fast", "-w", "stop", check=False)
        control = run_as_postgres(BIN / "pg_controldata", data_dir)
        if "shut down" not in control.split("Database cluster state:", 1)[1].splitlines()[0]:
            raise RuntimeError(f"the cluster was not shut down cleanly:\n{control}")
        (data_dir / "pg_wal").unlink()
        os.symlink(PG_WAL, data_dir / "pg_wal")
        os.lchown(data_dir / "pg_wal", *_postgres_ids())
        return [
            ext4_disk(workdir / f"disk{index}", label, size_mib, fmt, content)
            for index, (label, content) in enumerate([("lab-a", content_a), ("lab-b", content_b)])
        ]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _postgres_ids() -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


# --- the VM -------------------------------------------------------------------------------


@functools.cache
def warm_pycache() -> Path:
    """Compiles the freezeframe package and what ``freezeframe.cli.main`` and the guest hook's
    quiescers import (psycopg...) into PYCACHE_PREFIX (once a process; up to date sources are
    skipped)."""
    import freezeframe

    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE_PREFIX)
    package = Path(freezeframe.__file__).parent
    _run([sys.executable, "-m", "compileall", "-q", package], env=env)
    imports = "import freezeframe.cli.main, freezeframe.guest.hook, freezeframe.quiesce.postgresql"
    _run([sys.executable, "-c", imports], env=env)
    return PYCACHE_PREFIX


def app_initramfs(
    workload: str = APP_WORKLOAD,
    modules: tuple[str, ...] = APP_MODULES,
    setup: str = APP_SETUP,
) -> Path:
    """The lab's initramfs with the 9p modules, APP_SETUP and the agent in the chroot
    (``modules`` and ``setup``: more modules, more setup, e.g. the LVM lab's)."""
    return guest_initramfs(workload, modules=modules, setup=setup, agent=APP_AGENT)


@contextlib.contextmanager
def running_app_vm(
    workdir: Path,
    disks: Sequence[Path],
    *,
    hook: str = DEFAULT_HOOK,
    guest_config: str = DEFAULT_GUEST_CONFIG,
    workload: str = APP_WORKLOAD,
    memory_mib: int = MEMORY_MIB,
    fmt: str | None = None,
    boot_timeout: float = 180.0,
    modules: tuple[str, ...] = APP_MODULES,
    setup: str = APP_SETUP,
) -> Iterator[Vm]:
    """Boots the application guest on ``disks`` (from ``make_app_disks``) like
    ``vmfixtures.running_vm``; ``hook`` (a script's text) becomes the agent's fsfreeze hook
    /run/freezeframe-hook and ``guest_config`` the guest's /run/freezeframe/guest.toml.

    The VM is up when the agent answers, before PostgreSQL is: ``wait_pg_ready`` waits for it.
    """
    if not is_root():
        privileged_required("the application lab needs root")
    warm_pycache()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "labconf"
    conf.mkdir(exist_ok=True)
    (conf / "hook").write_text(hook)
    (conf / "guest.toml").write_text(guest_config)
    extra_args = [
        "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
        "-fsdev", f"local,id=labconf,path={conf},security_model=none,readonly=on",
        "-device", "virtio-9p-pci,fsdev=labconf,mount_tag=labconf",
    ]  # fmt: skip
    with running_vm(
        workdir,
        disks,
        memory_mib=memory_mib,
        fmt=fmt,
        boot_timeout=boot_timeout,
        initramfs=app_initramfs(workload, modules, setup),
        extra_args=extra_args,
    ) as vm:
        yield vm


def guest_psql(vm: Vm, sql: str, timeout: float = 60.0) -> str:
    """One query's result (unaligned, tuples only) from psql in the guest, as postgres."""
    result = vm.guest_exec(
        [f"{PG_BIN}/psql", "-h", PG_SOCKET_DIR, "-U", "postgres", "-d", "postgres", "-XAtq",
         "-v", "ON_ERROR_STOP=1", "-c", sql],
        timeout=timeout,
    )  # fmt: skip
    if result.exitcode != 0:
        raise RuntimeError(f"psql in the guest exited {result.exitcode}: {result.stderr!r}")
    return result.stdout.decode().strip()


def guest_balances(vm: Vm) -> tuple[int, int, int, int]:
    """pgfixtures.balances in the guest: the four sums, read in one snapshot."""
    a, t, b, h = (int(x) for x in guest_psql(vm, BALANCES_SQL).split("|"))
    return a, t, b, h


def pgbench_progress(vm: Vm) -> int:
    """Rows in pgbench_history: one per committed pgbench transaction."""
    return int(guest_psql(vm, "SELECT count(*) FROM pgbench_history"))


def guest_pg_log(vm: Vm) -> str:
    """PostgreSQL's log in the guest (and pg_ctl's output, if any)."""
    text = ""
    for path in (PG_LOG, "/run/pg/pg_ctl.out"):
        with contextlib.suppress(QmpError, OSError, TimeoutError):  # e.g. no such file
            text += vm.read_guest_file(path).decode(errors="replace")
    return text


def wait_pg_ready(vm: Vm, timeout: float = 120.0) -> float:
    """Waits until the workload says PostgreSQL accepts connections; the seconds waited.
    Raises RuntimeError with its log when it failed to start (``timeout``: ``Vm.wait_s``)."""
    timeout = vm.wait_s(timeout)
    started = time.monotonic()
    while True:
        text = vm.serial_text()
        if PG_READY_MARKER in text:
            return time.monotonic() - started
        if PG_FAILED_MARKER in text or FAILED_MARKER in text or vm.process.poll() is not None:
            raise RuntimeError(f"PostgreSQL did not start in the guest:\n{guest_pg_log(vm)}")
        if time.monotonic() > started + timeout:
            raise TimeoutError(f"PostgreSQL not ready after {timeout} s:\n{guest_pg_log(vm)}")
        time.sleep(0.1)


def stop_guest_pg(vm: Vm, mode: str = "fast", timeout: float = 120.0) -> None:
    """Stops PostgreSQL in the guest (pgbench's clients then exit) and waits for it
    (``timeout``: ``Vm.wait_s``)."""
    result = vm.guest_exec(
        ["/usr/sbin/runuser", "-u", "postgres", "--", f"{PG_BIN}/pg_ctl", "-D", PG_DATA,
         "-m", mode, "-w", "-t", str(int(vm.wait_s(timeout))), "stop"],
        timeout=timeout + 10,
    )  # fmt: skip
    if result.exitcode != 0:
        raise RuntimeError(f"pg_ctl stop exited {result.exitcode}: {result.stdout!r}")


# --- restored images ----------------------------------------------------------------------


@dataclass
class RestoredPg:
    """What became of PostgreSQL on booted restored images."""

    started: bool
    log: str  # PostgreSQL's log in the guest
    balances: tuple[int, int, int, int] | None  # None when it did not start
    history_rows: int | None  # pgbench transactions it kept (None when it did not start)
    recovery: Recovery  # what the log says it had to do first
    boot_seconds: float
    ready_seconds: float  # boot to accepting connections (or giving up)

    @property
    def consistent(self) -> bool:
        return self.balances is not None and len(set(self.balances)) == 1


def boot_restored(
    workdir: Path, images: Sequence[Path], fmt: str = "raw", timeout: float = 300.0
) -> RestoredPg:
    """Boots restored images with START_PG_ONLY (the stub hook), waits for PostgreSQL to
    accept connections or fail, reads its log and sums, and stops the VM.

    The images are changed by the boot (recovery, a shutdown checkpoint): boot copies to keep
    the originals.
    """
    with running_app_vm(workdir, images, hook=STUB_HOOK, workload=START_PG_ONLY, fmt=fmt) as vm:
        started = time.monotonic()
        try:
            wait_pg_ready(vm, timeout)
        except RuntimeError:
            log = guest_pg_log(vm)
            return RestoredPg(
                False, log, None, None, recovery_of(log), vm.boot_seconds,
                time.monotonic() - started,
            )  # fmt: skip
        ready = time.monotonic() - started
        sums = guest_balances(vm)
        rows = pgbench_progress(vm)
        log = guest_pg_log(vm)
        with contextlib.suppress(RuntimeError, TimeoutError):
            stop_guest_pg(vm)
        return RestoredPg(True, log, sums, rows, recovery_of(log), vm.boot_seconds, ready)
