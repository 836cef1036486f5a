"""Discovery of running databases: `doctor` lists a PostgreSQL server whose data lie under a
path, with the quiescer that would hold it; `backup --quiesce auto` holds it; a backup that
could hold it but was given no quiescer warns and names it."""

from __future__ import annotations

from pathlib import Path

from ffharness import Cli
from fsfixtures import loop_filesystem, shared_workdir
from mariadbfixtures import mariadb_server
from pgfixtures import postgres_server, require_postgresql


def test_doctor_finds_postgresql_and_auto_holds_it(repo: Path, cli: Cli) -> None:
    require_postgresql()
    with shared_workdir() as work, loop_filesystem(work, "btrfs", size_mib=512) as mnt:
        mnt.chmod(0o755)
        (mnt / "elsewhere").mkdir()
        with postgres_server(mnt / "pg") as server:
            report = cli("doctor", mnt, mnt / "elsewhere")
            found = report[0]["applications"]
            assert [(a["kind"], a["data_dir"]) for a in found] == [("postgresql", str(mnt / "pg"))]
            assert found[0]["spec"] == (
                f"postgresql:host={server.socket_dir} port=5432 dbname=postgres user=postgres"
            )
            assert report[0]["reachable"][0] == "application"
            assert report[1]["applications"] == []
            assert "no running database found" in report[1]["unreachable"]["application"]
            text = cli("doctor", mnt, json=False)
            assert f"database: postgresql (pid {found[0]['pid']}) in {mnt / 'pg'}" in text

            held = cli("backup", mnt / "pg", "--quiesce", "auto")
            assert held["consistency"]["achieved"] == "application"
            [record] = held["consistency"]["quiesce"]["quiescers"]
            assert (record["kind"], record["result"]) == ("postgresql", "ok")

            unheld = cli("backup", mnt)
            assert unheld["consistency"]["achieved"] == "filesystem"
            assert f"postgresql (pid {found[0]['pid']}, data in {mnt / 'pg'}) runs under" in (
                cli.stderr
            )
            assert "--quiesce auto" in cli.stderr

            quiet = cli("backup", mnt / "elsewhere")
            assert "runs under the paths" not in cli.stderr
            assert quiet["consistency"]["achieved"] == "filesystem"


def test_auto_holds_postgresql_and_mariadb_together_postgresql_first(repo: Path, cli: Cli) -> None:
    require_postgresql()
    with shared_workdir() as work, loop_filesystem(work, "btrfs", size_mib=1024) as mnt:
        mnt.chmod(0o755)
        with mariadb_server(mnt / "mysql", fresh=True) as mariadb, postgres_server(mnt / "pg"):
            kinds = {a["kind"]: a for a in cli("doctor", mnt)[0]["applications"]}
            assert kinds["mysql"]["data_dir"] == str(mnt / "mysql")
            assert kinds["mysql"]["spec"] == f"mysql:{mariadb.url}"
            result = cli("backup", mnt, "--quiesce", "auto")
            assert result["consistency"]["achieved"] == "application"
            records = result["consistency"]["quiesce"]["quiescers"]
            assert [(r["kind"], r["result"]) for r in records] == [
                ("postgresql", "ok"),
                ("mysql", "ok"),
            ]
            assert "runs under the paths" not in cli.stderr


def test_quiesce_auto_with_nothing_running_warns_and_needs_a_level_that_uses_it(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    with loop_filesystem(tmp_path, "btrfs") as mnt:
        (mnt / "f").write_text("x")
        result = cli("backup", mnt, "--quiesce", "auto")
        assert result["consistency"]["achieved"] == "filesystem"
        assert "--quiesce auto found no running database under the paths and no hook" in (
            cli.stderr
        )
        wrong = cli("backup", mnt, "--quiesce", "auto", "--consistency", "crash", expect=2)
        assert "--quiesce auto needs --consistency application or auto" in wrong["error"]["message"]
