"""Deterministic benchmark datasets: generation, caching, the 2 % modification, and manifests.

Every byte comes from a ``random.Random`` seeded with the dataset's name, so two runs (and two
machines with the same Python) produce the same tree, and numbers stay comparable over time.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# Bump when the generator changes, so cached datasets are rebuilt instead of silently reused.
GENERATOR_VERSION = 3
KIB = 1024
MIB = 1024 * KIB
WRITE_CHUNK = 4 * MIB
MODIFY_FRACTION = 0.02

# fmt: off
_WORDS = (
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa", "lambda", "sigma",
    "omega", "request", "response", "session", "user", "account", "order", "invoice", "payment",
    "retry", "timeout", "connect", "disconnect", "cache", "miss", "hit", "flush", "commit",
    "rollback", "snapshot", "volume", "chunk", "index", "pack", "blob", "tree", "worker", "queue",
    "job", "scheduled", "started", "finished", "failed", "ok", "warning", "error", "upstream",
    "downstream", "latency", "bytes",
)
# fmt: on
_LEVELS = ("INFO", "INFO", "INFO", "DEBUG", "DEBUG", "WARN", "ERROR")
_COMPONENTS = ("http", "db", "auth", "scheduler", "storage", "api", "mailer", "billing")
_CITIES = ("Berlin", "Lisbon", "Osaka", "Quito", "Nairobi", "Oslo", "Perth", "Austin", "Lyon")
_CODE = (
    "def {a}_{b}(self, {c}: int, {d}: str | None = None) -> dict[str, int]:",
    '    """Return the {a} of {b} for {c}."""',
    "    if {c} > {n}:",
    "        raise ValueError(f'{a} {b} out of range: {{{c}}}')",
    "    {d} = self._{a}.get({c}, {n})",
    "    for {e} in range({n}):",
    "        {a}_total += {e} * {n}",
    "    return {{'{a}': {c}, '{b}': {n}}}",
    "",
    "class {A}{B}(Base{A}):",
    "    {a}: int = {n}",
    "import {a}.{b} as {c}",
    "# TODO({d}): handle {a} when {b} is {c}",
)


@dataclass(frozen=True)
class Dataset:
    """A cached dataset: its tree, the stamp that says it is complete, and pristine copies."""

    name: str
    root: Path
    stamp: Path
    orig: Path
    files: int
    bytes: int

    def seed(self) -> str:
        """Seed string shared by generation and modification, tied to name and generator."""
        return f"freezeframe-bench-v{GENERATOR_VERSION}:{self.name}"


# ---------------------------------------------------------------------------------------------
# Content generators


class _Pools:
    """Pre-generated message/name/code fragments (fixed seed): per-line work stays cheap."""

    _cache: dict[str, list[str]] | None = None

    @classmethod
    def get(cls) -> dict[str, list[str]]:
        """Build the pools once; the seed is fixed so datasets stay deterministic."""
        if cls._cache is None:
            rng = random.Random("freezeframe-bench-pools")
            words, choice = _WORDS, rng.choice
            msgs = [" ".join(rng.choices(words, k=rng.randint(3, 9))) for _ in range(8192)]
            names = [f"{choice(words)}_{choice(words)}" for _ in range(4096)]
            code = []
            for _ in range(16384):
                a, b, c, d, e = (choice(words) for _ in range(5))
                tmpl = choice(_CODE).replace("%", "%%").replace("{n}", "%d")
                code.append(tmpl.format(a=a, b=b, c=c, d=d, e=e, A=a.title(), B=b.title()))
            cls._cache = {"msg": msgs, "name": names, "code": code}
        return cls._cache


def _log_lines(rng: random.Random, count: int, clock: list[int]) -> list[str]:
    """Log-like lines with a monotonically advancing clock, like a real application log."""
    out, ms = [], clock[0]
    for msg in rng.choices(_Pools.get()["msg"], k=count):
        r = rng.getrandbits(64)
        ms += r & 2047
        sec, frac = divmod(ms, 1000)
        mins, sec = divmod(sec, 60)
        hrs, mins = divmod(mins, 60)
        day, hrs = divmod(hrs, 24)
        out.append(
            f"2024-03-{1 + day % 28:02d}T{hrs:02d}:{mins:02d}:{sec:02d}.{frac:03d}Z "
            f"{_LEVELS[(r >> 11) % 7]} [{_COMPONENTS[(r >> 14) & 7]}] {msg} "
            f"req={(r >> 17) & 0xFFFFFFFF:08x} dur={(r >> 49) % 4000}ms\n"
        )
    clock[0] = ms
    return out


def _csv_lines(rng: random.Random, count: int, clock: list[int]) -> list[str]:
    """CSV rows: ids, names, cities, amounts, dates — numeric-heavy, moderately compressible."""
    out, row = [], clock[0]
    for name in rng.choices(_Pools.get()["name"], k=count):
        r = rng.getrandbits(64)
        row += 1
        out.append(
            f"{row},{name},{_CITIES[(r & 15) % 9]},{((r >> 4) % 10**7) / 100:.2f},"
            f"2023-{1 + (r >> 28) % 12:02d}-{1 + (r >> 32) % 28:02d},{(r >> 37) & 1}\n"
        )
    clock[0] = row
    return out


def _code_lines(rng: random.Random, count: int, clock: list[int]) -> list[str]:
    """Source-like lines from templates with random identifiers and numbers."""
    lines = rng.choices(_Pools.get()["code"], k=count)
    return [line % (rng.getrandbits(14),) + "\n" if "%d" in line else line + "\n" for line in lines]


_TEXT_KINDS: dict[str, Callable[[random.Random, int, list[int]], list[str]]] = {
    "log": _log_lines,
    "csv": _csv_lines,
    "py": _code_lines,
}


def text_bytes(rng: random.Random, kind: str, size: int) -> Iterator[bytes]:
    """Yield exactly ``size`` bytes of text of one kind, in blocks, to bound memory."""
    gen = _TEXT_KINDS[kind]
    clock = [rng.randint(0, 10**9)]
    left = size
    while left > 0:
        # ~32 bytes is the shortest average line: never generate much more than is needed.
        block = "".join(gen(rng, min(2048, left // 32 + 4), clock)).encode()[:left]
        left -= len(block)
        yield block


def random_bytes(rng: random.Random, size: int) -> Iterator[bytes]:
    """Yield exactly ``size`` incompressible bytes, in blocks."""
    left = size
    while left > 0:
        n = min(left, WRITE_CHUNK)
        left -= n
        yield rng.randbytes(n)


def _write(path: Path, blocks: Iterator[bytes]) -> int:
    """Write blocks to a new file and return its size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    total = 0
    with path.open("wb") as f:
        for block in blocks:
            f.write(block)
            total += len(block)
    return total


