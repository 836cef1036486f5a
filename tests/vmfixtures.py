"""A fast QEMU lab for the VM backup tests: a tiny guest (Debian's kernel, an initramfs with
busybox, a few modules and the host's qemu-ga) that boots in seconds and writes dependent data
across two virtio disks.

A full Debian guest takes minutes to build and half a minute to boot under TCG; this one is
built once into a cache outside the clone (``/var/cache/freezeframe-lab``, or
``$FREEZEFRAME_LAB_CACHE``) and boots straight into ``/init``, which mounts ``/dev/vda`` at
``/mnt/a`` and ``/dev/vdb`` at ``/mnt/b`` (ext4), starts the guest agent, prints
``READY_MARKER`` and runs the workload.

Use ``make_disks`` + ``running_vm`` (a context manager yielding a ``Vm``), then after the VM
stopped ``check_images`` (or ``mounted_images`` + ``check_dependent_writes``) on the images or
on whatever a backup restored.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import gzip
import hashlib
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ffharness import is_root, privileged_required
from freezeframe.errors import QmpError
from freezeframe.vm.qmp import GuestAgent, Qmp
from freezeframe.vm.timeouts import TIMEOUT_ENV

# Bump when the way the kernel or the initramfs is built changes: it is part of the cache keys.
RECIPE_VERSION = "fflab-3"
READY_MARKER = "FREEZEFRAME-LAB-READY"
FAILED_MARKER = "FREEZEFRAME-LAB-FAILED"
# A TCG guest now and then stops taking timer interrupts during boot and never recovers (the
# kernel prints an RCU stall every ~20 s and makes no progress); a second stall report before
# the ready marker means that boot is lost, and the lab boots again rather than wait it out.
STALL_MARKER = "rcu_preempt detected stalls"
TCG_BOOT_ATTEMPTS = 3
# The lab's waits on a guest (boot, agent answers, guest-exec, a server in the guest getting
# ready) are sized for an emulated guest on an idle host; a loaded host (a CI machine running
# the whole suite on two cores) makes a TCG guest several times slower still. Under TCG every
# such wait is stretched by TCG_SLACK (``$FREEZEFRAME_LAB_SLACK`` sets the factor, KVM too).
# Only waits: a cap or a timeout a test exercises is not a wait and stays as it is.
TCG_SLACK = 3.0
SLACK_ENV = "FREEZEFRAME_LAB_SLACK"
# What freezeframe under test may wait for one answer of QMP, the guest agent or NBD from a TCG
# guest (FREEZEFRAME_VM_TIMEOUT): its defaults (10 s for the agent) are sized for real VMs.
TCG_PRODUCT_TIMEOUT_S = 120.0


def slack(accel: str) -> float:
    """The factor the lab's waits on a guest under ``accel`` are stretched by."""
    explicit = os.environ.get(SLACK_ENV)
    if explicit:
        return float(explicit)
    return TCG_SLACK if accel == "tcg" else 1.0


class StalledBoot(TimeoutError):
    """The guest kernel stalled during boot (an emulator hang, not a failure of the guest)."""


AGENT_PORT_NAME = "org.qemu.guest_agent.0"
RECORD = 64  # bytes per log record, as in tests/workloads.py

# Loaded in dependency order (deps resolved from modules.dep); crc32c is only a soft dependency
# of ext4/jbd2 (asked for through the crypto API at mount time), so it is named explicitly.
GUEST_MODULES = ("virtio_pci", "virtio_blk", "virtio_console", "crc32c_generic", "ext4")
# The agent as /init starts it once its port shows up (``$port``); ``guest_initramfs`` can start
# it some other way (e.g. in a chroot, with an fsfreeze hook).
DEFAULT_AGENT = 'qemu-ga -m virtio-serial -p "$port" -t /run -l /run/qemu-ga.log'
KERNEL_APPEND = (
    "console=ttyS0 panic=-1 quiet loglevel=4 mitigations=off cryptomgr.notests 8250.nr_uarts=1 "
    "i8042.noaux i8042.nokbd i8042.nopnp tsc=reliable no_timer_check"
)

# Workload (b) of tests/workloads.py in busybox sh: append a numbered 64-byte record to
# /mnt/a/a.log, write the new log length to /mnt/b/.tmp, fsync both (the log first) and the
# directory, then rename .tmp over /mnt/b/b.commit. A commit is renamed into place only after
# the log it vouches for is durable, so it never vouches for more log than exists on disk, and
# only a capture consistent across both disks keeps that. The directory fsync makes the
# previous rename durable before the next one (on ext4 the .tmp fsync already commits it).
# printf with a redirection is a builtin (no fork); `sync` and `mv` cost one exec of busybox
# each, the dominant cost under TCG (~10 ms an exec, ~10 ms an fsync).
DEPENDENT_WRITES = r"""
log=/mnt/a/a.log
dir=/mnt/b
size=$(stat -c %s $log 2>/dev/null || echo 0)
n=$((size / 64))
# A torn record left by a crash is cut off, so records stay whole.
[ $((n * 64)) -eq "$size" ] || truncate -s $((n * 64)) $log
while :; do
    n=$((n + 1))
    printf '%063d\n' $n >>$log || exit 1
    printf '%d\n' $((n * 64)) >$dir/.tmp || exit 1
    sync $log $dir/.tmp $dir || exit 1
    mv -f $dir/.tmp $dir/b.commit || exit 1
done
"""

