"""The ``freezeframe`` command: parses arguments, runs one command, maps errors to exit codes.

Exit codes (freezeframe.errors): 0 success; 1 fatal error (damage found...); 2 bad usage;
3 finished but some files could not be read; 10 no repository; 11 locked; 12 wrong password;
130 interrupted.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import signal
import sys
import traceback
from collections.abc import Sequence
from types import ModuleType

from freezeframe import __version__
from freezeframe.cli.context import CommandContext
from freezeframe.cli.output import Output
from freezeframe.errors import (
    EXIT_FATAL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    FreezeframeError,
    UsageError,
)

_M_ARENA_MAX = -8
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# Command name -> help. Each command's module (freezeframe.cli.cmd_<name>) is imported only
# when that command runs, so `backup` does not pay for importing restore, prune or check.
COMMANDS: dict[str, str] = {
    "init": "create a new repository",
    "backup": "back up files and directories into a new snapshot",
    "snapshots": "list snapshots",
    "ls": "list the files in a snapshot",
    "restore": "restore a snapshot under a target directory (original absolute paths kept)",
    "diff": "show the differences between two snapshots",
    "copy": "copy snapshots from another repository (--from-repo) into this one",
    "check": "check the repository for errors",
    "forget": "remove snapshots according to a retention policy",
    "prune": "remove unreferenced data from the repository",
    "stats": "show repository statistics",
    "key": "list, add, remove or change the passwords of the repository",
    "unlock": "remove stale and damaged locks left by crashed processes",
    "repair": "repair a damaged repository: index, packs, snapshots or config",
    "migrate": "upgrade the repository to the current format version",
    "doctor": "show the consistency levels paths and VMs reach, or check a repository's storage",
    "guest-hook": "inside a VM: qemu-ga's fsfreeze hook holding the guest's applications",
    "plan": "list, show, validate or run the backup plans of the plans file",
    "history": "show the plans' runs",
    "status": "show each plan's last result, last success, next run and whether it is overdue",
    "agent": "run the plans on their schedules (in the foreground)",
    "serve": "serve the repository's storage over HTTP(S) to hosts with accounts (rest:)",
}


def _add_global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Global options are accepted before and after the command name."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "-r",
        "--repo",
        default=default(None),
        help="repository location (default: $FREEZEFRAME_REPOSITORY)",
    )
    parser.add_argument(
        "--password-file",
        default=default(None),
        metavar="FILE",
        help="read the password from the first line of FILE",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print one JSON document on stdout",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=default(False), help="print only errors"
    )
    parser.add_argument(
        "--no-progress", action="store_true", default=default(False), help="no progress display"
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default(False),
        help="show tracebacks of unexpected errors",
    )


class _Parser(argparse.ArgumentParser):
    """Usage errors become exceptions, so ``main`` returns a status instead of exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        command = self.prog.removeprefix("freezeframe").strip()
        raise _ArgumentError(f"{command}: {message}" if command else message)


class _ArgumentError(Exception):
    pass


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="freezeframe", description="Consistent, deduplicating, encrypted backups for Linux."
    )
    parser.add_argument("--version", action="version", version=f"freezeframe {__version__}")
    _add_global_options(parser, suppress=False)
    common = _Parser(add_help=False)
    _add_global_options(common, suppress=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    for name, help_text in COMMANDS.items():
        sub = commands.add_parser(name, parents=[common], help=help_text, description=help_text)
        if name == selected:
            _command_module(name).configure(sub)
    return parser


def _command_module(name: str) -> ModuleType:
    return importlib.import_module(f"freezeframe.cli.cmd_{name.replace('-', '_')}")


def _selected_command(argv: Sequence[str]) -> str | None:
    """The command named in ``argv`` (the first word that is one), found before parsing so that
    only its module is imported."""
    return next((word for word in argv if word in COMMANDS), None)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status and never raises."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    selected = _selected_command(arguments)
    try:
        args = build_parser(selected).parse_args(arguments)
        if args.command != selected:  # a global option's value looked like a command name
            args = build_parser(args.command).parse_args(arguments)
    except _ArgumentError as exc:
        _usage_error(str(exc), json_mode="--json" in arguments)
        return EXIT_USAGE
    except SystemExit as exc:  # --help and --version
        return int(exc.code or 0)
    out = Output(json_mode=args.json, quiet=args.quiet, progress=not args.no_progress)
    ctx = CommandContext(args=args, out=out)
    try:
        return int(_command_module(args.command).run(ctx))
    except FreezeframeError as exc:
        out.error(str(exc), exc.code)
        return exc.exit_status
    except KeyboardInterrupt:
        out.error("interrupted", "interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_FATAL
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, not a trace
        if args.debug:
            traceback.print_exc()
        out.error(
            f"unexpected {type(exc).__name__}: {exc} (run with --debug for details)", "internal"
        )
        return EXIT_FATAL


def _usage_error(message: str, *, json_mode: bool) -> None:
    """Arguments that do not parse still get one line, and under ``--json`` the error
    document a script reads (the namespace, and so ``Output``, does not exist yet)."""
    Output(json_mode=json_mode, quiet=False, progress=False).error(message, UsageError.code)


def _limit_malloc_arenas() -> None:
    """glibc gives each thread its own malloc arena and keeps freed chunk buffers in each;
    fewer arenas lower peak memory (382 -> 310 MB on a 200,000-file backup with one)."""
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded, glibc among them
        libc.mallopt(_M_ARENA_MAX, 2)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


# Cleared the moment main returns: a later stop signal changes nothing. A dict, so clearing it
# is one store with no call in which a signal could raise first.
_RUN = {"interruptible": True}


def _interrupt(signum: int, frame: object) -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt while a command runs, and nothing after."""
    if _RUN["interruptible"]:
        raise KeyboardInterrupt


def entry_point() -> None:
    """The console script: SIGTERM is treated like Ctrl-C so a run stops cleanly.

    Once ``main`` has returned, the work is done (a snapshot may be saved), so a late SIGINT or
    SIGTERM must not change the status: the handler goes quiet first (one store, in a
    ``finally``, where no signal can raise before it), then both signals are ignored, because
    the interpreter's shutdown gives Python-handled signals their default action back and a
    signal then would end the process by the signal instead of with main's status."""
    _limit_malloc_arenas()
    signal.signal(signal.SIGTERM, _interrupt)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupt)  # an inherited SIG_IGN stays ignored
    status = EXIT_INTERRUPTED
    try:
        try:
            status = main()
        finally:
            _RUN["interruptible"] = False
    except KeyboardInterrupt:
        pass  # arrived after main's own handlers: the outcome is decided
    for stop in _STOP_SIGNALS:
        signal.signal(stop, signal.SIG_IGN)
    sys.exit(status)
