"""Test hooks for a child process: ``ffharness.hold_env`` puts this directory first on the
child's PYTHONPATH and names, in ``FREEZEFRAME_TEST_HOLD``, the points to hold and for how
long (``capture.frozen=30``, several separated by commas). Python imports this module at
start-up, before the CLI runs, and it installs a sleeping hook at each of those points
(``freezeframe.hooks``), so the test can kill the run while it is held there. The production
code reads no environment for it.

Every Python process started with that environment runs this; one without the variable, or
without freezeframe importable, is left alone.
"""

from __future__ import annotations

import os
import time

HOLD_ENV = "FREEZEFRAME_TEST_HOLD"


def _install(spec: str) -> None:
    try:
        from freezeframe import hooks
    except ImportError:  # a Python that is not freezeframe's (a tool a test runs)
        return
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, seconds = item.partition("=")
        delay = float(seconds)
        hooks.install(hooks.Point(name), lambda _point, delay=delay: time.sleep(delay))


if os.environ.get(HOLD_ENV):
    _install(os.environ[HOLD_ENV])
