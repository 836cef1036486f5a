"""The guest agent's fsfreeze hook: ``freeze`` holds the guest's applications, ``thaw`` lets go.

qemu-ga runs the hook with ``freeze`` before it freezes the guest's file systems and waits for
it to exit, then with ``thaw`` after the thaw. A hold must outlive the ``freeze`` process, so
that process forks a holder (its own session, stdio on /dev/null so the agent waits for nobody)
which prepares and freezes the quiescers, reports, then waits for ``thaw``'s SIGTERM. The
holder's deadline is its own: the capture layer's application hold thaws at the cap even if
the host never asks, and its watchdog runs the quiescers' undo commands if the holder dies.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import signal
import sys
import threading
import time
from typing import Any

from freezeframe import __version__
from freezeframe.errors import FreezeframeError, UsageError
from freezeframe.guest import protocol
from freezeframe.guest.config import GuestConfig, load
from freezeframe.levels import Level
from freezeframe.quiesce.base import IN_IMAGE_KEY, PATHS_KEY

READY = b"ready\n"
SETTLE_S = 5.0  # beyond the quiescers' own timeouts, for the holder to start and report


def config_path() -> str:
    return os.environ.get(protocol.CONFIG_ENV) or protocol.CONFIG_PATH


def freeze(directory: str, config_file: str) -> dict[str, Any]:
    """Take the host's request, if any, and hold the applications until ``thaw``; returns the
    state the host will read (``phase`` idle when the freeze was not freezeframe's)."""
    request = _take_request(directory)
    _release_holder(directory, SETTLE_S)  # one left by a freeze whose thaw never came
    if request is None:
        return {"phase": "idle"}
    run = str(request.get("run", ""))
    state_file = os.path.join(directory, protocol.STATE)
    try:
        config = load(config_file)
        cap_s = requested_cap(request, config.cap_s)
    except UsageError as exc:
        failed = {"run": run, "phase": protocol.FAILED, "error": str(exc)}
        protocol.write_json(state_file, failed)
        return failed
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # the holder
        os.close(reader)
        status = 1
        try:
            os.setsid()
            _detach_stdio()
            status = _hold(config, run, cap_s, directory, writer)
        finally:
            os._exit(status)
    os.close(writer)
    waited_s = config.timeout_s * (len(config.quiesce) + 1) + SETTLE_S
    _wait_ready(reader, waited_s)
    os.close(reader)
    state = protocol.read_json(state_file) or {}
    if state.get("run") != run or state.get("phase") not in (protocol.HELD, protocol.FAILED):
        # Not held by now: the agent freezes when this returns, so the hold would come too
        # late. Release whatever the holder got to, and say so.
        _release_holder(directory, config.timeout_s + SETTLE_S)
        state = {
            "run": run,
            "phase": protocol.FAILED,
            "error": f"the applications were not held within {waited_s:g} s",
        }
        protocol.write_json(state_file, state)
    return state


def requested_cap(request: dict[str, Any], config_cap_s: float) -> float:
    """The hold's cap: the host's when it asks for less than the guest's own. A cap that is not
    a positive number of seconds is refused (UsageError, reported as a failed hold), not
    guessed at; none (or 0) means the guest's own."""
    asked = request.get("cap_s") or config_cap_s
    if isinstance(asked, bool) or not isinstance(asked, int | float) or not 0 < asked < math.inf:
        raise UsageError(
            f"the host's request asks for a cap_s ({type(asked).__name__}) that is not a "
            "positive number of seconds"
        )
    return float(min(config_cap_s, asked))


def thaw(directory: str, timeout_s: float = 30.0 + SETTLE_S) -> dict[str, Any]:
    """Release the holder and wait until it has thawed every application and reported."""
    _release_holder(directory, timeout_s)
    return protocol.read_json(os.path.join(directory, protocol.STATE)) or {"phase": "idle"}


def install(directory: str, config_file: str, hook_file: str) -> dict[str, Any]:
    """Write the hook script for qemu-ga's fsfreeze hook and note it for the host's ``doctor``.
    The configuration is checked first, so a broken one is found now, not at the first backup.
    """
    config = load(config_file)
    script = HOOK_SCRIPT.format(
        config_env=protocol.CONFIG_ENV,
        config=config_file,
        state_env=protocol.STATE_DIR_ENV,
        state=protocol.STATE_DIR,
        pid_file=protocol.HOLDER_PID,
        python=sys.executable,
    )
    os.makedirs(os.path.dirname(hook_file), exist_ok=True)
    with open(hook_file, "w", encoding="utf-8") as f:
        f.write(script)
    os.chmod(hook_file, 0o755)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    installed = {
        "version": __version__,
        "hook": hook_file,
        "config": config_file,
        "quiescers": [q.partition(":")[0] for q in config.quiesce],
        "cap_s": config.cap_s,
    }
    protocol.write_json(os.path.join(directory, protocol.INSTALLED), installed)
    return installed


# The thaw is done in shell: the guest's applications wait for it, and a Python start costs
# seconds on a slow guest. It does what ``thaw`` below does.
HOOK_SCRIPT = """#!/bin/sh
# freezeframe: hold the guest's applications while qemu-ga freezes its file systems.
export {config_env}={config}
state=${{{state_env}:-{state}}}
if [ "$1" = thaw ]; then
    pid=$(cat "$state/{pid_file}" 2>/dev/null) || exit 0
    grep -qaE 'freezeframe.guest|guest-hook' "/proc/$pid/cmdline" 2>/dev/null || exit 0
    kill -TERM "$pid" 2>/dev/null || exit 0
    i=0
    while [ -e "$state/{pid_file}" ] && [ -e "/proc/$pid" ] && [ $i -lt 700 ]; do
        sleep 0.05
        i=$((i + 1))
    done
    exit 0
fi
exec {python} -m freezeframe.guest "$1"
"""


def _take_request(directory: str) -> dict[str, Any] | None:
    """The host's request, removed as it is read: it asks for one freeze, not every later one."""
    path = os.path.join(directory, protocol.REQUEST)
    taken = f"{path}.taken"
    try:
        os.replace(path, taken)
    except FileNotFoundError:
        return None
    request = protocol.read_json(taken)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(taken)
    return request


def _hold(config: GuestConfig, run: str, cap_s: float, directory: str, ready: int) -> int:
    from freezeframe.capture.application import ApplicationHold  # noqa: PLC0415 - only a hold
    from freezeframe.capture.watchdog import Watchdog  # noqa: PLC0415
    from freezeframe.quiesce import spec  # noqa: PLC0415

    state_file = os.path.join(directory, protocol.STATE)
    pid_file = os.path.join(directory, protocol.HOLDER_PID)
    with open(pid_file, "w", encoding="ascii") as f:  # plain, for the hook script's thaw
        f.write(f"{os.getpid()}\n")
    released = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: released.set())
    environment = {
        PATHS_KEY: "/",  # a VM's disks hold every file system of the guest that matters
        "FREEZEFRAME_RUN_ID": run,
        "FREEZEFRAME_LEVEL": Level.APPLICATION.value,
        IN_IMAGE_KEY: "1",
    }
    hold: ApplicationHold | None = None
    held = False
    try:
        quiescers = [spec.parse(text) for text in config.quiesce]
        with Watchdog(fork=True) as watchdog:
            hold = ApplicationHold(
                quiescers,
                watchdog,
                cap_s=cap_s,
                timeout_s=config.timeout_s,
                environment=environment,
            )
            with hold:
                held = True
                protocol.write_json(
                    state_file,
                    {"run": run, "phase": protocol.HELD, "in_time": True, "hold": hold.report()},
                )
                os.write(ready, READY)
                while not released.wait(0.01) and hold.in_time:
                    pass
        final = {"run": run, "phase": protocol.RELEASED, "in_time": hold.in_time}
        final["hold"] = hold.report()
        protocol.write_json(state_file, final)
        return 0
    except (FreezeframeError, OSError) as exc:
        failed: dict[str, Any] = {
            "run": run,
            "phase": protocol.RELEASED if held else protocol.FAILED,
            "in_time": False,
            "error": str(exc),
        }
        if hold is not None:
            failed["hold"] = hold.report()
        protocol.write_json(state_file, failed)
        return 1
    finally:
        with contextlib.suppress(OSError):
            os.write(ready, READY)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pid_file)


def _release_holder(directory: str, timeout_s: float) -> None:
    """SIGTERM to a running holder, then wait for it to remove its pid file (its last act)."""
    pid_file = os.path.join(directory, protocol.HOLDER_PID)
    try:
        with open(pid_file, encoding="ascii") as f:
            pid = int(f.read().strip() or 0)
    except (FileNotFoundError, ValueError):
        return
    if not _is_holder(pid):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pid_file)  # left by a holder that was killed
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while os.path.exists(pid_file) and _is_holder(pid) and time.monotonic() < deadline:
        time.sleep(0.01)


def _is_holder(pid: int) -> bool:
    """Whether ``pid`` is a live guest-hook process (not a later process that reused the pid)."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[-1].split()[0]
    except OSError:
        return False
    is_hook = b"freezeframe.guest" in cmdline or b"guest-hook" in cmdline
    return is_hook and state != b"Z"


def _wait_ready(reader: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([reader], [], [], left)
        if readable:
            os.read(reader, 64)
            return


def _detach_stdio() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
