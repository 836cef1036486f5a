"""Every backend factory the storage contract suite runs over."""

from __future__ import annotations

from backends import local, rest, s3, sftp
from backends.base import Factory

ALL: list[Factory] = [*local.FACTORIES, *s3.FACTORIES, *rest.FACTORIES, *sftp.FACTORIES]
