"""The server's accounts file: secrets stored only as scrypt hashes, verified (also from the
process's memory of a success) only for the right account, roles capped by --append-only, and
a damaged file refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from freezeframe.errors import UsageError
from freezeframe.server.accounts import (
    Role,
    Verifier,
    load_accounts,
    new_account,
    save_accounts,
)


def test_a_secret_is_stored_hashed_and_verified_only_for_its_account(tmp_path: Path) -> None:
    path = tmp_path / "accounts.json"
    save_accounts(
        path,
        {
            "web1": new_account("web1", Role.APPEND, b"first secret"),
            "admin": new_account("admin", Role.FULL, b"second secret"),
        },
    )
    assert path.stat().st_mode & 0o777 == 0o600
    text = path.read_text()
    assert "first secret" not in text and "second secret" not in text
    verifier = Verifier(load_accounts(path))
    for _ in range(2):  # the second time from the memory of the first success
        found = verifier.verify("web1", b"first secret")
        assert found is not None and found.role is Role.APPEND
    assert verifier.verify("web1", b"second secret") is None
    assert verifier.verify("admin", b"first secret") is None
    assert verifier.verify("nobody", b"first secret") is None
    assert verifier.verify("web1", b"first secre") is None


def test_append_only_caps_every_role() -> None:
    assert Role.FULL.at_most(Role.APPEND) is Role.APPEND
    assert Role.APPEND.at_most(Role.APPEND) is Role.APPEND
    assert Role.READ.at_most(Role.APPEND) is Role.READ
    assert Role.FULL.at_most(Role.FULL) is Role.FULL


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        json.dumps({"version": 2, "accounts": {}}),
        json.dumps({"version": 1, "accounts": {"web1": {"role": "root", "scrypt": {}}}}),
        json.dumps({"version": 1, "accounts": {"bad name": {"role": "full"}}}),
    ],
)
def test_a_damaged_accounts_file_is_one_line(tmp_path: Path, content: str) -> None:
    path = tmp_path / "accounts.json"
    path.write_text(content)
    with pytest.raises(UsageError) as raised:
        load_accounts(path)
    assert "\n" not in str(raised.value) and str(path) in str(raised.value)
