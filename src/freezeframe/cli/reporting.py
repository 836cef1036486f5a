"""The CLI's Reporter: warnings on stderr, each phase's progress redrawn on a terminal."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from freezeframe.backup.images import DiskProgress
from freezeframe.backup.progress import BackupProgress
from freezeframe.cli.output import Output, human_bytes, human_duration
from freezeframe.restore.restorer import RestoreProgress
from freezeframe.service.copy import CopyProgress
from freezeframe.service.reporter import PhaseCounter


class CliReporter:
    def __init__(self, out: Output) -> None:
        self.out = out

    def warn(self, message: str) -> None:
        self.out.warn(message)

    @contextmanager
    def phase(self, name: str, progress: object) -> Iterator[None]:
        render = _renderer(name, progress)
        if render is None:
            yield
            return
        with self.out.live(render):
            yield

    @property
    def wants_totals(self) -> bool:
        return self.out.show_progress


def _renderer(name: str, progress: object) -> Callable[[float], str] | None:
    if isinstance(progress, BackupProgress):
        return functools.partial(render_backup, progress)
    if isinstance(progress, DiskProgress):
        return functools.partial(render_disk, name.removeprefix("vm "), progress)
    if isinstance(progress, RestoreProgress):
        return functools.partial(render_restore, progress)
    if isinstance(progress, PhaseCounter):
        return functools.partial(render_steps, progress)
    if isinstance(progress, CopyProgress):
        return functools.partial(render_copy, progress)
    return None


def render_backup(p: BackupProgress, elapsed: float) -> str:
    rate = p.bytes_done / elapsed if elapsed > 0 else 0
    line = (
        f"[{human_duration(elapsed)}] {p.files_done} files, {human_bytes(p.bytes_done)}"
        f" ({human_bytes(rate)}/s), {human_bytes(p.bytes_added)} new"
    )
    if p.total_bytes:
        share = min(p.bytes_done / p.total_bytes, 1.0)
        line += f", {share:.0%} of {human_bytes(p.total_bytes)}"
        if p.scan_finished and rate > 0:
            line += f", ETA {human_duration((p.total_bytes - p.bytes_done) / rate)}"
    if p.errors:
        line += f", {p.errors} errors"
    return f"{line}\n{p.current_path[-100:]}"


def render_disk(name: str, p: DiskProgress, elapsed: float) -> str:
    """The progress line of one VM's backup."""
    rate = p.bytes_done / elapsed if elapsed > 0 else 0
    share = f", {p.bytes_done / p.bytes_total:.0%}" if p.bytes_total else ""
    return (
        f"[{human_duration(elapsed)}] VM {name}: read {human_bytes(p.bytes_done)} "
        f"({human_bytes(rate)}/s{share}), {human_bytes(p.bytes_added)} new"
    )


def render_restore(p: RestoreProgress, elapsed: float) -> str:
    rate = p.bytes_done / elapsed if elapsed > 0 else 0
    line = f"[{human_duration(elapsed)}] {p.files_done} files, {human_bytes(p.bytes_done)}"
    if p.total_bytes:
        line += f" of {human_bytes(p.total_bytes)} ({human_bytes(rate)}/s)"
        if rate > 0:
            line += f", ETA {human_duration((p.total_bytes - p.bytes_done) / rate)}"
    return line


def render_steps(counter: PhaseCounter, elapsed: float) -> str:
    """A repair's phase and how far it is."""
    phase, done, total = counter.state
    line = f"[{human_duration(elapsed)}] {phase}"
    if total:
        line += f" {done}/{total} ({done / total:.0%})"
    return line


def render_copy(p: CopyProgress, elapsed: float) -> str:
    """A copy's snapshots so far and what it added to the target."""
    rate = p.bytes_added / elapsed if elapsed > 0 else 0
    at = min(p.snapshots_done + 1, p.snapshots_total)
    return (
        f"[{human_duration(elapsed)}] snapshot {at}/{p.snapshots_total} "
        f"{p.current}: {p.blobs_added} blobs, {human_bytes(p.bytes_added)} added "
        f"({human_bytes(rate)}/s)"
    )
