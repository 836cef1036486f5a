"""Discovery's parts on real inputs: this process's own listening sockets as /proc shows them, a
postmaster.pid as PostgreSQL writes it, and what ``--quiesce auto`` makes of what runs."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from freezeframe.quiesce import discovery
from freezeframe.quiesce.discovery import Instance, expand_auto
from freezeframe.quiesce.script import HOOKS_DIR_ENV, expand_directories


def test_listening_unix_sockets_and_tcp_ports_of_a_process_are_found(tmp_path: Path) -> None:
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(tmp_path / "db.sock"))
    unix.listen()
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    connected = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connected.connect(str(tmp_path / "db.sock"))  # a client socket is not a way in
    try:
        assert discovery._unix_sockets(os.getpid()) == [str(tmp_path / "db.sock")]
        assert tcp.getsockname()[1] in discovery._tcp_ports(os.getpid())
    finally:
        for s in (connected, unix, tcp):
            s.close()


def test_postgresql_is_reached_through_the_socket_directory_of_its_pid_file(
    tmp_path: Path,
) -> None:
    pid_file = "4242\n/srv/pg\n1700000000\n5433\n/run/postgresql\n*\n  5433001  0\nready\n"
    (tmp_path / "postmaster.pid").write_text(pid_file)
    assert discovery._postgresql_spec(str(tmp_path)) == (
        "postgresql:host=/run/postgresql port=5433 dbname=postgres user=postgres"
    )
    (tmp_path / "postmaster.pid").write_text(pid_file.replace("/run/postgresql", ""))
    assert discovery._postgresql_spec(str(tmp_path)).startswith("postgresql:host=127.0.0.1 ")
    (tmp_path / "postmaster.pid").unlink()
    assert discovery._postgresql_spec(str(tmp_path)) == ""


RUNNING = [
    Instance("redis", 30, "/srv/redis", "redis:unix:///run/redis.sock"),
    Instance("postgresql", 40, "/srv/pg/main", "postgresql:host=/run/postgresql port=5432"),
    Instance("mysql", 50, "/var/lib/mysql", "mysql:mysql://root@localhost/?unix_socket=/s"),
    Instance("redis", 60, "/srv/cache", ""),
]


def test_auto_holds_what_runs_under_the_paths_postgresql_first_then_the_hooks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(HOOKS_DIR_ENV, str(tmp_path))
    for name, mode in [("20-app", 0o755), ("10-web", 0o755), ("notes", 0o644), ("30-x~", 0o755)]:
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(mode)
    (tmp_path / ".hidden").write_text("")
    (tmp_path / ".hidden").chmod(0o755)
    specs, warnings = expand_auto(["sqlite:/srv/app.db", "auto"], ["/srv"], RUNNING)
    assert specs == [
        "sqlite:/srv/app.db",
        "postgresql:host=/run/postgresql port=5432",
        "redis:unix:///run/redis.sock",
        f"script:{tmp_path}/10-web",
        f"script:{tmp_path}/20-app",
    ]
    assert expand_directories(["redis:x", f"script:{tmp_path}"]) == [
        "redis:x",
        f"script:{tmp_path}/10-web",
        f"script:{tmp_path}/20-app",
    ]
    assert len(warnings) == 2
    assert "redis (pid 60, data in /srv/cache) listens nowhere" in warnings[0]
    assert "redis (pid 60, data in /srv/cache) runs under the paths" in warnings[1]


def test_a_database_without_a_quiescer_of_its_kind_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hooks = tmp_path / "no-hooks"
    monkeypatch.setenv(HOOKS_DIR_ENV, str(hooks))
    specs, warnings = expand_auto(
        ["redis:unix:///run/redis.sock"], ["/srv/pg", "/srv/redis"], RUNNING
    )
    assert specs == ["redis:unix:///run/redis.sock"]
    assert warnings == [
        "postgresql (pid 40, data in /srv/pg/main) runs under the paths and no quiescer holds "
        "it: its copy will need crash recovery (add --quiesce postgresql:... or --quiesce auto)"
    ]
    assert expand_auto([], ["/var/lib/mysql-other"], RUNNING) == ([], [])
    assert expand_auto(["auto"], ["/home"], RUNNING) == (
        [],
        [f"--quiesce auto found no running database under the paths and no hook in {hooks}"],
    )
