"""FREEZEFRAME_VM_TIMEOUT: every wait on a VM's QEMU keeps its default unless it is set, and a
value that is not a positive number of seconds is refused rather than read as no wait."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from freezeframe.errors import QmpError, UsageError
from freezeframe.vm.qmp import GuestAgent
from freezeframe.vm.timeouts import AGENT_S, QMP_S, TIMEOUT_ENV, vm_timeout


def test_each_wait_keeps_its_default_unless_the_variable_is_set() -> None:
    assert vm_timeout(AGENT_S, {}) == AGENT_S
    assert vm_timeout(QMP_S, {TIMEOUT_ENV: ""}) == QMP_S
    assert vm_timeout(AGENT_S, {TIMEOUT_ENV: "90"}) == 90.0
    assert vm_timeout(QMP_S, {TIMEOUT_ENV: "2.5"}) == 2.5


@pytest.mark.parametrize("given", ["0", "-1", "soon", "nan", "inf"])
def test_a_value_that_is_not_a_positive_number_of_seconds_is_refused(given: str) -> None:
    with pytest.raises(UsageError, match=TIMEOUT_ENV):
        vm_timeout(AGENT_S, {TIMEOUT_ENV: given})


def test_the_guest_agent_client_waits_as_long_as_the_variable_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent that takes the connection and never answers (the socket's backlog does)."""
    path = tmp_path / "qga.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.bind(str(path))
        silent.listen(1)
        monkeypatch.setenv(TIMEOUT_ENV, "0.3")
        started = time.monotonic()
        with pytest.raises(QmpError, match="does not answer"):
            GuestAgent(str(path))
        assert 0.3 <= time.monotonic() - started < AGENT_S
