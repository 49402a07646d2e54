"""Benchmark of `[run] scale = "deadline"`: billed replica-seconds against a fixed-replica run
of the same job, and against the ideal (not part of the default test run).

    python tests/perf/bench_deadline.py [--rows 3000] [--fixed 3] [--slack 1.6]
        [--concurrency 32] [--env BATCHRUN_ECHO_...=VALUE ...]

Starts `batchrun serve` with a temporary state dir and the echo endpoint with its capacity
model (by default 4 requests at once per replica, 100 ms each: 40 rows/s per replica, and a
2 s start; `--env` overrides), then runs the same job twice through `arun_job`:

1. fixed: the endpoint at `--fixed` replicas (min = max), no deadline: its duration T;
2. deadline: `scale = "deadline"`, `max_replicas = --fixed`, the deadline `--slack` × T
   from its start, on the endpoint's own scaling (1 replica).

Prints for each: seconds, rows/s, billed replica-seconds (the price is set to $3,600 per
replica-hour, so dollars are replica-seconds; billing quantum 0.1 s), and for the deadline
run the replicas asked and ready over time, the measured rate per replica and cold start, the ideal
(rows ÷ rate per replica + one cold start per added replica) with the ratio billed / ideal
(the issue's goal: within 10 %), and deadline / fixed replica-seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from batchrun.endpoints import SyncEndpointsClient
from batchrun.errors import BatchrunError
from batchrun.job import Job
from batchrun.runner import arun_job
from tests.conftest import start_local_service
from tests.support.lifecycle import ECHO, job_sections


class Asks(logging.Handler):
    """The scaler's INFO lines "N replica(s) for the deadline", with their times."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.asks: list[tuple[float, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "for the deadline" in str(record.msg) and record.args:
            assert isinstance(record.args, tuple)
            self.asks.append((record.created, int(record.args[2])))


def _run(sections: dict[str, dict[str, Any]], tmp: Path, name: str) -> tuple[float, Any]:
    job = Job.from_dict(sections, source=f"<bench {name}>")
    start = time.monotonic()
    summary = asyncio.run(arun_job(job, progress=False))
    return time.monotonic() - start, summary


def _watch_ready(service: Any, done: threading.Event, ready: list[tuple[float, int]]) -> None:
    """Note the deadline endpoint's ready replicas each time they change."""
    with SyncEndpointsClient(api_url=service.api_url, token=service.token) as api:
        while not done.wait(0.25):
            try:
                n = api.get("bench").ready_replica or 0
            except BatchrunError:  # a failed read: the next one will do
                continue
            if not ready or ready[-1][1] != n:
                ready.append((time.time(), n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--fixed", type=int, default=3)
    parser.add_argument("--slack", type=float, default=1.6)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    env = {
        "BATCHRUN_ECHO_MAX_BATCH": "4",
        "BATCHRUN_ECHO_BASE_MS": "100",
        "BATCHRUN_ECHO_START_DELAY_MS": "2000",
    }
    env.update(dict(item.split("=", 1) for item in args.env))
    ready: list[tuple[float, int]] = []  # (time, ready replicas) when it changes

    asks = Asks()
    logging.getLogger("batchrun.lifecycle.scaler").addHandler(asks)
    logging.getLogger("batchrun.lifecycle.scaler").setLevel(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ["BATCHRUN_HOME"] = str(tmp / "home")
        service = start_local_service(tmp / "service", minute=60.0)
        try:
            os.environ["HF_TOKEN"] = service.token
            with SyncEndpointsClient(api_url=service.api_url, token=service.token) as api:
                api.create("bench", repository=ECHO, task="text-generation", env=env)
                api.wait("bench", timeout=60, refresh_every=0.1)
                api.update("bench", min_replica=args.fixed, max_replica=args.fixed)
                api.wait("bench", timeout=60, refresh_every=0.1)
                api.pause("bench")
            common: dict[str, Any] = {
                "run": {"concurrency": args.concurrency, "grace_period": 1},
                "output": {"commit_seconds": 1.0},
                "budget": {"price_per_hour": 3600.0, "billing_quantum_s": 0.1},
            }
            fixed_dir = tmp / "fixed"
            fixed_dir.mkdir()
            fixed = job_sections(service.api_url, "bench", fixed_dir, rows=args.rows, **common)
            fixed_s, fixed_sum = _run(fixed, fixed_dir, "fixed")
            with SyncEndpointsClient(api_url=service.api_url, token=service.token) as api:
                api.update("bench", min_replica=1, max_replica=1)  # its own scaling: 1 replica
            deadline = dt.datetime.now().astimezone() + dt.timedelta(seconds=fixed_s * args.slack)
            scaled_dir = tmp / "deadline"
            scaled_dir.mkdir()
            scaled = job_sections(service.api_url, "bench", scaled_dir, rows=args.rows, **common)
            scaled["run"].update(scale="deadline", max_replicas=args.fixed)
            scaled["budget"]["deadline"] = deadline.isoformat()
            began = time.time()
            done = threading.Event()
            watcher = threading.Thread(
                target=_watch_ready, args=(service, done, ready), daemon=True
            )
            watcher.start()
            try:
                scaled_s, scaled_sum = _run(scaled, scaled_dir, "deadline")
            finally:
                done.set()
                watcher.join(timeout=5)
        finally:
            service.stop()

    def line(name: str, seconds: float, s: Any) -> str:
        return (
            f"{name:>9}: {seconds:6.1f} s, {s.rows_per_s:7.1f} rows/s, "
            f"{s.cost_usd:8.1f} replica-s billed, exit {s.exit_code}"
        )

    print(f"rows {args.rows}, concurrency {args.concurrency}, echo {env}")
    print(line(f"fixed {args.fixed}", fixed_s, fixed_sum))
    print(line("deadline", scaled_s, scaled_sum))
    print(
        "replicas asked over time: "
        + (", ".join(f"t+{t - began:.1f}s → {n}" for t, n in asks.asks) or "none")
    )
    print("replicas ready over time: " + ", ".join(f"t+{t - began:.1f}s {n}" for t, n in ready))
    rate, cold = scaled_sum.rows_per_s_per_replica, scaled_sum.cold_start_s or 0.0
    if rate:
        added = max((max(scaled_sum.replicas_asked or [1]) - 1), 0)
        ideal = args.rows / rate + added * cold
        print(
            f"rate per replica {rate:.1f} rows/s, cold start {cold:.1f} s; ideal {ideal:.1f} "
            f"replica-s; billed / ideal = {scaled_sum.cost_usd / ideal:.2f}; "
            f"deadline / fixed replica-s = {scaled_sum.cost_usd / fixed_sum.cost_usd:.2f}"
        )


if __name__ == "__main__":
    main()
