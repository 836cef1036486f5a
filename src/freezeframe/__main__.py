"""``python -m freezeframe``: the same as the ``freezeframe`` command."""

from freezeframe.cli.main import entry_point

entry_point()
