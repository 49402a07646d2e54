"""Benchmark of the endpoint lifecycle's tail and idle billing (not part of the default test run).

    .venv/bin/python tests/perf/bench_lifecycle.py [--rows 5000] [--latency-ms 50] [--concurrency 64]

Starts `batchrun serve` on a free port with a temporary state dir, creates the echo endpoint
with the given latency and pauses it, then runs a job of N rows through `arun_job` (the real
runner, pool and lease) with a 10 ms billing quantum (so that quantum rounding does not hide
idle time) and prints:

- the time from the last result to the pause request (goal <= 1 s), and to the pause confirmed;
- billed seconds, idle billed seconds, the readiness wait, and the idle share beyond the
  readiness wait (goal <= 1 %).

The figures come from the lease's own INFO log records (the meter's readings), captured here.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from batchrun.endpoints import SyncEndpointsClient
from batchrun.job import Job
from batchrun.runner import arun_job
from tests.conftest import start_local_service
from tests.support.lifecycle import ECHO, job_sections


class Capture(logging.Handler):
    """Keeps the lease's log records, for their arguments."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def find(self, prefix: str) -> logging.LogRecord:
        for record in self.records:
            if str(record.msg).startswith(prefix):
                return record
        raise LookupError(f"no log record {prefix!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ["BATCHRUN_HOME"] = str(tmp / "home")
        service = start_local_service(tmp / "service", minute=60.0)
        try:
            os.environ["HF_TOKEN"] = service.token
            with SyncEndpointsClient(api_url=service.api_url, token=service.token) as api:
                env = {"BATCHRUN_ECHO_LATENCY_MS": str(args.latency_ms)}
                api.create("bench", repository=ECHO, task="text-generation", env=env)
                api.wait("bench", timeout=60, refresh_every=0.1)
                api.pause("bench")
            sections = job_sections(
                service.api_url,
                "bench",
                tmp,
                rows=args.rows,
                run={"concurrency": args.concurrency, "grace_period": 10},
                output={"commit_seconds": 1.0},
                budget={"price_per_hour": 1.0, "billing_quantum_s": 0.01},
            )
            job = Job.from_dict(sections, source="bench")
            summary, capture, wall = asyncio.run(run(job))
        finally:
            service.stop()
    report(args, summary, capture, wall)


async def run(job: Job) -> tuple[Any, Capture, float]:
    capture = Capture()
    lease_log = logging.getLogger("batchrun.lifecycle")  # the lease and its cost
    lease_log.addHandler(capture)
    lease_log.setLevel(logging.INFO)
    start = time.perf_counter()
    try:
        summary = await arun_job(job, progress=False)
    finally:
        lease_log.removeHandler(capture)
    return summary, capture, time.perf_counter() - start


def report(args: argparse.Namespace, summary: Any, capture: Capture, wall: float) -> None:
    tail = capture.find("last result →")
    assert isinstance(tail.args, tuple)
    tail_ms = float(tail.args[1])
    final = capture.find("%s/%s %s; billed")
    assert isinstance(final.args, tuple)
    billed, idle, ready_wait = (float(x) for x in final.args[3:6])
    beyond = max(idle - ready_wait, 0.0)
    print(
        f"rows {summary.succeeded}/{args.rows} at {args.latency_ms:g} ms, C={args.concurrency}: "
        f"{summary.rows_per_s:,.0f} rows/s, run {summary.elapsed_s:.2f}s, wall {wall:.2f}s, "
        f"exit {summary.exit_code}, endpoint {summary.endpoint_state_at_exit}"
    )
    print(f"last result -> pause request: {tail_ms:.0f} ms (goal <= 1000 ms)")
    print(
        f"billed {billed:.2f}s, idle {idle:.2f}s, of which readiness wait {ready_wait:.2f}s; "
        f"idle beyond readiness {beyond:.3f}s = {100 * beyond / billed:.2f}% of billed "
        f"(goal <= 1%)"
    )


if __name__ == "__main__":
    main()
