"""What every command needs: the repository location, the password, the output."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from freezeframe.cli.output import Output
from freezeframe.errors import UsageError
from freezeframe.repository.password import resolve_password
from freezeframe.repository.repository import Repository
from freezeframe.storage.base import Storage
from freezeframe.storage.registry import open_storage
from freezeframe.storage.retry import RetryPolicy


@dataclass
class CommandContext:
    args: argparse.Namespace
    out: Output
    _password: bytes | None = field(default=None, init=False, repr=False)

    @property
    def location(self) -> str:
        location = self.args.repo or os.environ.get("FREEZEFRAME_REPOSITORY")
        if not location:
            raise UsageError("no repository given: use --repo or FREEZEFRAME_REPOSITORY")
        return str(location)

    def storage(self) -> Storage:
        """The backend the location names, retrying what may pass on a second attempt."""
        return open_storage(self.location, retry=RetryPolicy())

    def password(self, *, confirm: bool = False) -> bytes:
        """Asked for (or read) once per command, however many steps need it."""
        if self._password is None:
            self._password = resolve_password(self.args.password_file, confirm=confirm)
        return self._password

    def open_repository(self, *, load_index: bool = True) -> Repository:
        return Repository.open(
            self.storage(), self.password(), load_index=load_index, warn=self.out.warn
        )

    @contextlib.contextmanager
    def repository(self, *, load_index: bool = True) -> Iterator[Repository]:
        """The open repository for the block, closed however the block ends."""
        repo = self.open_repository(load_index=load_index)
        try:
            yield repo
        finally:
            repo.close()
