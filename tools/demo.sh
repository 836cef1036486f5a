#!/usr/bin/env bash
# The main job end to end on the embedded default (a local repository): create a sample tree,
# back it up, change it, back it up again, restore the latest snapshot, and verify that the
# restored tree equals the source, content and metadata, then verify the repository's data.
set -euo pipefail
cd "$(dirname "$0")/.."
ff=.venv/bin/freezeframe
work=$PWD/demo-work
rm -rf "$work"
mkdir -p "$work/source/docs" "$work/source/data/nested/deeper"
export FREEZEFRAME_REPOSITORY=$work/repository
export FREEZEFRAME_PASSWORD=demo-password-change-me
export XDG_CACHE_HOME=$work/cache

echo "== sample tree in $work/source"
python3 - "$work/source" <<'PY'
import os, random, sys
root = sys.argv[1]
rnd = random.Random(42)
words = "consistent snapshot backup freeze thaw restore volume chunk index pack".split()
for i in range(200):
    with open(f"{root}/docs/note-{i:03}.txt", "w") as f:
        f.write(" ".join(rnd.choice(words) for _ in range(rnd.randint(10, 4000))) + "\n")
with open(f"{root}/data/random.bin", "wb") as f:
    f.write(rnd.randbytes(24 * 1024 * 1024))
with open(f"{root}/data/nested/deeper/copy.bin", "wb") as f:   # duplicate content
    f.write(open(f"{root}/data/random.bin", "rb").read())
with open(f"{root}/data/sparse.img", "wb") as f:                # holes stay holes
    f.truncate(64 * 1024 * 1024)
    f.seek(32 * 1024 * 1024)
    f.write(b"in the middle of nowhere")
os.symlink("docs/note-000.txt", f"{root}/link-to-note")
os.link(f"{root}/docs/note-001.txt", f"{root}/hardlink-to-note")
open(os.fsencode(root) + b"/odd name \n\t \xff.txt", "wb").write(b"odd names survive\n")
os.mkfifo(f"{root}/a-fifo")
PY
sleep 2  # the files cache trusts only files untouched for 2 s
setfattr -n user.demo -v "xattrs survive" "$work/source/docs/note-002.txt" 2>/dev/null || true

echo "== init"
$ff init --argon2-memory 64
echo "== first backup"
$ff backup "$work/source" --tag demo
echo "== change a file, add one, back up again (unchanged files are not read)"
echo "appended line" >> "$work/source/docs/note-010.txt"
echo "new file" > "$work/source/docs/new.txt"
$ff backup "$work/source" --tag demo
$ff snapshots
echo "== restore latest"
$ff restore latest --target "$work/restore"
echo "== verify"
python3 - "$work/source" "$work/restore$work/source" <<'PY'
import os, sys
def manifest(root):
    out = {}
    for dirpath, dirs, files in os.walk(os.fsencode(root)):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, os.fsencode(root))
            data = None
            if os.path.isfile(path) and not os.path.islink(path):
                data = open(path, "rb").read()
            elif os.path.islink(path):
                data = os.readlink(path)
            xattrs = {k: os.getxattr(path, k, follow_symlinks=False)
                      for k in os.listxattr(path, follow_symlinks=False)}
            size = None if os.path.isdir(path) and not os.path.islink(path) else st.st_size
            out[rel] = (st.st_mode, st.st_uid, st.st_gid, size, st.st_mtime_ns, data, xattrs)
    return out
src, dst = manifest(sys.argv[1]), manifest(sys.argv[2])
bad = [k for k in src.keys() | dst.keys() if src.get(k) != dst.get(k)]
if bad:
    sys.exit(f"demo: MISMATCH in {len(bad)} entries, e.g. {bad[:3]}")
sparse = os.stat(os.path.join(sys.argv[2], "data/sparse.img"))
if sparse.st_blocks * 512 > 1024 * 1024:
    sys.exit("demo: the sparse file was restored without its holes")
a = os.stat(os.path.join(sys.argv[2], "docs/note-001.txt"))
b = os.stat(os.path.join(sys.argv[2], "hardlink-to-note"))
if a.st_ino != b.st_ino:
    sys.exit("demo: the hardlink was not restored as a link")
print(f"restored tree matches the source: {len(src)} entries, content and metadata")
PY
echo "== check --read-data"
$ff check --read-data
./tools/demo-capture.sh
./tools/demo-postgresql.sh
echo "demo: OK"
