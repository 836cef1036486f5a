"""A plan's environment file: the lines it takes, and the files it refuses (loose modes, another
owner, a link, a line that is not KEY=VALUE), each in one line that never shows a value."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ffharness import is_root, privileged_required
from freezeframe.errors import UsageError
from freezeframe.plans import envfile


def _file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "s3.env"
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_lines_comments_export_and_quotes(tmp_path: Path) -> None:
    path = _file(
        tmp_path,
        "# S3\n\nAWS_ACCESS_KEY_ID=AKID\nexport AWS_SECRET_ACCESS_KEY = 'se cret=x' \n"
        'FREEZEFRAME_PASSWORD="pw#1"\nEMPTY=\nDOLLAR=$HOME\n',
    )
    assert envfile.read(str(path)) == {
        "AWS_ACCESS_KEY_ID": "AKID",
        "AWS_SECRET_ACCESS_KEY": "se cret=x",
        "FREEZEFRAME_PASSWORD": "pw#1",
        "EMPTY": "",
        "DOLLAR": "$HOME",  # nothing is expanded
    }
    assert envfile.read(str(_file(tmp_path, "A=1\n", 0o400))) == {"A": "1"}


@pytest.mark.parametrize("line", ["AWS_SECRET_ACCESS_KEY hunter2", "1KEY=hunter2", "=hunter2"])
def test_a_line_that_is_not_key_value_is_named_unechoed(tmp_path: Path, line: str) -> None:
    path = _file(tmp_path, f"A=1\n{line}\n")
    with pytest.raises(UsageError) as raised:
        envfile.read(str(path))
    assert str(raised.value) == f"environment file {path}:2: expected KEY=VALUE"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o700 | 0o001])
def test_modes_for_other_users_are_refused(tmp_path: Path, mode: int) -> None:
    path = _file(tmp_path, "AWS_SECRET_ACCESS_KEY=hunter2\n", mode)
    with pytest.raises(UsageError) as raised:
        envfile.read(str(path))
    assert str(raised.value) == (
        f"environment file {path} is mode {mode:04o}: other users can read or change the "
        "secrets it holds (chmod 600 it)"
    )


def test_another_owner_a_link_a_relative_path_and_no_file_are_refused(tmp_path: Path) -> None:
    path = _file(tmp_path, "A=1\n")
    link = tmp_path / "link.env"
    link.symlink_to(path)
    cases = {
        str(link): f"environment file {link} is a symbolic link: name the file",
        "s3.env": "environment file 's3.env' is not an absolute path",
        str(tmp_path / "none"): f"environment file {tmp_path / 'none'}: no such file",
        str(tmp_path): f"environment file {tmp_path} is not a regular file",
    }
    for given, message in cases.items():
        with pytest.raises(UsageError) as raised:
            envfile.read(given)
        assert str(raised.value) == message
    if not is_root():
        privileged_required("chown to another user needs root")
    os.chown(path, 65534, 65534)
    with pytest.raises(UsageError) as raised:
        envfile.read(str(path))
    assert str(raised.value) == (
        f"environment file {path} is owned by uid 65534, neither root nor this user: another "
        "user could change it (chown it)"
    )
