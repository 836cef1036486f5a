"""lvm.run_to_its_end, how lvcreate is run: in a session of its own (a Ctrl-C to the run's
process group, or the run's death, does not stop it between its suspend and its resume), and
an interrupt of the run waits for it to finish before it is raised."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from freezeframe.capture.providers.lvm import run_to_its_end
from freezeframe.errors import FreezeframeError


def test_it_runs_in_a_session_of_its_own() -> None:
    out = run_to_its_end(sys.executable, "-c", "import os; print(os.getsid(0))", what="sid")
    assert int(out) != os.getsid(0)


def test_an_interrupt_waits_for_the_command_then_is_raised(tmp_path: Path) -> None:
    done = tmp_path / "done"
    script = f"import time; time.sleep(1.0); open({str(done)!r}, 'w').close()"
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_to_its_end(sys.executable, "-c", script, what="slow")
    assert done.exists()  # it finished: the interrupt did not stop it halfway
    assert time.monotonic() - started >= 0.9


def test_a_failure_is_one_error_with_its_last_complaint() -> None:
    script = "import sys; sys.stderr.write('first\\n  Volume group full\\n'); sys.exit(5)"
    with pytest.raises(FreezeframeError, match=r"^lvcreate x failed: Volume group full$"):
        run_to_its_end(sys.executable, "-c", script, what="lvcreate x")


def test_its_output_never_touches_a_file_system(monkeypatch: pytest.MonkeyPatch) -> None:
    """TMPDIR may be on the very LV lvcreate freezes (or read-only): a write there would
    wait for a thaw only lvcreate itself can do."""
    monkeypatch.setattr(tempfile, "tempdir", "/nonexistent/tmp")
    assert run_to_its_end(sys.executable, "-c", "print('made')", what="lvcreate") == "made\n"
