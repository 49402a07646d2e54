"""Fail fast, by the figures: requests sent and seconds to exit 5; rows in the errors file after
an outage.

Each case runs ``python -m batchrun run JOB --quiet`` as a real process (``provider = "url"``,
``id_field``, C = ``--concurrency``) over ``--rows`` rows against the test endpoint
(`tests.support.endpoint_app`, in-process on 127.0.0.1) and prints what the server counted:

- ``401``: every request without the right token gets ``401 Invalid API key``;
- ``unreachable``: the URL is a closed port on 127.0.0.1 (connection refused);
- ``non_json``: every answer is a 200 HTML page;
- ``baseline``: the same command on ``--limit 0`` (0 rows: start-up and shut-down only), so
  the time to exit 5 can be read as a difference and a ratio against it;
- ``outage``: ``--outage-rows`` rows at ``--latency-ms``; after ``--outage-after`` requests the
  server stops listening and drops every connection for ``--outage-s`` seconds (25 s, as in
  issue 12), then listens again on the same port: the exit code, rows in the errors file, and
  every id once.

    .venv/bin/python tests/perf/bench_fail_fast.py
    .venv/bin/python tests/perf/bench_fail_fast.py --rows 2000 --outage-s 3   # a quick look
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.endpoint_app import EndpointApp  # noqa: E402
from tests.support.run import (  # noqa: E402
    finish,
    job_sections,
    read_jsonl,
    start_run,
    write_job,
    write_jsonl,
)

GOOD = "bench-good-token"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(
    work: Path, url: str, rows: int, concurrency: int, *extra: str, **run: Any
) -> tuple[int, dict[str, Any], str, float]:
    write_jsonl(work / "in.jsonl", [{"id": f"r{i}", "text": f"row {i}"} for i in range(rows)])
    sections = job_sections(
        url,
        "in.jsonl",
        "out/r.jsonl",
        endpoint={"token_env": "BENCH_TOKEN"},
        input={"id_field": "id"},
        run={"concurrency": concurrency, "max_attempts": 5, "request_timeout": 10, **run},
    )
    job = write_job(work / "job.toml", sections)
    start = time.monotonic()
    code, summary, err = finish(start_run(job, "--restart", *extra), timeout=900)
    return code, summary, err, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--outage-rows", type=int, default=8_000)
    parser.add_argument("--outage-after", type=int, default=1_000)
    parser.add_argument("--outage-s", type=float, default=25.0)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    args = parser.parse_args()
    os.environ["BENCH_TOKEN"] = "bench-bad-token"
    c = args.concurrency
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, C = {c}, {args.rows:,} rows")
    print(f"{'case':<12} {'exit':>4} {'requests':>9} {'seconds':>8} {'- baseline':>10} "
          f"{'x baseline':>10} {'errors file':>11} {'pending':>8}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-ff-") as tmp:
        results: dict[str, tuple[int, int, float, int, Any]] = {}
        for case in ("baseline", "401", "unreachable", "non_json"):
            work = Path(tmp) / case
            work.mkdir()
            knobs: dict[str, Any] = {"require_token": GOOD} if case == "401" else {}
            if case == "non_json":
                knobs["bad_json_rate"] = 1.0
            with EndpointApp(**knobs) as app:
                url = f"http://127.0.0.1:{_closed_port()}" if case == "unreachable" else app.url
                extra = ("--limit", "0") if case == "baseline" else ()
                code, summary, err, seconds = _run(work, url, args.rows, c, *extra)
                requests = int(app.stats()["requests"])
            errors = len(read_jsonl(work / "out/r.errors.jsonl"))
            results[case] = (code, requests, seconds, errors, summary.get("pending"))
            if case != "baseline" and err.strip():
                print(f"  {case} stderr: {err.strip().splitlines()[-1]}")
        base = results["baseline"][2]
        for case, (code, requests, seconds, errors, pending) in results.items():
            print(f"{case:<12} {code:>4} {requests:>9,} {seconds:>8.2f} {seconds - base:>10.2f} "
                  f"{seconds / base:>10.2f} {errors:>11,} {pending!s:>8}")  # fmt: skip

        work = Path(tmp) / "outage"
        work.mkdir()
        os.environ["BENCH_TOKEN"] = GOOD
        n = args.outage_rows
        with EndpointApp(
            latency_ms=args.latency_ms, outage_after=args.outage_after, outage_s=args.outage_s
        ) as app:
            code, summary, err, seconds = _run(work, app.url, n, c)
            outages = app.outages
        ids = [r["id"] for r in read_jsonl(work / "out/r.jsonl")]
        errors = read_jsonl(work / "out/r.errors.jsonl")
        print(
            f"outage of {args.outage_s:g}s after {args.outage_after:,} requests, {n:,} rows, "
            f"C = {c}: exit {code}, {seconds:.1f}s, outages {outages}, rows in the errors file "
            f"{len(errors)}, results {len(ids):,} ({len(set(ids)):,} distinct ids)"
        )


if __name__ == "__main__":
    main()
