"""The input-order rewrite (`[output] order = "input"`) of 1,000,000 rows: time and peak RSS.

It writes a ``--rows``-row JSONL input, commits every row through the `Ledger` the runner uses
with ``order = "input"`` (``--commit-rows`` a commit, the job default), completing rows out of
order as a run does: each row completes at a random point within a window of ``--window`` rows
after it is read (a slow row: later), and one row in ``--error-every`` goes to the errors file.
Then, in a fresh process each (the median of ``--repeat`` is shown), it opens the ledger and

- baseline: closes it (what opening costs, and the RSS of the process without a rewrite);
- rewrite: calls `Ledger.reorder()`, the rewrite a finished run makes (the rewrite is undone
  by restoring copies of the outputs and the state before the next repeat);

and prints the rewrite's wall time and the peak RSS of both processes, and their difference.
Goal: under 10 s and under 150 MB for 1,000,000 rows. It checks the rewritten results are in
input order, each row once.

    .venv/bin/python tests/perf/bench_reorder.py                      # 1,000,000 rows, JSONL
    .venv/bin/python tests/perf/bench_reorder.py --format parquet
    .venv/bin/python tests/perf/bench_reorder.py --rows 100000        # a quick look
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from batchrun.io.ledger import Ledger  # noqa: E402
from batchrun.io.readers import open_input  # noqa: E402
from batchrun.job import load_job  # noqa: E402
from tests.support.run import job_sections, write_job  # noqa: E402


def write_input(path: Path, rows: int) -> None:
    with open(path, "wb") as f:
        for lo in range(0, rows, 100_000):
            hi = min(lo + 100_000, rows)
            f.write(b"".join(orjson.dumps({"text": f"row {i:07d} of the bench input"})
                             + b"\n" for i in range(lo, hi)))  # fmt: skip


def commit_all(job_file: Path, *, window: int, error_every: int, seed: int = 1) -> float:
    """Commit every row, completing each at a random point of the window after it; seconds."""
    job = load_job(job_file)
    reader = open_input(job.input, limit=job.run.limit)
    rng = random.Random(seed)
    start = time.perf_counter()
    ledger = Ledger(job, reader)
    ledger.begin()
    open_rows: list[int] = []

    def complete(seq: int) -> None:
        if seq % error_every == 0:
            ledger.add_error(seq, {"id": seq, "status": "http_400", "error": "bad", "row": seq})
        else:
            ledger.add_result(seq, {"id": seq, "generated_text": f"echo: row {seq}"})
        if ledger.pending >= job.output.commit_rows:
            ledger.commit()

    try:
        for row in reader.rows():
            ledger.track(row.seq, row.pos)
            open_rows.append(row.seq)
            if len(open_rows) >= window:
                i = rng.randrange(len(open_rows))
                open_rows[i], open_rows[-1] = open_rows[-1], open_rows[i]
                complete(open_rows.pop())
        rng.shuffle(open_rows)
        for seq in open_rows:
            complete(seq)
        ledger.commit()
    finally:
        ledger.close()
    return time.perf_counter() - start


def child(mode: str, job_file: Path) -> None:
    """In a fresh process: open the ledger, rewrite (or not), print seconds and peak RSS."""
    job = load_job(job_file)
    reader = open_input(job.input, limit=job.run.limit)
    ledger = Ledger(job, reader)
    start = time.perf_counter()
    try:
        if mode == "rewrite" and not ledger.reorder():
            raise SystemExit("nothing was rewritten")
    finally:
        ledger.close()
    took = time.perf_counter() - start
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(orjson.dumps({"s": took, "rss_mb": peak_rss_mb(), "maxrss_mb": maxrss}).decode())


def peak_rss_mb() -> float:
    """This process's peak RSS. On Linux VmHWM: `ru_maxrss` of a child keeps the parent's
    peak across fork and exec (this script's parent holds ~150 MB after committing 1,000,000
    rows), so it showed the parent's size, not the rewrite's."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_child(mode: str, job_file: Path) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(job_file)],
        env=env,
        check=True,
        capture_output=True,
    ).stdout
    data: dict[str, float] = orjson.loads(out)
    return data


def check_order(output: Path, rows: int, error_every: int) -> None:
    if output.is_dir():
        import pyarrow.parquet as pq

        ids = [i for p in sorted(output.glob("part-*")) for i in pq.read_table(p)["id"].to_pylist()]
    else:
        with open(output, "rb") as f:
            ids = [orjson.loads(line)["id"] for line in f]
    want = [i for i in range(rows) if i % error_every]
    assert ids == want, "the rewritten results are not in input order, each row once"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--format", choices=["jsonl", "parquet"], default="jsonl")
    parser.add_argument("--commit-rows", type=int, default=1000)
    parser.add_argument("--window", type=int, default=4000)
    parser.add_argument("--error-every", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "JOB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return
    print(f"python {platform.python_version()}, {os.cpu_count()} cores, rows {args.rows:,}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        inp = tmp / "in.jsonl"
        write_input(inp, args.rows)
        output = tmp / f"out/r.{args.format}"
        job_file = write_job(
            tmp / "job.toml",
            job_sections(
                "http://127.0.0.1:9/",
                str(inp),
                str(output),
                output={"order": "input", "commit_rows": args.commit_rows},
            ),
        )
        took = commit_all(job_file, window=args.window, error_every=args.error_every)
        print(
            f"committed {args.rows:,} rows out of order ({args.commit_rows} a commit): {took:.1f} s"
        )
        saved = tmp / "saved"
        saved.mkdir()
        names = [output.name, output.name + ".batchrun", "r.errors.jsonl"]
        for name in names:
            src = output.parent / name
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, saved / name)
        base, rewrite = [], []
        for _ in range(args.repeat):
            base.append(run_child("baseline", job_file))
            rewrite.append(run_child("rewrite", job_file))
            check_order(output, args.rows, args.error_every)
            for name in names:
                dst = output.parent / name
                if dst.is_dir():
                    shutil.rmtree(dst)
                else:
                    dst.unlink()
                src = saved / name
                (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
        s = statistics.median(r["s"] for r in rewrite)
        rss = statistics.median(r["rss_mb"] for r in rewrite)
        rss0 = statistics.median(r["rss_mb"] for r in base)
        print(f"rewrite ({args.format}): {s:.2f} s (median of {args.repeat}); goal < 10 s")
        print(
            f"peak RSS: rewrite {rss:.0f} MB, baseline (open + close) {rss0:.0f} MB, "
            f"difference {rss - rss0:.0f} MB, ratio {rss / rss0:.2f}; goal < 150 MB"
        )
        maxrss = statistics.median(r["maxrss_mb"] for r in rewrite)
        print(f"(ru_maxrss of the same rewrite, which keeps this parent's peak: {maxrss:.0f} MB)")


if __name__ == "__main__":
    main()
