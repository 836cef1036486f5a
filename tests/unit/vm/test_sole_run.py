"""One backup of a VM at a time: a second run fails at once with one line, and the lock is free
again when the first ends (or dies: it is an flock, released with the process)."""

from __future__ import annotations

from pathlib import Path

import pytest

from freezeframe.errors import FreezeframeError
from freezeframe.vm import pointintime


def test_a_second_run_of_the_same_vm_is_refused_until_the_first_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pointintime, "SCRATCH_ROOT", str(tmp_path))
    with pointintime.sole_run("vm1"):
        refused = pytest.raises(FreezeframeError, match="another freezeframe backup of it")
        with refused, pointintime.sole_run("vm1"):
            pass
        with pointintime.sole_run("vm2"):  # another VM is not held up
            pass
    with pointintime.sole_run("vm1"):
        pass