# /init: everything the guest does. __MODULES__, __AGENT__ and the workload are filled in at build
# time; /etc/setup.sh (optional, from ``guest_initramfs(setup=...)``) is sourced once the modules
# are loaded, before the disks are mounted.
INIT_SCRIPT = r"""#!/bin/sh
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs tmpfs /tmp
exec </dev/console >/dev/console 2>&1
fail() {
    echo "__FAILED__: $*"
    reboot -f
}
for m in __MODULES__; do
    insmod "/lib/modules/$m" || fail "insmod $m"
done
i=0
while [ ! -b /dev/vda ] || [ ! -b /dev/vdb ]; do
    i=$((i + 1))
    [ $i -lt 3000 ] || fail "no /dev/vda and /dev/vdb"
    usleep 10000
done
if [ -f /etc/setup.sh ]; then
    . /etc/setup.sh
fi
mount -t ext4 /dev/vda /mnt/a || fail "mount /dev/vda"
mount -t ext4 /dev/vdb /mnt/b || fail "mount /dev/vdb"
port=
i=0
while [ -z "$port" ]; do
    for d in /sys/class/virtio-ports/*; do
        [ "$(cat "$d/name" 2>/dev/null)" = "__PORT__" ] && port="/dev/${d##*/}"
    done
    i=$((i + 1))
    [ $i -lt 3000 ] || fail "no virtio port __PORT__"
    [ -n "$port" ] && [ -c "$port" ] || { port=; usleep 10000; }
done
__AGENT__ &
echo "__READY__ agent on $port"
sh /etc/workload.sh &
# PID 1 must never exit: wait for the agent and the workload, reap orphans, then idle.
while :; do
    wait
    sleep 60
done
"""


