#!/usr/bin/env bash
# Application-aware backups of a running database: PostgreSQL 15 with its data on a loop-backed
# btrfs volume and pgbench committing flat out. `doctor` finds the server; each backup runs with
# `--quiesce auto` (a base backup around the snapshot: pg_backup_start, snapshot,
# pg_backup_stop, the label and its WAL stored with it); each snapshot is restored, the restored
# server started, and checked: it recovered from its backup label (not by crash recovery),
# pgbench's sums agree, nothing committed before the backup is missing, pg_amcheck is clean.
# Needs root (loop mount, snapshots; the servers run as the postgres user).
set -euo pipefail
cd "$(dirname "$0")/.."
ff=$PWD/.venv/bin/freezeframe
pgbin=/usr/lib/postgresql/15/bin
trials=${DEMO_TRIALS:-3}
if [ "$(id -u)" != 0 ]; then
    echo "== PostgreSQL demo skipped: it needs root (loop mounts, snapshots, runuser postgres)"
    exit 0
fi
work=$(mktemp -d /tmp/ffdemo-pg.XXXXXX)  # under /tmp: the postgres user must reach it
chmod 711 "$work"
export FREEZEFRAME_REPOSITORY=$work/repository
export FREEZEFRAME_PASSWORD=demo-password-change-me
export XDG_CACHE_HOME=$work/cache
as_pg() { runuser -u postgres -- "$@"; }
bench_pid=
cleanup() {
    set +e
    if [ -n "$bench_pid" ]; then kill "$bench_pid" 2>/dev/null; wait "$bench_pid" 2>/dev/null; fi
    for d in "$work"/restore-*/"${work#/}"/pgvol/data "$work/pgvol/data"; do
        [ -f "$d/postmaster.pid" ] && as_pg "$pgbin/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1
    done
    umount "$work/pgvol" 2>/dev/null || umount -l "$work/pgvol" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

echo "== PostgreSQL 15 on a btrfs loop volume: $work/pgvol/data"
truncate -s 2G "$work/pgvol.img"
mkfs.btrfs -q -f "$work/pgvol.img" >/dev/null
mkdir "$work/pgvol" "$work/sock"
mount -o loop "$work/pgvol.img" "$work/pgvol"
chmod 755 "$work/pgvol"
mkdir -m 700 "$work/pgvol/data"
chown postgres: "$work/pgvol/data" "$work/sock"
as_pg "$pgbin/initdb" -D "$work/pgvol/data" -U postgres --auth=trust >/dev/null
start() {  # data dir, socket dir
    as_pg "$pgbin/pg_ctl" -D "$1" -l "$2/server.log" -w \
        -o "-k $2 -c listen_addresses=''" start >/dev/null
}
start "$work/pgvol/data" "$work/sock"
psql() { as_pg "$pgbin/psql" -h "$1" -d postgres -XAtq -c "$2"; }
as_pg "$pgbin/pgbench" -h "$work/sock" -i -q -s 2 postgres 2>/dev/null
as_pg "$pgbin/pgbench" -h "$work/sock" -c 2 -j 1 -T 3600 -n postgres >/dev/null 2>&1 &
bench_pid=$!
sleep 1
echo "== pgbench commits flat out (pid $bench_pid)"
$ff init --argon2-memory 64 >/dev/null
echo "== freezeframe doctor finds the server"
$ff doctor "$work/pgvol" | sed 's/^/   /'

sums="SELECT (SELECT sum(abalance) FROM pgbench_accounts)||' '||(SELECT sum(tbalance)
      FROM pgbench_tellers)||' '||(SELECT sum(bbalance) FROM pgbench_branches)||' '||
      (SELECT coalesce(sum(delta),0) FROM pgbench_history)||' '||(SELECT count(*) FROM pgbench_history)"
for trial in $(seq 1 "$trials"); do
    before=$(psql "$work/sock" "SELECT count(*) FROM pgbench_history")
    out=$($ff --json --no-progress backup "$work/pgvol/data" --consistency application --quiesce auto)
    read -r id achieved hold start stop < <(python3 -c '
import json, sys
r = json.loads(sys.argv[1]); q = r["consistency"]["quiesce"]; p = q["quiescers"][0]["positions"]
print(r["snapshot_id"][:12], r["consistency"]["achieved"], q["window_ms"], p["start_lsn"], p["stop_lsn"])
' "$out")
    target=$work/restore-$trial
    $ff restore "$id" --target "$target" >/dev/null
    restored=$target/${work#/}/pgvol/data
    mkdir -m 700 "$target/sock" && chown postgres: "$target/sock"
    start "$restored" "$target/sock"
    read -r a t b h rows < <(psql "$target/sock" "$sums")
    as_pg "$pgbin/pg_amcheck" -h "$target/sock" -U postgres --all --install-missing \
        --heapallindexed >/dev/null
    log=$target/sock/server.log
    grep -q "starting backup recovery with redo LSN $start" "$log" || { cat "$log"; exit 1; }
    grep -q "consistent recovery state reached at $stop" "$log" || { cat "$log"; exit 1; }
    if grep -q "automatic recovery in progress" "$log"; then echo "demo: crash recovery ran"; exit 1; fi
    [ "$a" = "$t" ] && [ "$t" = "$b" ] && [ "$b" = "$h" ] || { echo "demo: sums differ: $a $t $b $h"; exit 1; }
    [ "$rows" -ge "$before" ] || { echo "demo: lost commits ($rows < $before)"; exit 1; }
    as_pg "$pgbin/pg_ctl" -D "$restored" -m fast stop >/dev/null
    echo "   backup $trial: snapshot $id $achieved, held ${hold} ms (WAL $start..$stop);" \
        "restored server recovered from its label to $stop, sums agree ($a), $rows transactions" \
        ">= $before committed before the backup, pg_amcheck clean"
    rm -rf "$target"
done
echo "PostgreSQL demo: OK ($trials application-aware backups restored and started clean)"
