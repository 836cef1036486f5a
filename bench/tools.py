"""The three backup tools behind one small interface: argv for each step, env, version."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
# The project's venv; else the one running the benchmark (a worktree using another's venv,
# with the code under test first on PYTHONPATH).
FREEZEFRAME = next(
    (
        p
        for p in (
            PROJECT / ".venv" / "bin" / "freezeframe",
            Path(sys.executable).parent / "freezeframe",
        )
        if p.exists()
    ),
    PROJECT / ".venv" / "bin" / "freezeframe",
)
PASSWORD = "bench-password-not-secret"
APT_PACKAGES = {"restic": "restic", "borg": "borgbackup"}


@dataclass(frozen=True)
class Step:
    """One command to run: argv plus the directory to run it in (borg extracts into its cwd)."""

    argv: list[str]
    cwd: Path | None = None


class Tool:
    """Base: each tool gets its own HOME/XDG dirs so caches and configs never leak between runs."""

    name = "tool"
    note = ""

    def base_env(self, home: Path) -> dict[str, str]:
        """A minimal environment: no inherited RESTIC_*/BORG_*/FREEZEFRAME_* surprises."""
        return {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": str(home),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_DATA_HOME": str(home / ".local" / "share"),
            "TMPDIR": str(home / "tmp"),
        }

    def env(self, home: Path, repo: Path | str) -> dict[str, str]:
        """Environment for every step of this tool."""
        return self.base_env(home)

    def available(self) -> bool:
        """Whether the tool can run at all."""
        raise NotImplementedError

    def version(self) -> str:
        """Version string for the report."""
        raise NotImplementedError

    def init(self, repo: Path | str) -> Step:
        """Create a fresh repository."""
        raise NotImplementedError

    def backup(self, repo: Path | str, src: Path, n: int) -> Step:
        """The n-th backup of src (n gives borg its unique archive name)."""
        raise NotImplementedError

    def restore(self, repo: Path | str, target: Path, n: int) -> Step:
        """Restore the latest (n-th) backup into target, as target/<absolute source path>."""
        raise NotImplementedError


def _first_line(argv: list[str]) -> str:
    """First output line of a version command, or the error."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else f"exit {out.returncode}"


class Restic(Tool):
    """restic, repository format v2 so it compresses (compression=auto) like the others."""

    name = "restic"
    note = "restic init --repository-version 2 (compression auto)"

    def env(self, home: Path, repo: Path | str) -> dict[str, str]:
        """Password and repo through restic's own variables."""
        return self.base_env(home) | {"RESTIC_PASSWORD": PASSWORD, "RESTIC_REPOSITORY": str(repo)}

    def available(self) -> bool:
        """restic on PATH."""
        return shutil.which("restic") is not None

    def version(self) -> str:
        """`restic version`."""
        return _first_line(["restic", "version"])

    def init(self, repo: Path | str) -> Step:
        """v2 repository: compression is only available from format 2."""
        return Step(["restic", "init", "--repository-version", "2"])

    def backup(self, repo: Path | str, src: Path, n: int) -> Step:
        """restic picks the parent snapshot (same host and paths) itself."""
        return Step(["restic", "backup", str(src)])

    def restore(self, repo: Path | str, target: Path, n: int) -> Step:
        """Restores the full absolute path under target."""
        return Step(["restic", "restore", "latest", "--target", str(target)])


class Borg(Tool):
    """borg 1.2 with repokey-blake2 and zstd,3 compression."""

    name = "borg"
    note = "borg init --encryption=repokey-blake2; borg create --compression zstd,3"

    def env(self, home: Path, repo: Path | str) -> dict[str, str]:
        """Passphrase plus the answers borg would otherwise ask for interactively."""
        return self.base_env(home) | {
            "BORG_PASSPHRASE": PASSWORD,
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
        }

    def available(self) -> bool:
        """borg on PATH."""
        return shutil.which("borg") is not None

    def version(self) -> str:
        """`borg --version`."""
        return _first_line(["borg", "--version"])

    def init(self, repo: Path | str) -> Step:
        """Authenticated encryption, key stored in the repo (like the other two)."""
        return Step(["borg", "init", "--encryption=repokey-blake2", str(repo)])

    def backup(self, repo: Path | str, src: Path, n: int) -> Step:
        """Each archive needs a unique name; --stats only adds a summary to the step's log."""
        argv = ["borg", "create", "--stats", "--compression", "zstd,3"]
        return Step([*argv, f"{repo}::bench-{n}", str(src)])

    def restore(self, repo: Path | str, target: Path, n: int) -> Step:
        """borg extracts into the current directory (leading '/' stripped from stored paths)."""
        return Step(["borg", "extract", f"{repo}::bench-{n}"], cwd=target)


class Freezeframe(Tool):
    """freezeframe from the project venv, default Argon2 parameters (no test shortcuts)."""

    name = "freezeframe"
    note = "freezeframe init with default Argon2 parameters; --no-progress"

    def env(self, home: Path, repo: Path | str) -> dict[str, str]:
        """Password via FREEZEFRAME_PASSWORD; XDG_CACHE_HOME (from base_env) holds its cache."""
        return self.base_env(home) | {"FREEZEFRAME_PASSWORD": PASSWORD}

    def _cmd(self, repo: Path | str, *args: str) -> list[str]:
        """Global options go before the command."""
        return [str(FREEZEFRAME), "--repo", str(repo), "--no-progress", *args]

    def available(self) -> bool:
        """The console script exists and `--help` succeeds (the CLI may still be in progress)."""
        if not FREEZEFRAME.exists():
            return False
        try:
            out = subprocess.run(
                [str(FREEZEFRAME), "--help"], capture_output=True, check=False, timeout=60
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return out.returncode == 0

    def version(self) -> str:
        """Package version plus the git commit (and whether the tree is dirty)."""
        ver = _first_line([str(FREEZEFRAME), "--version"])
        commit = _first_line(["git", "-C", str(PROJECT), "rev-parse", "--short", "HEAD"])
        dirty = _first_line(["git", "-C", str(PROJECT), "status", "--porcelain", "--", "src"])
        return f"{ver} (git {commit}{', src dirty' if dirty and 'exit' not in dirty else ''})"

    def init(self, repo: Path | str) -> Step:
        """Default key-derivation cost: what a user gets."""
        return Step(self._cmd(repo, "init"))

    def backup(self, repo: Path | str, src: Path, n: int) -> Step:
        """Parent detection is freezeframe's own business."""
        return Step(self._cmd(repo, "backup", str(src)))

    def restore(self, repo: Path | str, target: Path, n: int) -> Step:
        """Files land at target/<original absolute path>."""
        return Step(self._cmd(repo, "restore", "latest", "--target", str(target)))


ALL_TOOLS: dict[str, type[Tool]] = {"freezeframe": Freezeframe, "restic": Restic, "borg": Borg}


def ensure_installed(names: list[str]) -> list[str]:
    """apt-get install restic/borgbackup when missing (borg from PyPI does not build here)."""
    wanted = [APT_PACKAGES[n] for n in names if n in APT_PACKAGES and shutil.which(n) is None]
    if not wanted:
        return []
    print(f"installing from apt: {' '.join(wanted)}", flush=True)
    cmd = ["apt-get", "install", "-y", *wanted]
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(cmd, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=False)
        subprocess.run(cmd, env=env, check=False)
    return wanted
