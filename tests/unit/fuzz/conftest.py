"""The fuzz tests' summary: one line per parser with its executions, in every pytest run that
ran them (``pytest -q`` included), and the tally as JSON for ``bench/fuzz.py``."""

from __future__ import annotations

import fuzzkit
import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fuzz: a parser fuzz test (bench/fuzz.py runs them longer)")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not fuzzkit.TALLY:
        return
    terminalreporter.write_sep("-", f"fuzz: executions per parser ({fuzzkit.EXAMPLES} examples)")
    for name, t in sorted(fuzzkit.TALLY.items()):
        failed = sum(f.count for f in t.failures.values())
        terminalreporter.write_line(
            f"fuzz {name}: {t.executions} executions, {t.rejected} rejected, "
            f"{t.accepted} accepted, {t.skipped} skipped, "
            f"{failed} failures"
        )
    if fuzzkit.REPORT:
        fuzzkit.write_report(fuzzkit.REPORT)