def _which(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        privileged_required(f"the VM lab needs {', '.join(missing)}")


def _run(argv: Sequence[str | os.PathLike[str]], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Runs a tool, raising with its stderr (not just the status) when it fails."""
    proc = subprocess.run(
        [os.fspath(a) for a in argv], capture_output=True, text=True, check=False, **kwargs
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, argv))} exited {proc.returncode}: {proc.stderr.strip()}"
        )
    return proc


def cache_root() -> Path:
    """Where built kernels and initramfs images live: outside the clone, kept between runs."""
    explicit = os.environ.get("FREEZEFRAME_LAB_CACHE")
    if explicit:
        return Path(explicit)
    if is_root():
        return Path("/var/cache/freezeframe-lab")
    return Path.home() / ".cache" / "freezeframe-lab"


def _cached(key: str, build: Any) -> Path:
    """The cache directory for ``key``, built by ``build(tmpdir)`` the first time.

    Builds go into a temporary directory renamed into place, so a concurrent or interrupted
    build never leaves a half-built entry that a later run would trust.
    """
    root = cache_root()
    final = root / hashlib.sha256(key.encode()).hexdigest()[:20]
    if (final / "done").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        build(tmp)
        tmp.chmod(0o755)
        (tmp / "key").write_text(key + "\n")
        (tmp / "done").write_text("")
        try:
            tmp.rename(final)
        except OSError:
            if not (final / "done").exists():  # not another builder's finished result
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# --- the guest kernel ---------------------------------------------------------------------


@dataclass(frozen=True)
class GuestKernel:
    """Debian's kernel as unpacked in the cache, never installed on the host."""

    package: str  # e.g. linux-image-6.1.0-50-amd64
    package_version: str
    version: str  # the kernel release, the name of the modules directory
    root: Path  # the unpacked package
    vmlinuz: Path
    vmlinux: Path | None  # the uncompressed ELF, booted with PVH (None: boot vmlinuz)
    modules: Path  # root/lib/modules/<version>, with a modules.dep

    @property
    def key(self) -> str:
        return f"{self.package}={self.package_version}"


def _kernel_package() -> tuple[str, str]:
    """The package linux-image-amd64 currently depends on, and its version (from apt's lists).

    One ``apt-cache show`` of the metapackage names both (it depends on an exact version); each
    apt-cache call costs over a second here, as apt keeps no binary cache.
    """
    for attempt in range(2):
        show = subprocess.run(
            ["apt-cache", "show", "--no-all-versions", "linux-image-amd64"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        match = re.search(r"^Depends:.*?\b(linux-image-\S+-amd64) \(= ([^)\s]+)\)", show, re.M)
        if match:
            return match.group(1), match.group(2)
        if attempt == 0 and is_root():
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, check=False)
    privileged_required("apt knows no linux-image-amd64 (apt-get update as root first)")
    raise AssertionError("unreachable")


def _extract_vmlinux(bzimage: Path, dest: Path) -> None:
    """The uncompressed kernel inside a bzImage, as the kernel's scripts/extract-vmlinux does.

    QEMU boots that ELF directly through its PVH entry point, which skips the bzImage's own
    xz decompression: about six seconds of a TCG boot.
    """
    data = bzimage.read_bytes()
    start = data.find(b"\xfd7zXZ\x00")
    if start < 0:
        return  # not xz: the bzImage is booted as it is
    elf = lzma.LZMADecompressor().decompress(data[start:])
    # The PVH entry is the Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY (type 18).
    pvh_note = re.compile(rb"\x04\0\0\0[\x04\x08]\0\0\0\x12\0\0\0Xen\0")
    if elf[:4] == b"\x7fELF" and pvh_note.search(elf):
        dest.write_bytes(elf)


class _DownloadFailed(RuntimeError):
    pass


def _download_kernel(package: str, version: str, dest: Path) -> None:
    started = time.monotonic()
    download = subprocess.run(
        ["apt-get", "download", "-q", f"{package}={version}"],
        cwd=dest,
        capture_output=True,
        text=True,
        check=False,
    )
    debs = list(dest.glob("*.deb"))
    if download.returncode != 0 or len(debs) != 1:
        raise _DownloadFailed(f"apt-get download {package}={version}: {download.stderr.strip()}")
    downloaded = time.monotonic()
    _run(["dpkg-deb", "-x", debs[0], dest / "root"])
    debs[0].unlink()
    (release,) = [p.name for p in (dest / "root/lib/modules").iterdir()]
    _extract_vmlinux(dest / "root/boot" / f"vmlinuz-{release}", dest / "vmlinux")
    if not (dest / "root/lib/modules" / release / "modules.dep").exists():
        # The package leaves modules.dep to depmod at install time; busybox has one.
        _run(["busybox", "depmod", "-b", dest / "root", release])
    print(
        f"\nlab: {package} downloaded in {downloaded - started:.1f} s, "
        f"unpacked in {time.monotonic() - downloaded:.1f} s"
    )


@functools.cache
def guest_kernel() -> GuestKernel:
    """Debian's amd64 kernel and its modules, downloaded and unpacked once into the cache."""
    _which("apt-get", "apt-cache", "dpkg-deb", "busybox")
    package, version = _kernel_package()
    try:
        entry = _cached(
            f"{RECIPE_VERSION} kernel {package}={version}",
            functools.partial(_download_kernel, package, version),
        )
    except _DownloadFailed as error:
        if not is_root():
            privileged_required(str(error))
        # Stale lists name a kernel the archive no longer has: refresh them, then try again.
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, check=False)
        package, version = _kernel_package()
        try:
            entry = _cached(
                f"{RECIPE_VERSION} kernel {package}={version}",
                functools.partial(_download_kernel, package, version),
            )
        except _DownloadFailed as again:
            privileged_required(str(again))
            raise
    root = entry / "root"
    (release,) = [p.name for p in (root / "lib/modules").iterdir()]
    return GuestKernel(
        package=package,
        package_version=version,
        version=release,
        root=root,
        vmlinuz=root / "boot" / f"vmlinuz-{release}",
        vmlinux=entry / "vmlinux" if (entry / "vmlinux").exists() else None,
        modules=root / "lib/modules" / release,
    )


# --- the initramfs ------------------------------------------------------------------------


def _module_load_order(modules_dir: Path, wanted: Sequence[str]) -> list[str]:
    """Paths (relative to the modules dir) of ``wanted`` and their dependencies, deps first."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        if ":" not in line:
            continue
        path, rest = line.split(":", 1)
        deps[path] = rest.split()
        name = re.sub(r"\.ko(\.\w+)?$", "", path.rsplit("/", 1)[-1]).replace("-", "_")
        by_name[name] = path
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in deps.get(path, []):
            visit(dep)
        order.append(path)

    for name in wanted:
        if name not in by_name:
            raise RuntimeError(f"module {name} is not in {modules_dir}/modules.dep")
        visit(by_name[name])
    return order


def _module_bytes(path: Path) -> bytes:
    """A module's ELF image: busybox insmod in the guest takes no compressed modules."""
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".zst":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def _shared_libraries(binary: str) -> list[str]:
    """The libraries ``binary`` loads, as ldd names them (the paths the loader looks at)."""
    paths = []
    for line in _run(["ldd", binary]).stdout.splitlines():
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if match:
            paths.append(match.group(1))
    return paths


class _Newc:
    """A cpio archive in the "newc" format, the one the kernel unpacks as initramfs."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.ino = 1
        self.dirs: set[str] = set()

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        name_bytes = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 2 if mode & 0o040000 else 1, 0, len(data), 0, 0]
        fields += [rdev[0], rdev[1], len(name_bytes), 0]
        self.ino += 1
        self.out += b"070701" + b"".join(b"%08X" % f for f in fields) + name_bytes
        self.out += b"\0" * (-len(self.out) % 4) + data
        self.out += b"\0" * (-len(self.out) % 4)

    def directory(self, name: str) -> None:
        name = name.strip("/")
        if not name or name in self.dirs:
            return
        self.directory(os.path.dirname(name))
        self.dirs.add(name)
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        name = name.strip("/")
        self.directory(os.path.dirname(name))
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        name = name.strip("/")
        self.directory(os.path.dirname(name))
        self._entry(name, 0o120777, target.encode())

    def char_device(self, name: str, major: int, minor: int) -> None:
        self._entry(name.strip("/"), 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return bytes(self.out)


def _build_initramfs(
    kernel: GuestKernel,
    workload: str,
    dest: Path,
    *,
    modules: Sequence[str] = (),
    setup: str = "",
    agent: str = DEFAULT_AGENT,
) -> None:
    started = time.monotonic()
    archive = _Newc()
    for d in ("dev", "proc", "sys", "run", "tmp", "mnt/a", "mnt/b", "etc", "root", "var"):
        archive.directory(d)
    archive.symlink("var/run", "../run")
    archive.char_device("dev/console", 5, 1)
    archive.char_device("dev/null", 1, 3)
    archive.file("bin/busybox", Path(shutil.which("busybox") or "").read_bytes(), 0o755)
    applets = _run(["busybox", "--list-full"]).stdout.split()
    for applet in applets:
        if applet != "bin/busybox":
            archive.symlink(applet, "/bin/busybox")
    qemu_ga = shutil.which("qemu-ga") or "/usr/sbin/qemu-ga"
    archive.file("usr/sbin/qemu-ga", Path(qemu_ga).read_bytes(), 0o755)
    for lib in _shared_libraries(qemu_ga):
        archive.file(lib, Path(lib).read_bytes(), 0o755)
    order = _module_load_order(kernel.modules, [*GUEST_MODULES, *modules])
    loaded = []
    for rel in order:
        name = re.sub(r"\.(xz|gz|zst)$", "", rel)
        archive.file(f"lib/modules/{name}", _module_bytes(kernel.modules / rel))
        loaded.append(name)
    init = (
        INIT_SCRIPT.replace("__MODULES__", " ".join(loaded))
        .replace("__AGENT__", agent)
        .replace("__PORT__", AGENT_PORT_NAME)
        .replace("__READY__", READY_MARKER)
        .replace("__FAILED__", FAILED_MARKER)
    )
    archive.file("init", init.encode(), 0o755)
    archive.file("etc/workload.sh", workload.encode(), 0o755)
    if setup:
        archive.file("etc/setup.sh", setup.encode(), 0o755)
    archive.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    archive.file("etc/group", b"root:x:0:\n")
    # Uncompressed: a few MiB load in no time, and TCG would spend a second inflating them.
    (dest / "initramfs.cpio").write_bytes(archive.finish())
    print(f"\nlab: initramfs built in {time.monotonic() - started:.1f} s")


def _file_digest(path: str | None) -> str:
    return hashlib.sha256(Path(path or "/nonexistent").read_bytes()).hexdigest()[:16]


@functools.cache
def guest_initramfs(
    workload: str,
    *,
    modules: tuple[str, ...] = (),
    setup: str = "",
    agent: str = DEFAULT_AGENT,
) -> Path:
    """The initramfs running ``workload`` (busybox sh) after boot; cached per recipe+workload.

    ``modules``: more kernel modules for /init to load (with their dependencies); ``setup``: a
    busybox sh script /init sources before it mounts the disks; ``agent``: the command that
    starts the guest agent (``$port`` is its virtio port).
    """
    _which("busybox", "qemu-ga", "ldd")
    kernel = guest_kernel()
    key = "\n".join(
        [
            RECIPE_VERSION,
            "initramfs",
            kernel.key,
            INIT_SCRIPT,
            " ".join(GUEST_MODULES),
            f"busybox {_file_digest(shutil.which('busybox'))}",
            f"qemu-ga {_file_digest(shutil.which('qemu-ga'))}",
            workload,
        ]
    )
    if modules or setup or agent != DEFAULT_AGENT:  # the default recipe keeps its key
        key += "\n" + "\n".join([" ".join(modules), setup, agent])
    build = functools.partial(
        _build_initramfs, kernel, workload, modules=modules, setup=setup, agent=agent
    )
    entry = _cached(key, build)
    return entry / "initramfs.cpio"


# --- disks and the offline check ----------------------------------------------------------


def make_disks(
    workdir: Path, size_mib: int = 256, fmt: str = "qcow2", fill_mib: int = 0
) -> list[Path]:
    """Two ext4 disks (vda, vdb), made on the host so the guest needs no mkfs.

    ``fill_mib`` puts a file of that many MiB of data (``/filler``) on each, like the data a
    real VM carries: copying the images then takes a while, as it would.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    disks = []
    for index, label in enumerate(("lab-a", "lab-b")):
        content = None
        if fill_mib:
            content = workdir / f"content{index}"
            content.mkdir(exist_ok=True)
            block = os.urandom(1024 * 1024)  # not zeros, which qemu-img would leave out
            with (content / "filler").open("wb") as f:
                for _ in range(fill_mib):
                    f.write(block)
        disks.append(ext4_disk(workdir / f"disk{index}", label, size_mib, fmt, content))
        if content is not None:
            shutil.rmtree(content)
    return disks


def ext4_disk(base: Path, label: str, size_mib: int, fmt: str, content: Path | None = None) -> Path:
    """An ext4 image ``base``.raw or .qcow2 holding a copy of ``content`` (owners and modes
    kept, as ``mkfs.ext4 -d`` copies them)."""
    _which("mkfs.ext4", "qemu-img")
    if fmt not in ("qcow2", "raw"):
        raise ValueError(f"unsupported disk format {fmt}")
    raw = base.with_suffix(".raw")
    with raw.open("wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    # Inode tables and journal zeroed now, so the guest starts no lazy-init writer.
    mkfs = ["mkfs.ext4", "-q", "-F", "-L", label, "-E", "lazy_itable_init=0,lazy_journal_init=0"]
    if content is not None:
        mkfs += ["-d", str(content)]
    _run([*mkfs, raw])
    if fmt == "raw":
        return raw
    disk = base.with_suffix(".qcow2")
    _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, disk])
    raw.unlink()
    return disk


def needs_journal_replay(image: Path) -> bool:
    """Whether a raw ext4 image's journal must be replayed before it mounts clean."""
    header = _run(["dumpe2fs", "-h", image]).stdout
    return "needs_recovery" in header


def check_dependent_writes(mount_a: Path, mount_b: Path) -> tuple[bool, str]:
    """Whether DEPENDENT_WRITES' invariant holds on two mounted (or copied) file systems.

    The commit must name a whole number of records no larger than the log, and the log's
    records up to it must be whole and numbered 1, 2, ... in sequence. Past the commit the log
    may hold anything a crash leaves (it is reported, not judged).
    """
    log_path, commit_path = mount_a / "a.log", mount_b / "b.commit"
    log = log_path.read_bytes() if log_path.exists() else None
    if commit_path.exists():
        text = commit_path.read_text(errors="replace").strip()
        if not text.isdigit():
            return False, f"b.commit is not a number: {text[:40]!r}"
        committed = int(text)
    else:
        committed = 0  # the first commit is not written yet
    if log is None:
        return committed == 0, f"no a.log, commit {committed}"
    if committed % RECORD:
        return False, f"commit {committed} is not a whole number of {RECORD}-byte records"
    if committed > len(log):
        return False, f"commit {committed} vouches for more than the log's {len(log)} bytes"
    for index in range(committed // RECORD):
        record = log[index * RECORD : (index + 1) * RECORD]
        if record != b"%063d\n" % (index + 1):
            return False, f"record {index + 1} of {committed // RECORD} committed is {record!r}"
    tail = len(log) - committed
    whole = tail // RECORD
    for index in range(committed // RECORD, committed // RECORD + whole):
        if log[index * RECORD : (index + 1) * RECORD] != b"%063d\n" % (index + 1):
            whole = index - committed // RECORD
            break
    return True, (
        f"commit {committed} <= log {len(log)}: {committed // RECORD} records in sequence, "
        f"{whole} uncommitted after them, {tail - whole * RECORD} other bytes past them"
    )


@contextlib.contextmanager
def mounted_images(
    images: Sequence[Path], workdir: Path, fmt: str = "qcow2"
) -> Iterator[list[Path]]:
    """Mount read-only scratch raw copies of disk images; yields the mount points.

    Each image is converted to raw in ``workdir`` and attached to a writable loop device, so a
    journal that needs recovery is replayed into the scratch copy, never into the image.
    """
    if not is_root():
        privileged_required("mounting disk images needs root")
    _which("qemu-img", "losetup", "mount")
    workdir.mkdir(parents=True, exist_ok=True)
    mounts: list[Path] = []
    loops: list[str] = []
    try:
        for index, image in enumerate(images):
            raw = workdir / f"scratch{index}.raw"
            _run(["qemu-img", "convert", "-f", fmt, "-O", "raw", image, raw])
            loop = _run(["losetup", "--find", "--show", raw]).stdout.strip()
            loops.append(loop)
            mount = workdir / f"mnt{index}"
            mount.mkdir(exist_ok=True)
            _run(["mount", "-t", "ext4", "-o", "ro", loop, mount])
            mounts.append(mount)
        yield mounts
    finally:
        for mount in mounts:
            subprocess.run(["umount", mount], capture_output=True, check=False)
        for loop in loops:
            subprocess.run(["losetup", "-d", loop], capture_output=True, check=False)


def check_images(images: Sequence[Path], workdir: Path, fmt: str = "qcow2") -> tuple[bool, str]:
    """``check_dependent_writes`` on two disk images, plus e2fsck of the replayed copies.

    A broken file system (no mount, or e2fsck finding damage) counts as not ok as well.
    """
    try:
        with mounted_images(images, workdir, fmt) as (mount_a, mount_b):
            ok, detail = check_dependent_writes(mount_a, mount_b)
    except RuntimeError as error:
        return False, f"could not mount: {error}"
    for raw in sorted(workdir.glob("scratch*.raw")):
        fsck = subprocess.run(["e2fsck", "-fn", raw], capture_output=True, text=True, check=False)
        if fsck.returncode != 0:
            ok, detail = False, f"{detail}; e2fsck {raw.name}: exit {fsck.returncode}"
        raw.unlink()
    return ok, detail


# --- the VM -------------------------------------------------------------------------------


@dataclass(frozen=True)
class GuestExec:
    exitcode: int
    stdout: bytes
    stderr: bytes


@dataclass
class Vm:
    """A running lab guest. ``qmp_socket`` is left free for the code under test."""

    process: subprocess.Popen[bytes]
    accel: str  # "kvm" or "tcg"
    boot_seconds: float
    socket_dir: Path
    qmp_socket: Path  # for freezeframe
    test_qmp_socket: Path  # used by ``qmp()``
    qga_socket: Path  # used by ``qga()``
    serial_log: Path
    disks: list[Path]
    disk_format: str
    drive_ids: list[str]  # the virtio-blk device ids: vda, vdb
    node_names: list[str]  # the format nodes the devices use: disk0, disk1
    file_node_names: list[str]  # the protocol nodes under them: disk0-file, disk1-file
    _qmp: Qmp | None = field(default=None, repr=False)
    _qga: GuestAgent | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_s(self, seconds: float) -> float:
        """A wait on this guest sized for an idle host, stretched for its accelerator."""
        return seconds * slack(self.accel)

    def product_env(self) -> dict[str, str]:
        """The environment freezeframe under test needs to wait long enough on this VM."""
        return {TIMEOUT_ENV: f"{TCG_PRODUCT_TIMEOUT_S:g}"} if self.accel == "tcg" else {}

    def qmp(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Runs a QMP command on the tests' own monitor and returns its ``return``."""
        if self._qmp is None:
            self._qmp = Qmp(str(self.test_qmp_socket), self.wait_s(30.0))
        return self._qmp.execute(command, arguments)

    def qga(
        self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 30.0
    ) -> Any:
        """Runs a guest-agent command and returns its ``return`` (``timeout``: ``wait_s``)."""
        return self.agent(timeout).execute(command, arguments, self.wait_s(timeout))

    def agent(self, timeout: float = 30.0) -> GuestAgent:
        """The tests' connection to the guest agent (opened on first use)."""
        if self._qga is None:
            self._qga = GuestAgent(str(self.qga_socket), self.wait_s(timeout))
        return self._qga

    def guest_exec(self, argv: Sequence[str], timeout: float = 30.0) -> GuestExec:
        """Runs a program in the guest through the agent and waits for it (``timeout``:
        ``wait_s``)."""
        started = self.qga(
            "guest-exec", {"path": argv[0], "arg": list(argv[1:]), "capture-output": True}
        )
        timeout = self.wait_s(timeout)
        deadline = time.monotonic() + timeout
        while True:
            status = self.qga("guest-exec-status", {"pid": started["pid"]})
            if status["exited"]:
                return GuestExec(
                    status.get("exitcode", -1),
                    base64.b64decode(status.get("out-data", "")),
                    base64.b64decode(status.get("err-data", "")),
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"guest-exec {argv} still running after {timeout} s")
            time.sleep(0.02)

    def read_guest_file(self, path: str) -> bytes:
        """A guest file's content, read with guest-file-open/read/close."""
        data = self.agent().read_file(path, limit=1 << 30)
        if data is None:
            raise QmpError(f"guest agent: cannot open {path} in the guest")
        return data

    def commit(self) -> int:
        """The log length DEPENDENT_WRITES has committed so far (0 before the first)."""
        text = self.guest_exec(["/bin/sh", "-c", "cat /mnt/b/b.commit 2>/dev/null || echo 0"])
        return int(text.stdout.strip() or b"0")

    def serial_text(self) -> str:
        return self.serial_log.read_text(errors="replace") if self.serial_log.exists() else ""

    def release_agent(self) -> None:
        """Lets go of the agent: its socket serves one client at a time (e.g. freezeframe)."""
        if self._qga is not None:
            with contextlib.suppress(OSError):
                self._qga.close()
            self._qga = None

    def close_clients(self) -> None:
        for client in (self._qmp, self._qga):
            if client is not None:
                with contextlib.suppress(OSError):
                    client.close()
        self._qmp = self._qga = None


_KVM_VERDICT: dict[str, bool] = {}  # "kvm": whether it booted, decided by the first VM


def _kvm_usable() -> bool:
    if os.environ.get("FREEZEFRAME_LAB_ACCEL") in ("tcg", "kvm"):
        return os.environ["FREEZEFRAME_LAB_ACCEL"] == "kvm"
    if "kvm" in _KVM_VERDICT:
        return _KVM_VERDICT["kvm"]
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError:
        return False
    return True


def _qemu_argv(
    *,
    accel: str,
    kernel: GuestKernel,
    initramfs: Path,
    disks: Sequence[Path],
    fmt: str,
    memory_mib: int,
    sockets: Path,
    serial_log: Path,
    extra_args: Sequence[str] = (),
) -> list[str]:
    argv = [
        "qemu-system-x86_64",
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-no-reboot",  # a guest that panics or gives up ends qemu, so a failed boot is quick
        "-machine", "q35",
        "-accel", "kvm" if accel == "kvm" else "tcg,thread=multi",
        "-cpu", "max",
        "-smp", "2",
        "-m", str(memory_mib),
        "-kernel", str(kernel.vmlinux or kernel.vmlinuz),
        "-initrd", str(initramfs),
        "-append", KERNEL_APPEND,
        "-serial", f"file:{serial_log}",
        "-qmp", f"unix:{sockets / 'qmp.sock'},server=on,wait=off",
        "-qmp", f"unix:{sockets / 'test-qmp.sock'},server=on,wait=off",
        "-chardev", f"socket,id=qga0,path={sockets / 'qga.sock'},server=on,wait=off",
        "-device", "virtio-serial-pci,id=virtio-serial0",
        "-device", f"virtserialport,chardev=qga0,name={AGENT_PORT_NAME},id=qga-port",
    ]  # fmt: skip
    qboot = Path("/usr/share/qemu/qboot.rom")
    if qboot.exists():  # a firmware that just jumps to the kernel: a second faster than SeaBIOS
        argv += ["-bios", str(qboot)]
    for index, disk in enumerate(disks):
        argv += [
            "-blockdev",
            f"driver=file,node-name=disk{index}-file,filename={disk}",
            "-blockdev",
            f"driver={fmt},node-name=disk{index},file=disk{index}-file",
            "-device",
            f"virtio-blk-pci,drive=disk{index},id=vd{'abcdefgh'[index]}",
        ]
    return argv + list(extra_args)


def _boot(
    *,
    accel: str,
    argv: list[str],
    sockets: Path,
    serial_log: Path,
    stderr_log: Path,
    deadline: float,
    give_up_on_stall: bool = False,
) -> tuple[subprocess.Popen[bytes], float]:
    """Starts qemu and waits for the ready marker and the agent; the process and boot time."""
    serial_log.unlink(missing_ok=True)
    started = time.monotonic()
    with stderr_log.open("ab") as err:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    try:
        while True:
            text = serial_log.read_text(errors="replace") if serial_log.exists() else ""
            if READY_MARKER in text:
                break
            if FAILED_MARKER in text or process.poll() is not None:
                raise RuntimeError(
                    f"the {accel} guest did not boot:\n{text[-3000:]}\n"
                    f"{stderr_log.read_text(errors='replace')[-2000:]}"
                )
            if give_up_on_stall and text.count(STALL_MARKER) >= 2:
                raise StalledBoot(f"the {accel} guest stalled while booting:\n{text[-3000:]}")
            if time.monotonic() > started + deadline:
                raise TimeoutError(
                    f"the {accel} guest did not boot in {deadline} s:\n{text[-3000:]}"
                )
            time.sleep(0.05)
        while True:  # the agent answers once it opened its port
            try:
                with GuestAgent(str(sockets / "qga.sock"), 2.0 * slack(accel)) as agent:
                    agent.execute("guest-ping", timeout_s=5.0 * slack(accel))
                break
            except (OSError, TimeoutError, ConnectionError, QmpError):
                if time.monotonic() > started + deadline or process.poll() is not None:
                    raise
                time.sleep(0.1)
        return process, time.monotonic() - started
    except BaseException:
        _stop(process, None)
        raise


def _boot_retrying_stalls(
    *,
    accel: str,
    argv: list[str],
    sockets: Path,
    serial_log: Path,
    stderr_log: Path,
    deadline: float,
) -> tuple[subprocess.Popen[bytes], float]:
    """``_boot``, booting a TCG guest again (up to ``TCG_BOOT_ATTEMPTS``) when its kernel stalls."""
    attempts = TCG_BOOT_ATTEMPTS if accel == "tcg" else 1
    for attempt in range(1, attempts + 1):
        try:
            return _boot(
                accel=accel,
                argv=argv,
                sockets=sockets,
                serial_log=serial_log,
                stderr_log=stderr_log,
                deadline=deadline,
                give_up_on_stall=attempt < attempts,
            )
        except StalledBoot:
            if attempt == attempts:
                raise
            print(f"vm lab: the {accel} guest stalled; boot {attempt + 1}", file=sys.stderr)
            for leftover in ("qmp.sock", "test-qmp.sock", "qga.sock"):
                (sockets / leftover).unlink(missing_ok=True)
    raise AssertionError("unreachable")


def _stop(process: subprocess.Popen[bytes], qmp: Qmp | None) -> None:
    """``quit`` through QMP if we can, then kill; always reaps the process."""
    if process.poll() is None and qmp is not None:
        with contextlib.suppress(OSError, QmpError, TimeoutError, ConnectionError):
            qmp.execute("quit")
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
    if process.poll() is None:
        process.kill()
    process.wait()


@contextlib.contextmanager
def running_vm(
    workdir: Path,
    disks: Sequence[Path],
    workload: str = DEPENDENT_WRITES,
    *,
    memory_mib: int = 512,
    fmt: str | None = None,
    boot_timeout: float = 120.0,
    initramfs: Path | None = None,
    extra_args: Sequence[str] = (),
) -> Iterator[Vm]:
    """Boots the lab guest on ``disks`` (vda, vdb) and stops it (QMP quit, then kill) on exit.

    ``initramfs``: one built by ``guest_initramfs`` with more options (``workload`` is then
    ignored); ``extra_args``: appended to qemu's command line (more devices); ``boot_timeout``:
    sized for an idle host, stretched by ``slack`` under TCG.

    Tries KVM first when /dev/kvm opens (with a short boot deadline, since a nested KVM can
    hang rather than fail), then TCG; the first VM's verdict holds for the whole process.
    """
    _which("qemu-system-x86_64")
    fmt = fmt or ("qcow2" if Path(disks[0]).suffix == ".qcow2" else "raw")
    kernel = guest_kernel()
    initramfs = initramfs or guest_initramfs(workload)
    workdir.mkdir(parents=True, exist_ok=True)
    serial_log = workdir / "serial.log"
    stderr_log = workdir / "qemu.log"
    sockets = Path(tempfile.mkdtemp(prefix="fflab-", dir="/tmp"))  # unix paths stay short
    process: subprocess.Popen[bytes] | None = None
    vm: Vm | None = None
    try:
        accels = (["kvm"] if _kvm_usable() else []) + ["tcg"]
        if os.environ.get("FREEZEFRAME_LAB_ACCEL") == "kvm":
            accels = ["kvm"]
        for accel in accels:
            argv = _qemu_argv(
                accel=accel,
                kernel=kernel,
                initramfs=initramfs,
                disks=disks,
                fmt=fmt,
                memory_mib=memory_mib,
                sockets=sockets,
                serial_log=serial_log,
                extra_args=extra_args,
            )
            last = accel == accels[-1]
            try:
                process, seconds = _boot_retrying_stalls(
                    accel=accel,
                    argv=argv,
                    sockets=sockets,
                    serial_log=serial_log,
                    stderr_log=stderr_log,
                    deadline=boot_timeout * slack(accel) if last else 30.0,
                )
            except (RuntimeError, TimeoutError, OSError):
                if accel == "kvm":
                    _KVM_VERDICT["kvm"] = False
                if last:
                    raise
                continue
            if accel == "kvm":
                _KVM_VERDICT["kvm"] = True
            break
        assert process is not None
        vm = Vm(
            process=process,
            accel=accel,
            boot_seconds=seconds,
            socket_dir=sockets,
            qmp_socket=sockets / "qmp.sock",
            test_qmp_socket=sockets / "test-qmp.sock",
            qga_socket=sockets / "qga.sock",
            serial_log=serial_log,
            disks=[Path(d) for d in disks],
            disk_format=fmt,
            drive_ids=[f"vd{'abcdefgh'[i]}" for i in range(len(disks))],
            node_names=[f"disk{i}" for i in range(len(disks))],
            file_node_names=[f"disk{i}-file" for i in range(len(disks))],
        )
        yield vm
    finally:
        if process is not None:
            qmp = None
            if vm is not None:
                with contextlib.suppress(OSError, QmpError, TimeoutError, ConnectionError):
                    vm.qmp("query-status")  # connects if no test did
                qmp = vm._qmp
            _stop(process, qmp)
            if vm is not None:
                vm.close_clients()
        shutil.rmtree(sockets, ignore_errors=True)