def _log_uniform(rng: random.Random, low: int, high: int) -> int:
    """Size drawn log-uniformly: many small files, a few large ones, like real trees."""
    high = max(high, low)
    return int(math.exp(rng.uniform(math.log(low), math.log(high))))


# ---------------------------------------------------------------------------------------------
# The mixed dataset


def _gen_text(rng: random.Random, root: Path, budget: int) -> list[Path]:
    """~35 %: logs, CSV and source files of log-uniform size."""
    made: list[Path] = []
    high = min(16 * MIB, max(64 * KIB, budget // 8))
    while budget > 0:
        kind = rng.choice(("log", "log", "csv", "py"))
        size = min(budget, _log_uniform(rng, 16 * KIB, high))
        sub = {"log": "logs", "csv": "tables", "py": f"src/pkg{len(made) % 7}"}[kind]
        path = root / "text" / sub / f"{kind}-{len(made):05d}.{kind}"
        budget -= _write(path, text_bytes(rng, kind, size))
        made.append(path)
    return made


def _gen_binary(rng: random.Random, root: Path, budget: int) -> list[Path]:
    """~35 %: random (incompressible) blobs of log-uniform size."""
    made: list[Path] = []
    high = min(64 * MIB, max(256 * KIB, budget // 6))
    while budget > 0:
        size = min(budget, _log_uniform(rng, 64 * KIB, high))
        path = root / "binary" / f"blob-{len(made):05d}.bin"
        budget -= _write(path, random_bytes(rng, size))
        made.append(path)
    return made


def _small_content(rng: random.Random, size: int) -> Iterator[bytes]:
    """Small-file content: mostly text (config/source-like), some binary."""
    if rng.random() < 0.7:
        return text_bytes(rng, rng.choice(("py", "csv", "log")), size)
    return random_bytes(rng, size)


def _gen_small(rng: random.Random, root: Path, budget: int, low: int, high: int) -> int:
    """Thousands of small files (log-uniform size), 100 per directory, two levels deep."""
    count = 0
    while budget > 0:
        size = min(budget, _log_uniform(rng, low, high))
        path = root / f"d{count // 10000:03d}" / f"e{(count // 100) % 100:02d}" / f"f{count:07d}"
        budget -= _write(path, _small_content(rng, size))
        count += 1
    return count


def _shifted(rng: random.Random, data: bytes) -> bytes:
    """A copy with a few small insertions: shared regions at shifted offsets (tests CDC)."""
    parts, pos = [], 0
    for cut in sorted(rng.randrange(len(data)) for _ in range(rng.randint(1, 4))):
        parts += [data[pos:cut], rng.randbytes(rng.randint(1, 200))]
        pos = cut
    parts.append(data[pos:])
    return b"".join(parts)


def _spliced(rng: random.Random, a: bytes, b: bytes) -> bytes:
    """Head of one file + new bytes + tail of another: large regions shared with two files."""
    head = a[: rng.randint(len(a) // 4, len(a))]
    tail = b[rng.randint(0, len(b) * 3 // 4) :]
    return head + rng.randbytes(rng.randint(4 * KIB, 64 * KIB)) + tail


def _gen_dups(rng: random.Random, root: Path, sources: list[Path], budget: int) -> None:
    """~15 %: exact copies, shifted copies and spliced files built from earlier files."""
    count = 0
    while budget > 0 and sources:
        src = rng.choice(sources)
        mode = rng.choice(("copy", "copy", "shifted", "spliced"))
        dst = root / "dup" / mode / f"{count:05d}-{src.name}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        if mode == "copy":
            shutil.copyfile(src, dst)
        elif mode == "shifted":
            dst.write_bytes(_shifted(rng, src.read_bytes()))
        else:
            dst.write_bytes(_spliced(rng, src.read_bytes(), rng.choice(sources).read_bytes()))
        budget -= dst.stat().st_size
        count += 1


def _generate_mixed(root: Path, seed: str, size: int) -> None:
    """35 % text, 35 % random binary, 15 % small files, 15 % duplicated content."""
    rng = random.Random(seed)
    text = _gen_text(rng, root, int(size * 0.35))
    binary = _gen_binary(rng, root, int(size * 0.35))
    _gen_small(rng, root / "small", int(size * 0.15), 1 * KIB, 64 * KIB)
    # Duplicate only files up to budget/4 so a single huge copy cannot eat the whole share.
    cap = max(int(size * 0.15) // 4, 64 * KIB)
    sources = [p for p in text + binary if p.stat().st_size <= cap]
    _gen_dups(rng, root, sources, size - _tree_bytes(root))


def _generate_small_files(root: Path, seed: str, count: int) -> None:
    """Exactly ``count`` files of 1-8 KiB: the metadata-bound case."""
    rng = random.Random(seed)
    for i in range(count):
        size = rng.randint(1 * KIB, 8 * KIB)
        path = root / f"d{i // 10000:03d}" / f"e{(i // 100) % 100:02d}" / f"f{i:07d}"
        _write(path, _small_content(rng, size))


# ---------------------------------------------------------------------------------------------
# Cache, modification, manifests


def _tree_files(root: Path) -> list[Path]:
    """All regular files under root, in a stable (sorted) order so choices are deterministic."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        out += [Path(dirpath) / f for f in sorted(filenames)]
    return out


def _tree_bytes(root: Path) -> int:
    """Total size of the regular files under root."""
    return sum(p.stat().st_size for p in _tree_files(root))


def _modify_plan(ds_seed: str, files: list[Path]) -> list[Path]:
    """The 2 % of files the modification touches (at least one), chosen by the seed."""
    rng = random.Random(ds_seed + ":modify-plan")
    k = max(1, round(len(files) * MODIFY_FRACTION))
    return sorted(rng.sample(files, k))


def _ensure(name: str, work: Path, build: Callable[[Path, str], None]) -> Dataset:
    """Return the cached dataset, building it (and its pristine copies) when the stamp is absent."""
    base = work / "datasets"
    root, stamp, orig = base / name, base / f"{name}.stamp.json", base / f"{name}.orig"
    seed = f"freezeframe-bench-v{GENERATOR_VERSION}:{name}"
    if stamp.exists():
        info = json.loads(stamp.read_text())
        if info.get("generator") == GENERATOR_VERSION and root.is_dir():
            return Dataset(name, root, stamp, orig, info["files"], info["bytes"])
        stamp.unlink()
    for p in (root, orig):
        if p.exists():
            shutil.rmtree(p)
    print(f"generating dataset {name} in {root} ...", flush=True)
    root.mkdir(parents=True)
    build(root, seed)
    files = _tree_files(root)
    for path in _modify_plan(seed, files):  # pristine copies, so every tool starts equal
        dst = orig / path.relative_to(root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dst)
    total = sum(p.stat().st_size for p in files)
    info = {"generator": GENERATOR_VERSION, "name": name, "files": len(files), "bytes": total}
    stamp.write_text(json.dumps(info, indent=1) + "\n")
    return Dataset(name, root, stamp, orig, len(files), total)


def ensure_mixed(work: Path, size: int) -> Dataset:
    """The mixed dataset of about ``size`` bytes (cached)."""
    name = f"mixed-{format_size(size)}"
    return _ensure(name, work, lambda root, seed: _generate_mixed(root, seed, size))


def ensure_small_files(work: Path, count: int) -> Dataset:
    """The dataset of exactly ``count`` small files (cached)."""
    name = f"small-{count}"
    return _ensure(name, work, lambda root, seed: _generate_small_files(root, seed, count))


def reset(ds: Dataset) -> None:
    """Undo a previous modification (copy pristine files back) so each tool sees the same tree."""
    for dirpath, _dirs, filenames in os.walk(ds.orig):
        for fname in filenames:
            src = Path(dirpath) / fname
            shutil.copy2(src, ds.root / src.relative_to(ds.orig))


def modify(ds: Dataset) -> int:
    """Append to or overwrite a region in 2 % of the files, identically for every tool."""
    targets = _modify_plan(ds.seed(), _tree_files(ds.root))
    rng = random.Random(ds.seed() + ":modify-data")
    for path in targets:
        size = path.stat().st_size
        if rng.random() < 0.5 or size == 0:
            with path.open("ab") as f:
                f.write(rng.randbytes(rng.randint(4 * KIB, 64 * KIB)))
        else:
            length = min(size, rng.randint(1 * KIB, 64 * KIB))
            offset = rng.randint(0, size - length)
            with path.open("r+b") as f:
                f.seek(offset)
                f.write(rng.randbytes(length))
    return len(targets)


def manifest(root: Path) -> dict[str, tuple[int, str]]:
    """Relative path -> (size, BLAKE2b digest) for every regular file: what a restore must match."""
    out: dict[str, tuple[int, str]] = {}
    for path in _tree_files(root):
        with path.open("rb") as f:
            digest = hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=20)).hexdigest()
        out[str(path.relative_to(root))] = (path.stat().st_size, digest)
    return out


def parse_size(text: str) -> int:
    """'256M' / '2G' / '512K' / '1.5G' -> bytes (binary units)."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": KIB, "M": MIB, "G": 1024 * MIB, "T": 1024 * 1024 * MIB}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def format_size(size: int) -> str:
    """Bytes -> the shortest exact '2G' / '256M' / '100K' label, for dataset names."""
    for unit, mult in (("G", 1024 * MIB), ("M", MIB), ("K", KIB)):
        if size % mult == 0:
            return f"{size // mult}{unit}"
    return str(size)
