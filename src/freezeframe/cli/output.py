"""Everything the CLI prints: one JSON document on stdout with ``--json``, text otherwise,
progress on a terminal's stderr, and errors as one line."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from freezeframe.repository.snapshot import Snapshot


class Output:
    def __init__(
        self,
        *,
        json_mode: bool,
        quiet: bool,
        progress: bool,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
    ) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.show_progress = progress and not quiet and self.stderr.isatty()

    def result(self, doc: Any, text: str | Callable[[], str] | None = None) -> None:
        """The command's result: ``doc`` as JSON, or the human text (built lazily)."""
        if self.json_mode:
            # ASCII escapes keep names that are not UTF-8 (surrogate-escaped) valid JSON.
            json.dump(doc, self.stdout, indent=2, default=str)
            self.stdout.write("\n")
        elif text is not None and not self.quiet:
            rendered = _printable(text() if callable(text) else text)
            if rendered:
                self.stdout.write(rendered if rendered.endswith("\n") else rendered + "\n")
        self.stdout.flush()

    def info(self, message: str) -> None:
        """A remark for a person at a terminal; silent with --quiet and --json."""
        if not self.quiet and not self.json_mode:
            self.stderr.write(message + "\n")

    def warn(self, message: str) -> None:
        if not self.quiet:
            self.stderr.write(_printable(f"freezeframe: warning: {message}\n"))

    def error(self, message: str, code: str) -> None:
        self.stderr.write(_printable(f"freezeframe: error: {message}\n"))
        if self.json_mode:
            json.dump({"error": {"code": code, "message": message}}, self.stdout)
            self.stdout.write("\n")
            self.stdout.flush()

    @contextmanager
    def live(self, render: Callable[[float], str], interval: float = 0.25) -> Iterator[None]:
        """Redraw ``render(elapsed)`` on stderr while the block runs (only on a terminal)."""
        if not self.show_progress:
            yield
            return
        from rich.console import Console  # noqa: PLC0415 - only a terminal pays for rich
        from rich.live import Live  # noqa: PLC0415
        from rich.text import Text  # noqa: PLC0415

        console = Console(file=self.stderr)
        start = time.monotonic()
        stop = threading.Event()
        with Live(Text(""), console=console, transient=True, refresh_per_second=8) as live:

            def tick() -> None:
                while not stop.wait(interval):
                    live.update(Text(render(time.monotonic() - start)))

            ticker = threading.Thread(target=tick, daemon=True)
            ticker.start()
            try:
                yield
            finally:
                stop.set()
                ticker.join()


def _printable(text: str) -> str:
    """Bytes of file names that are not UTF-8 arrive as surrogates; show them as escapes
    instead of failing to print."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def snapshot_json(snapshot: Snapshot) -> dict[str, Any]:
    """What `backup --json` says of the snapshot it saved."""
    return {
        "snapshot_id": snapshot.id,
        "time": snapshot.time.isoformat(),
        "paths": snapshot.paths,
        "summary": snapshot.summary,
        "consistency": snapshot.to_json()["consistency"],
    }


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def human_duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("-" * len(lines[0]))
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)
