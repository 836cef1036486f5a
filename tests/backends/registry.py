"""Every backend factory the storage contract suite runs over, and the bare ones."""

from __future__ import annotations

from backends import local, rest, s3, sftp
from backends.base import Factory

ALL: list[Factory] = [*local.FACTORIES, *s3.FACTORIES, *rest.FACTORIES, *sftp.FACTORIES]

BARE: list[Factory] = [*local.BARE, *s3.BARE, *rest.BARE, *sftp.BARE]
"""One factory a backend, no wrapper: for tests that stack their own (the fault wrapper)."""
