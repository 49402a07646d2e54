"""Resume time with 1,000,000 rows committed: untouched, after a `touch`, and after an append.

It writes a ``--rows``-row JSONL input (about 60 bytes a row), commits every row through the
`Ledger` the runner uses (the same commits, covers and hashes a real run makes, without sending
requests), then runs ``python -m batchrun run JOB --quiet`` as a real process (``provider =
"url"``, the test endpoint `tests.support.endpoint_app` in its own process on 127.0.0.1) and
measures, each ``--repeat`` times (the median is shown):

- untouched: the input as committed (size and mtime as recorded: no hash) → time to exit 0
  with nothing sent;
- touched: ``os.utime`` gives the input a new mtime → every committed byte is hashed again →
  time to exit 0 with nothing sent;
- appended: ``--append`` rows added at the end (a new size and mtime: the committed part is
  hashed) → time from the start of the process to the first request the endpoint receives.

It also times the content check alone (opening the `Ledger`: the run state, the input's covers)
untouched and touched, in this process, and prints each figure and the ratio touched /
untouched. The resume goal is 2 s to the first request (or to "nothing to do").

    .venv/bin/python tests/perf/bench_resume.py                  # 1,000,000 rows
    .venv/bin/python tests/perf/bench_resume.py --rows 100000    # a quick look
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ["NO_PROXY"] = "127.0.0.1,localhost"

import orjson  # noqa: E402

from batchrun.io.ledger import Ledger  # noqa: E402
from batchrun.io.readers import open_input  # noqa: E402
from batchrun.job import load_job  # noqa: E402
from tests.support.endpoint_app import EndpointProcess  # noqa: E402
from tests.support.run import job_sections, write_job  # noqa: E402

COMMIT = 1000


def write_input(path: Path, rows: int, start: int = 0, pad: int = 0) -> None:
    fill = "x" * pad
    with open(path, "ab") as f:
        for lo in range(start, start + rows, 100_000):
            hi = min(lo + 100_000, start + rows)
            f.write(b"".join(orjson.dumps({"text": f"row {i:07d} of the bench input{fill}"})
                             + b"\n" for i in range(lo, hi)))  # fmt: skip


def commit_all(job_file: Path, *, covers: bool = True) -> float:
    """Commit every input row as a result, as a run would; the CPU seconds it took (wall
    time here is mostly fsync, whose noise would hide the covers' cost).

    Without `covers`, the ledger keeps no input covers (as before content checks): the
    baseline of what covers cost per commit.
    """
    job = load_job(job_file)
    reader = open_input(job.input, limit=job.run.limit)
    start = time.process_time()
    ledger = Ledger(job, reader)
    ledger.begin()
    if not covers:
        ledger._coverage = None  # the baseline only
    try:
        for row in reader.rows():
            ledger.track(row.seq, row.pos)
            ledger.add_result(row.seq, {"id": row.seq, "generated_text": "x"})
            if ledger.pending >= COMMIT:
                ledger.commit()
        ledger.commit()
    finally:
        ledger.close()
    return time.process_time() - start


def open_ledger(job_file: Path) -> float:
    """Seconds to open the ledger: the fingerprint and the content check."""
    job = load_job(job_file)
    reader = open_input(job.input, limit=job.run.limit)
    start = time.perf_counter()
    Ledger(job, reader).close()
    return time.perf_counter() - start


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_cli(
    job_file: Path, endpoint: EndpointProcess, *args: str
) -> tuple[float, float | None, float]:
    """(seconds to exit, seconds to the first request or None, CPU seconds) of one run."""
    before = len(endpoint.arrivals())
    cpu = _child_cpu()
    wall = time.time()
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "batchrun", *(args or ("run", str(job_file), "--quiet"))],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=600,
    )
    took = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"run failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    arrivals = endpoint.arrivals()[before:]
    first = min(arrivals) - wall if arrivals else None
    return took, first, _child_cpu() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--append", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pad", type=int, default=0, help="extra bytes of text per row")
    parser.add_argument(
        "--commit-rows", type=int, default=1000, help="rows per commit (the job default)"
    )
    args = parser.parse_args()
    global COMMIT
    COMMIT = args.commit_rows
    print(f"python {platform.python_version()}, {os.cpu_count()} cores, rows {args.rows:,}")
    with tempfile.TemporaryDirectory() as d, EndpointProcess() as endpoint:
        tmp = Path(d)
        inp = tmp / "in.jsonl"
        write_input(inp, args.rows, pad=args.pad)
        print(f"input {inp.stat().st_size / 1e6:.1f} MB")
        base_job = write_job(
            tmp / "base.toml",
            job_sections(endpoint.url, str(inp), str(tmp / "base/r.jsonl")),
        )
        job_file = write_job(
            tmp / "job.toml",
            job_sections(endpoint.url, str(inp), str(tmp / "out/r.jsonl")),
        )
        without = commit_all(base_job, covers=False)
        with_covers = commit_all(job_file)
        print(
            f"commit {args.rows:,} rows through the ledger, {COMMIT} a commit: "
            f"{with_covers:.2f} s CPU with covers, {without:.2f} s without "
            f"(x{with_covers / without:.2f})"
        )

        check_plain = statistics.median(open_ledger(job_file) for _ in range(args.repeat))
        touched = []
        for i in range(args.repeat):
            os.utime(inp, ns=(i + 1, i + 1))  # a new mtime each time: a hash each time
            touched.append(open_ledger(job_file))
        check_touched = statistics.median(touched)
        print(
            f"content check alone: untouched {check_plain:.3f} s, touched {check_touched:.3f} s "
            f"(x{check_touched / check_plain:.1f})"
        )

        startup = [run_cli(job_file, endpoint, "--version") for _ in range(args.repeat)]
        untouched_runs = [run_cli(job_file, endpoint) for _ in range(args.repeat)]
        touched_runs = []
        for i in range(args.repeat):
            os.utime(inp, ns=(10 + i, 10 + i))
            touched_runs.append(run_cli(job_file, endpoint))
        base = statistics.median(r[0] for r in startup)
        base_cpu = statistics.median(r[2] for r in startup)
        plain = statistics.median(r[0] for r in untouched_runs)
        plain_cpu = statistics.median(r[2] for r in untouched_runs)
        touched_s = statistics.median(r[0] for r in touched_runs)
        touched_cpu = statistics.median(r[2] for r in touched_runs)
        print(f"batchrun --version (start-up baseline): {base:.2f} s wall, {base_cpu:.2f} s CPU")
        print(
            f"batchrun run, nothing to do: untouched {plain:.2f} s wall / {plain_cpu:.2f} s CPU, "
            f"touched {touched_s:.2f} s / {touched_cpu:.2f} s CPU "
            f"(touched / untouched: x{touched_s / plain:.2f} wall, "
            f"x{touched_cpu / plain_cpu:.2f} CPU)"
        )

        firsts = []
        for i in range(args.repeat):
            write_input(inp, args.append, start=args.rows + i * args.append)
            _, first, _ = run_cli(job_file, endpoint)
            if first is None:
                sys.exit("no request arrived after the append")
            firsts.append(first)
        first_s = statistics.median(firsts)
        sent = endpoint.stats()["requests"]
        print(
            f"batchrun run after {args.append} rows appended: first request at {first_s:.2f} s "
            f"(x{first_s / plain:.2f} of the untouched nothing-to-do run); "
            f"requests sent over all runs {sent} (expected {args.append * args.repeat})"
        )


if __name__ == "__main__":
    main()
