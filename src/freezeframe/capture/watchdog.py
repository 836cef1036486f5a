"""The watchdog: a separate process that holds the undo of every freeze and pause while it
lasts.

The parent tells it what it is about to freeze and for how long *before* freezing. The watchdog
thaws when the deadline passes, or at once when its stdin reaches end-of-file, which is what
happens when the parent dies, SIGKILL included. So no crash of freezeframe leaves a file system
frozen for longer than about a second. Protocol: one JSON object per line each way.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from types import TracebackType
from typing import IO, Any

from freezeframe.capture import fsfreeze, pause, processes
from freezeframe.capture.processes import Process
from freezeframe.errors import FreezeframeError

COMMAND_TIMEOUT_S = 60.0  # an undo command (a thaw script) gets this long


class Watchdog:
    """Parent side. Use as a context manager; leaving it releases everything still armed."""

    def __init__(self, *, fork: bool = False) -> None:
        """``fork``: a forked copy of this process instead of a new interpreter, for where
        starting Python costs seconds (a slow guest); only from a process with no threads."""
        self._process: subprocess.Popen[str] | None = None
        if fork:
            self._pid, self._stdin, self._stdout = _forked()
        else:
            process = subprocess.Popen(
                [sys.executable, "-m", "freezeframe.capture.watchdog"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd="/",  # never hold a directory on a volume that gets frozen
                start_new_session=True,  # a Ctrl-C to the run's process group must not kill it
            )
            assert process.stdin is not None and process.stdout is not None
            self._pid, self._stdin, self._stdout = process.pid, process.stdin, process.stdout
            self._process = process
        self._next = 0
        if self._read()["event"] != "ready":
            raise FreezeframeError("the freeze watchdog did not start")

    @property
    def pid(self) -> int:
        return self._pid

    def arm_freeze(self, mount_point: str, deadline_s: float) -> int:
        """Make the watchdog responsible for thawing ``mount_point``; returns a token."""
        return self._arm("fsfreeze", mount_point, deadline_s)

    def arm_pause(self, cgroup: str, deadline_s: float) -> int:
        """Make the watchdog responsible for resuming ``cgroup``; returns a token."""
        return self._arm("pause", cgroup, deadline_s)

    def arm_stop(self, process: Process, deadline_s: float) -> int:
        """Make the watchdog responsible for a SIGCONT to ``process`` (never to a later
        process that reuses its pid); returns a token."""
        return self._arm("sigstop", process.key, deadline_s)

    def arm_command(self, argv: list[str], env: dict[str, str], deadline_s: float) -> int:
        """Make the watchdog responsible for running ``argv`` (with ``env`` added to its own
        environment) at the deadline or if this process dies first; returns a token."""
        return self._arm("command", json.dumps({"argv": argv, "env": env}), deadline_s)

    def _arm(self, kind: str, target: str, deadline_s: float) -> int:
        self._next += 1
        request = {"op": "arm", "token": self._next, "kind": kind, "target": target}
        self._send({**request, "seconds": deadline_s})
        reply = self._read()
        if reply.get("event") != "armed":
            raise FreezeframeError(f"the watchdog refused: {reply}")
        return self._next

    def disarm(self, token: int) -> bool:
        """Hand the undo back; False when the deadline had already passed and the watchdog
        undid it (the run must then fail or degrade)."""
        self._send({"op": "disarm", "token": token})
        return bool(self._read().get("in_time"))

    def close(self) -> None:
        self._stdin.close()
        if self._process is not None:
            self._process.wait(timeout=10)
        else:
            os.waitpid(self._pid, 0)
        self._stdout.close()

    def __enter__(self) -> Watchdog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, message: dict[str, Any]) -> None:
        self._stdin.write(json.dumps(message) + "\n")
        self._stdin.flush()

    def _read(self) -> dict[str, Any]:
        line = self._stdout.readline()
        if not line:
            raise FreezeframeError("the freeze watchdog died")
        reply: dict[str, Any] = json.loads(line)
        return reply


def _forked() -> tuple[int, IO[str], IO[str]]:
    """A child of this process serving the watchdog loop on two pipes; (pid, to, from)."""
    commands_r, commands_w = os.pipe()
    replies_r, replies_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.setsid()
            os.chdir("/")
            os.dup2(commands_r, 0)
            os.dup2(replies_w, 1)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 2)
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # no other pipe kept open by us
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            serve(os.fdopen(0, "r"), os.fdopen(1, "w"))
            status = 0
        finally:
            os._exit(status)
    os.close(commands_r)
    os.close(replies_w)
    return pid, os.fdopen(commands_w, "w"), os.fdopen(replies_r, "r")


def _undo(kind: str, target: str) -> None:
    try:
        if kind == "fsfreeze":
            fsfreeze.thaw(target)
        elif kind == "pause":
            pause.resume(target)
        elif kind == "command":
            command = json.loads(target)
            subprocess.run(
                command["argv"],
                env={**os.environ, **command["env"]},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
            )
        elif kind == "sigstop":
            pid, start_time = (int(part) for part in target.split(":"))
            if processes.same_process(pid, start_time):
                processes.cont(pid)
    except (FreezeframeError, OSError, subprocess.TimeoutExpired) as exc:
        print(
            json.dumps({"event": "undo_failed", "target": target, "error": str(exc)}),
            file=sys.stderr,
        )


def serve(commands: IO[str], replies: IO[str]) -> None:
    """The watchdog loop: arm/disarm requests, deadlines, and undo-all at end of input."""
    armed: dict[int, tuple[str, str, float]] = {}

    def reply(message: dict[str, Any]) -> None:
        replies.write(json.dumps(message) + "\n")
        replies.flush()

    reply({"event": "ready", "pid": os.getpid()})
    buffer = ""
    fd = commands.fileno()
    while True:
        now = time.monotonic()
        for token, (kind, target, deadline) in list(armed.items()):
            if deadline <= now:
                _undo(kind, target)
                armed[token] = (kind, target, -1.0)  # expired: remembered for disarm
        live = [d for _k, _t, d in armed.values() if d > 0]
        timeout = max(0.0, min(live) - now) if live else None
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            continue
        chunk = os.read(fd, 65536).decode()
        if not chunk:  # the parent is gone: undo everything now, the latest armed first
            for kind, target, deadline in reversed(list(armed.values())):
                if deadline > 0:
                    _undo(kind, target)
            return
        buffer += chunk
        while "\n" in buffer:
            line, buffer = buffer.split("\n", 1)
            request = json.loads(line)
            if request["op"] == "arm":
                deadline = time.monotonic() + float(request["seconds"])
                armed[request["token"]] = (request["kind"], request["target"], deadline)
                reply({"event": "armed", "token": request["token"]})
            elif request["op"] == "disarm":
                _kind, _target, deadline = armed.pop(request["token"])
                reply({"event": "disarmed", "in_time": deadline > 0})


if __name__ == "__main__":
    serve(sys.stdin, sys.stdout)
