"""Scripts: an executable run with the argument ``freeze`` before the snapshots and ``thaw``
after them; a hooks directory stands for its executables in name order, as run-parts picks
them. The contract (docs/consistency.md): environment FREEZEFRAME_PHASE (freeze or thaw),
FREEZEFRAME_RUN_ID, FREEZEFRAME_LEVEL, FREEZEFRAME_VOLUMES (mount points, colon separated) and
FREEZEFRAME_PATHS (the paths backed up, one per line);
a timeout per run; a non-zero exit or a timeout at freeze aborts the capture and thaws whatever
was frozen; the thaw side always runs, and if freezeframe dies while frozen the watchdog runs it.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping
from typing import Any

from freezeframe.errors import QuiesceError

OUTPUT_TAIL = 2000
HOOKS_DIR_ENV = "FREEZEFRAME_HOOKS_DIR"
DEFAULT_HOOKS_DIR = "/etc/freezeframe/hooks.d"  # what --quiesce auto runs, when it exists
SKIPPED_SUFFIXES = ("~", ".dpkg-old", ".dpkg-new", ".dpkg-dist", ".rpmnew", ".rpmsave", ".disabled")


def hooks_dir() -> str:
    return os.environ.get(HOOKS_DIR_ENV) or DEFAULT_HOOKS_DIR


def hooks_in(directory: str) -> list[str]:
    """The executables of a hooks directory in name order; hidden files, editor backups and
    package managers' leftovers are not hooks."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise QuiesceError(f"script: cannot list {directory}: {exc.strerror}") from exc
    return [
        os.path.join(directory, name)
        for name in names
        if not name.startswith(".")
        and not name.endswith(SKIPPED_SUFFIXES)
        and os.path.isfile(os.path.join(directory, name))
        and os.access(os.path.join(directory, name), os.X_OK)
    ]


def expand_directories(specs: list[str]) -> list[str]:
    """``script:DIR`` replaced by one ``script:`` per hook in it, in order."""
    expanded = []
    for spec in specs:
        kind, _, target = spec.partition(":")
        if kind == "script" and os.path.isdir(target):
            expanded += [f"script:{hook}" for hook in hooks_in(os.path.abspath(target))]
        else:
            expanded.append(spec)
    return expanded


class ScriptQuiescer:
    kind = "script"

    def __init__(self, target: str, environment: dict[str, str] | None = None) -> None:
        self.target = os.path.abspath(target)
        self.environment = dict(environment or {})

    def prepare(self, timeout_s: float, context: Mapping[str, str]) -> None:
        self.environment.update(context)
        if not os.path.isfile(self.target) or not os.access(self.target, os.X_OK):
            raise QuiesceError(f"script: {self.target} is not an executable file")

    def freeze(self, timeout_s: float, hold_s: float) -> dict[str, Any]:
        return self._run("freeze", timeout_s)

    def thaw(self, timeout_s: float) -> None:
        self._run("thaw", timeout_s)

    def undo_on_crash(self) -> list[str] | None:
        return [self.target, "thaw"]

    def env(self, phase: str) -> dict[str, str]:
        return {**os.environ, **self.environment, "FREEZEFRAME_PHASE": phase}

    def _run(self, phase: str, timeout_s: float) -> dict[str, Any]:
        started = time.monotonic()
        try:
            done = subprocess.run(
                [self.target, phase],
                env=self.env(phase),
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise QuiesceError(
                f"script {self.target} {phase} did not finish within {timeout_s:g} s"
            ) from exc
        except OSError as exc:
            raise QuiesceError(f"script {self.target} {phase}: {exc.strerror}") from exc
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip()[-OUTPUT_TAIL:]
            raise QuiesceError(
                f"script {self.target} {phase} exited {done.returncode}"
                + (f": {tail.splitlines()[-1]}" if tail else "")
            )
        return {"exit": 0, "ms": round((time.monotonic() - started) * 1000, 3)}
