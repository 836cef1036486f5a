#!/usr/bin/env bash
# The product under live writes: two loop-backed btrfs volumes, a writer that appends to a log
# on the first, fsyncs it, then writes a commit file on the second that vouches for the log's
# length. Backups at `crash` and `filesystem` (the writer paused across both snapshots) restore
# with the commit never past the log; read live (`none`) the same restore can break it, and the
# snapshot says `none`. Needs root (loop mounts, snapshots, pausing the writer).
set -euo pipefail
cd "$(dirname "$0")/.."
ff=.venv/bin/freezeframe
work=$PWD/demo-work/capture
trials=${DEMO_TRIALS:-5}
if [ "$(id -u)" != 0 ]; then
    echo "== capture demo skipped: it needs root (loop mounts and btrfs snapshots)"
    exit 0
fi
for v in logs commits; do  # a previous run that was interrupted
    if mountpoint -q "$work/$v"; then umount "$work/$v" || umount -l "$work/$v"; fi
done
rm -rf "$work"
mkdir -p "$work"
export FREEZEFRAME_REPOSITORY=$work/repository
export FREEZEFRAME_PASSWORD=demo-password-change-me
export XDG_CACHE_HOME=$work/cache
writer_pid=
cleanup() {
    set +e
    if [ -n "$writer_pid" ]; then kill "$writer_pid" 2>/dev/null; wait "$writer_pid" 2>/dev/null; fi
    for v in logs commits; do umount "$work/$v" 2>/dev/null; done
    rm -f "$work"/*.img
}
trap cleanup EXIT

echo "== two btrfs volumes on loop devices: $work/logs and $work/commits"
for v in logs commits; do
    truncate -s 1G "$work/$v.img"
    mkfs.btrfs -q -f "$work/$v.img" >/dev/null
    mkdir "$work/$v"
    mount -o loop "$work/$v.img" "$work/$v"
done
python3 - "$work/logs" "$work/commits" <<'PY' &
import os, sys
logs, commits = sys.argv[1], sys.argv[2]
log = os.open(f"{logs}/a.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
os.write(log, (b"x" * 63 + b"\n") * 200_000)  # a head start: reading the log takes a while
size, n = os.fstat(log).st_size, 0
while True:
    n += 1
    record = b"%063d\n" % n
    os.write(log, record)
    os.fsync(log)          # the log first, durably...
    size += len(record)
    with open(f"{commits}/.tmp", "w") as f:
        f.write(str(size)) # ...then the commit that vouches for it
        f.flush()
        os.fsync(f.fileno())
    os.rename(f"{commits}/.tmp", f"{commits}/b.commit")
PY
writer_pid=$!
sleep 1
echo "== a writer runs flat out (pid $writer_pid): it appends to the log, then commits on the other volume"
$ff init --argon2-memory 64 >/dev/null
$ff doctor "$work/logs" "$work/commits"

check() {  # restore snapshot $1 and check that the commit never points past the log
    rm -rf "$work/restore"
    $ff restore "$1" --target "$work/restore" >/dev/null
    python3 - "$work/restore$work/logs/a.log" "$work/restore$work/commits/b.commit" <<'PY'
import os, sys
log, commit = os.path.getsize(sys.argv[1]), int(open(sys.argv[2]).read())
print(f"   commit says {commit} bytes, log has {log}: "
      + ("invariant holds" if commit <= log else f"BROKEN, {commit - log} bytes of commit point past the log"))
sys.exit(0 if commit <= log else 1)
PY
}

for level in crash filesystem none; do
    echo "== $trials backups at --consistency $level while the writer runs, each restored and checked"
    broken=0
    for i in $(seq "$trials"); do
        json=$($ff --json backup "$work/logs" "$work/commits" --consistency "$level")
        id=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["snapshot_id"][:12])' "$json")
        python3 - "$json" <<'PY'
import json, sys
c = json.loads(sys.argv[1])["consistency"]
pause = c.get("pause") or {}
extra = f", writer paused {pause['window_ms']:.1f} ms" if pause else ""
print(f"   snapshot achieved {c['achieved']}{extra}")
PY
        check "$id" || broken=$((broken + 1))
    done
    echo "   $level: $broken of $trials restores broke the invariant"
    if [ "$level" != none ] && [ "$broken" != 0 ]; then
        echo "demo: FAILED, a $level snapshot broke the invariant"; exit 1
    fi
done
$ff snapshots
echo "capture demo: OK (crash and filesystem kept the invariant in every restore)"
