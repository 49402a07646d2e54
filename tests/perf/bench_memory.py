"""Peak memory of `batchrun run` as the input grows, and the time to resume a big run.

For each output format (JSONL file, Parquet directory) and each row count, it runs
`batchrun run` (text-generation, the `inputs` request format) as a real process against the
test endpoint (`tests.support.endpoint_app`, its own process, 0 ms latency) and reads the run's peak
RSS from `wait4` (the endpoint's memory is not counted). Then it runs the same job again with
every row committed and times the resume: the whole process (Python start included) and the
runner's own `elapsed_s`.

The goal: peak RSS at the largest count within 1.2x of the smallest, under 150 MB; resuming
with 1,000,000 rows committed within 2 s.

    .venv/bin/python tests/perf/bench_memory.py                       # 10,000 and 1,000,000 rows
    .venv/bin/python tests/perf/bench_memory.py --rows 10000 100000 --batch-size 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ["NO_PROXY"] = "127.0.0.1,localhost"

import orjson  # noqa: E402

from tests.support.endpoint_app import EndpointProcess  # noqa: E402


@dataclass
class Result:
    output: str
    rows: int
    peak_rss_mb: float
    run_s: float
    rows_per_s: float
    resume_wall_s: float
    resume_runner_s: float
    resume_rss_mb: float


def write_input(path: Path, rows: int) -> None:
    with open(path, "wb") as f:
        chunk: list[bytes] = []
        for i in range(rows):
            chunk.append(orjson.dumps({"id": i, "text": f"the input row number {i}"}) + b"\n")
            if len(chunk) == 10_000:
                f.write(b"".join(chunk))
                chunk.clear()
        f.write(b"".join(chunk))


def write_job(path: Path, url: str, inp: Path, out: Path, args: argparse.Namespace) -> None:
    id_line = 'id_field = "id"\n' if args.id_field else ""
    path.write_text(
        f'[endpoint]\nprovider = "url"\nurl = "{url}"\ntask = "text-generation"\n'
        f'[input]\npath = "{inp}"\nfield = "text"\n{id_line}'
        f'[output]\npath = "{out}"\n'
        f"[run]\nconcurrency = {args.concurrency}\nbatch_size = {args.batch_size}\n"
        "[run.parameters]\nmax_new_tokens = 16\n"
    )


def run_measured(job: Path) -> tuple[dict[str, object], float, float]:
    """Run `batchrun run` to the end; return its summary, peak RSS (MB) and wall time (s)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "batchrun", "run", str(job), "--quiet"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.DEVNULL,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise SystemExit(f"batchrun run exited {proc.returncode}: {text[-500:]!r}")
    rss_mb = usage.ru_maxrss / 1024 if sys.platform != "darwin" else usage.ru_maxrss / 2**20
    return orjson.loads(text), rss_mb, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--outputs", nargs="+", default=["jsonl", "parquet"])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--batch-size", type=int, default=16, help="rows per request (1 = one row a request)"
    )
    parser.add_argument("--id-field", action="store_true", help="use id_field (on-disk id index)")
    args = parser.parse_args()

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp, EndpointProcess() as app:
        base = Path(tmp)
        for rows in args.rows:
            inp = base / f"in-{rows}.jsonl"
            write_input(inp, rows)
            for fmt in args.outputs:
                out = base / f"out-{rows}.{fmt}"
                job = base / f"job-{rows}-{fmt}.toml"
                write_job(job, app.url, inp, out, args)
                summary, rss, wall = run_measured(job)
                assert summary["succeeded"] == rows, summary
                resumed, resume_rss, resume_wall = run_measured(job)
                assert resumed["skipped_done"] == rows and resumed["rows"] == 0, resumed
                results.append(
                    Result(
                        output=fmt,
                        rows=rows,
                        peak_rss_mb=rss,
                        run_s=wall,
                        rows_per_s=rows / wall,
                        resume_wall_s=resume_wall,
                        resume_runner_s=float(resumed["elapsed_s"]),  # type: ignore[arg-type]
                        resume_rss_mb=resume_rss,
                    )
                )
                print(
                    f"  {fmt} {rows:,} rows: peak {rss:.1f} MB, {wall:.1f} s; "
                    f"resume {resume_wall:.2f} s",
                    file=sys.stderr,
                )

    print(
        f"# batchrun run peak memory — {dt.date.today()} — {platform.platform()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(
        f"# concurrency {args.concurrency}, batch_size {args.batch_size}, "
        f"id_field {'on' if args.id_field else 'off'}, endpoint 0 ms (own process)"
    )
    print()
    print(
        "| output | rows | peak RSS (MB) | run (s) | rows/s | resume, whole process (s) "
        "| resume, runner (s) | resume peak RSS (MB) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r.output} | {r.rows:,} | {r.peak_rss_mb:.1f} | {r.run_s:.1f} | "
            f"{r.rows_per_s:,.0f} | {r.resume_wall_s:.2f} | {r.resume_runner_s:.3f} | "
            f"{r.resume_rss_mb:.1f} |"
        )
    for fmt in args.outputs:
        peaks = [r.peak_rss_mb for r in results if r.output == fmt]
        if len(peaks) > 1:
            print(f"\n{fmt}: largest / smallest peak RSS = {max(peaks) / min(peaks):.2f}x")


if __name__ == "__main__":
    main()
