#!/usr/bin/env bash
# The disk-full trial of issue 10, as a user meets it (needs root to mount a tmpfs): the output on
# a 2 MB tmpfs, 20,000 rows, commit_rows = 500; run 1 must exit 7 with one line, then the tmpfs
# is grown and run 2 must finish with every id exactly once. JSONL and Parquet.
#   sudo bash tests/perf/enospc_trial.sh
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
export PYTHONPATH=$root
W=$(mktemp -d)
python -m tests.support.endpoint_app --port 0 --port-file "$W/port" >"$W/app.log" 2>&1 &
app=$!
trap 'kill $app; umount "$W/mnt" 2>/dev/null; rm -rf "$W"' EXIT
for _ in $(seq 50); do [ -s "$W/port" ] && break; sleep 0.2; done
port=$(cat "$W/port")
python - "$W/in.jsonl" <<'PY'
import os, sys, orjson
with open(sys.argv[1], "wb") as f:
    for i in range(20000):  # random hex: Parquet cannot squeeze it into the 2 MB
        f.write(orjson.dumps({"id": i, "text": f"row {i} " + os.urandom(100).hex()}) + b"\n")
PY
for fmt in jsonl parquet; do
    mkdir -p "$W/mnt"
    mount -t tmpfs -o size=2m tmpfs "$W/mnt" || exit 1
    cat >"$W/job.toml" <<TOML
[endpoint]
url = "http://127.0.0.1:$port"
[input]
path = "$W/in.jsonl"
id_field = "id"
field = "text"
[output]
path = "$W/mnt/r.$fmt"
commit_rows = 500
[run]
concurrency = 32
TOML
    echo "== $fmt: run 1 on a 2 MB tmpfs"
    python -m batchrun run "$W/job.toml" --quiet >"$W/s1.json"; echo "exit $?"
    mount -o remount,size=64m "$W/mnt"
    echo "== $fmt: run 2 after space is freed"
    python -m batchrun run "$W/job.toml" --quiet >"$W/s2.json"; echo "exit $?"
    python - "$W/mnt/r.$fmt" "$W/mnt/r.errors.jsonl" <<'PY'
import pathlib, sys, orjson, pyarrow.parquet as pq
out, err = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
if out.is_dir():
    ids = [r["id"] for p in sorted(out.glob("part-*.parquet"))
           for r in pq.read_table(p, columns=["id"]).to_pylist()]
else:
    ids = [orjson.loads(line)["id"] for line in out.read_bytes().splitlines()]
if err.exists():
    ids += [orjson.loads(line)["id"] for line in err.read_bytes().splitlines()]
lost, dup = 20000 - len(set(ids)), len(ids) - len(set(ids))
print(f"{out.name}: ids {len(ids)}, lost {lost}, duplicated {dup}")
sys.exit(1 if lost or dup else 0)
PY
    umount "$W/mnt"
done
