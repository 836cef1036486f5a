"""What every snapshot provider offers: whether it can snapshot a volume, and if so a read-only
point-in-time view of it that it removes again, plus a way to find views left by crashed runs."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from typing import Protocol

from freezeframe.capture.volumes import Volume
from freezeframe.errors import FreezeframeError
from freezeframe.process import process_exists

LEFTOVER_PREFIX = "ff-"


@dataclass(frozen=True)
class ReadOnlyView:
    """A snapshot of ``volume``: ``root`` shows, read-only, what ``origin`` held at
    ``created_ns``; ``create_ms`` is how long taking it took."""

    provider: str
    volume: Volume
    origin: str
    root: str
    created_ns: int
    create_ms: float
    handle: str = ""  # provider-specific, e.g. the cloned image behind the mount at ``root``
    # How long the file system was frozen inside ``take``, when the provider froze it itself
    # and measured it (LVM: the origin's device-mapper suspend); None otherwise.
    window_ms: float | None = None

    def read_path(self, original: str) -> str:
        """Where ``original`` (a path under ``origin``) is found in the view."""
        relative = os.path.relpath(original, self.origin)
        return self.root if relative == "." else os.path.join(self.root, relative)


class SnapshotProvider(Protocol):
    name: str
    # Whether `filesystem` needs FIFREEZE around ``take`` (never for btrfs: a snapshot of a
    # frozen btrfs waits for the thaw).
    needs_freeze: bool
    # Whether ``take`` itself flushes and freezes the file system around the snapshot (LVM:
    # device-mapper's suspend with lockfs), so a snapshot it takes is at rest without more.
    freezes_itself: bool

    def unsupported_reason(self, volume: Volume) -> str | None:
        """None when this provider can snapshot ``volume``, else why not. Every volume is put
        to every provider (``registry.PROVIDERS``, in order; the first that can serves it), so
        a provider decides from the volume alone which it claims (its file system, its device)
        and says why it does not in words for `doctor` and the "no provider" reason."""

    def take(self, volume: Volume, run_id: str) -> ReadOnlyView:
        """Take the snapshot, atomically and fast: writers may be paused and the file system
        frozen meanwhile. Its name carries ``run_id`` so a crashed run's is recognisable."""

    def undo_argv(self, volume: Volume, run_id: str) -> list[str] | None:
        """A command the watchdog runs if ``take`` overruns the freeze cap or the run dies
        in it, to undo what a half-done ``take`` holds (a suspended device); None: nothing."""

    def expose(self, view: ReadOnlyView) -> None:
        """Make ``view.root`` readable (mount it...), after writers are resumed and thawed."""

    def confirm(self, view: ReadOnlyView) -> None:
        """Raise unless the view still shows its instant whole: called after it was read,
        before what was read is kept (a snapshot whose copy-on-write store overflowed is not)."""

    def facts(self, volume: Volume) -> dict[str, object]:
        """What `doctor` shows about the volume beyond yes or no (free space...)."""

    def remove(self, view: ReadOnlyView) -> None:
        """Delete the snapshot; removing one already gone is not an error."""

    def scratch_paths(self, view: ReadOnlyView) -> list[str]:
        """Where this provider keeps its snapshots: never backed up themselves."""

    def find_leftovers(self, volume: Volume) -> list[str]:
        """Snapshots on ``volume`` whose run is no longer alive."""

    def remove_leftover(self, path: str) -> None:
        """Delete a snapshot that ``find_leftovers`` returned."""


def new_run_id() -> str:
    """Unique per run, and naming the process, so leftovers of dead runs can be told apart."""
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{os.urandom(3).hex()}"


def run_is_alive(run_id: str) -> bool:
    """Whether the process named in a run id still exists (on this host)."""
    try:
        pid = int(run_id.split("-")[1])
    except (IndexError, ValueError):
        return False
    return process_exists(pid)


def run_tool(*argv: str, what: str = "") -> str:
    """Run a system tool (btrfs, losetup, mount...); its stdout, or one FreezeframeError naming
    ``what`` (default: the first two words) and the tool's last line of complaint."""
    what = what or " ".join(argv[:2])
    try:
        done = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120)
    except subprocess.CalledProcessError as exc:
        message = (exc.stderr or exc.stdout or "").strip().splitlines()
        raise FreezeframeError(f"{what} failed: {message[-1].strip() if message else exc}") from exc
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FreezeframeError(f"{what} failed: {exc}") from exc
    return done.stdout
