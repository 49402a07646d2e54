"""Sharded runs with the local executor (`batchrun run JOB --workers W`), end to end against
the test endpoint: every id once, through kills of a worker and of the driver, C never
exceeded, signals, a second driver refused."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from batchrun.shards.plan import ShardPlan
from tests.support.endpoint_app import EndpointApp
from tests.support.run import finish, job_sections, read_jsonl, start_run, write_job, write_jsonl
from tests.support.waiting import wait_for

ROWS = 600


def _job(tmp_path: Path, url: str, *, rows: int = ROWS, **run: Any) -> Path:
    data = write_jsonl(tmp_path / "in.jsonl", [{"text": f"t{i}"} for i in range(rows)])
    sections = job_sections(url, str(data), str(tmp_path / "out.jsonl"), run=run)
    return write_job(tmp_path / "job.toml", sections)


def _ids(tmp_path: Path) -> list[Any]:
    rows = read_jsonl(tmp_path / "out.jsonl") + read_jsonl(tmp_path / "out.errors.jsonl")
    return [r["id"] for r in rows]


def _workers(driver: int) -> list[psutil.Process]:
    """The driver's worker processes."""
    try:
        return [
            p for p in psutil.Process(driver).children() if "batchrun.shards.worker" in p.cmdline()
        ]
    except psutil.NoSuchProcess:
        return []


def _alive(pids: list[int]) -> bool:
    alive = []
    for pid in pids:
        try:
            alive.append(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            alive.append(False)
    return any(alive)


def test_sharded_run_completes_every_id_once_within_c(
    endpoint_app: EndpointApp, tmp_path: Path
) -> None:
    endpoint_app.configure(latency_ms=5)
    job = _job(tmp_path, endpoint_app.url, concurrency=6, workers=3)  # [run] workers
    code, summary, err = finish(start_run(job))
    assert code == 0, err
    assert summary["succeeded"] == ROWS and summary["pending"] == 0
    assert sorted(_ids(tmp_path)) == list(range(ROWS))
    assert endpoint_app.stats()["max_in_flight"] <= 6
    plan = ShardPlan.load(tmp_path / "out.jsonl.batchrun")
    assert plan is not None and plan.merged and len(plan.shards) >= 12
    # a second run finds nothing to do and sends nothing
    before = endpoint_app.stats()["requests"]
    code, summary, err = finish(start_run(job))
    assert code == 0, err
    assert summary["rows"] == 0 and endpoint_app.stats()["requests"] == before


def _committed(tmp_path: Path) -> int:
    """Rows committed in the shards' own run states."""
    from batchrun.io.state import RunState

    plan = ShardPlan.load(tmp_path / "out.jsonl.batchrun")
    assert plan is not None
    total = 0
    for shard in plan.shards:
        state = tmp_path / "out.jsonl.batchrun" / "shards" / str(shard.index)
        view = RunState.peek(state / "results.jsonl.batchrun")
        if view is not None:
            total += view.committed.results_count + view.committed.errors_count
    return total


def test_kill_of_one_worker_at_40_percent_still_completes(
    endpoint_app: EndpointApp, tmp_path: Path
) -> None:
    endpoint_app.configure(latency_ms=20)
    job = _job(tmp_path, endpoint_app.url, concurrency=6)
    proc = start_run(job, "--workers", "3")
    wait_for(lambda: endpoint_app.stats()["requests"] >= ROWS * 0.4, 60, "40 % sent")
    victim = _workers(proc.pid)[0]
    victim.kill()
    code, _, err = finish(proc)
    assert code == 0, err
    assert sorted(_ids(tmp_path)) == list(range(ROWS))
    assert endpoint_app.stats()["max_in_flight"] <= 6


def test_kill_of_the_driver_stops_the_workers_and_a_plain_rerun_resumes(
    endpoint_app: EndpointApp, tmp_path: Path
) -> None:
    endpoint_app.configure(latency_ms=20)
    job = _job(tmp_path, endpoint_app.url, concurrency=4)
    proc = start_run(job, "--workers", "2")
    wait_for(lambda: endpoint_app.stats()["requests"] >= ROWS * 0.4, 60, "40 % sent")
    pids = [p.pid for p in _workers(proc.pid)]
    assert pids
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    wait_for(lambda: not _alive(pids), 10, "no worker alive 10 s after the driver's kill -9")
    done_before = _committed(tmp_path)
    plan = ShardPlan.load(tmp_path / "out.jsonl.batchrun")
    assert plan is not None and 0 < done_before < ROWS
    code, summary, err = finish(start_run(job))  # without --workers: the rest in one process
    assert code == 0, err
    assert summary["rows"] == ROWS - done_before  # only what was not committed is sent
    assert sorted(_ids(tmp_path)) == list(range(ROWS))


def test_sigterm_exits_143_and_a_second_driver_is_refused(
    endpoint_app: EndpointApp, tmp_path: Path
) -> None:
    endpoint_app.configure(latency_ms=50)
    job = _job(tmp_path, endpoint_app.url, concurrency=4, grace_period=5)
    proc = start_run(job, "--workers", "2")
    wait_for(lambda: endpoint_app.stats()["requests"] >= 20, 60, "the run sending")
    code, summary, _ = finish(start_run(job, "--workers", "2"))
    assert code == 8 and "another run" in summary["error"]
    from batchrun.io.runs import RunIndex

    live = [entry.output for entry, _ in RunIndex().live()]  # `batchrun status`: one run
    assert live == [str((tmp_path / "out.jsonl").resolve())]
    pids = [p.pid for p in _workers(proc.pid)]
    proc.send_signal(signal.SIGTERM)
    code, summary, err = finish(proc)
    assert code == 143, err
    assert summary["stop_reason"] == "sigterm" and summary["resumable"]
    assert not _alive(pids)
    endpoint_app.configure(latency_ms=5)
    code, summary, err = finish(start_run(job, "--workers", "2"))
    assert code == 0, err
    assert sorted(_ids(tmp_path)) == list(range(ROWS))


@pytest.mark.xfail(
    reason="issue 16, open: on a busy machine the other shard still sends during the hold "
    "(the relay through the driver's pipe is late or lost); passes on a quiet one",
    strict=False,
)
def test_a_retry_after_seen_by_one_shard_holds_every_shard(
    endpoint_app: EndpointApp, tmp_path: Path
) -> None:
    endpoint_app.configure(latency_ms=10)
    job = _job(tmp_path, endpoint_app.url, concurrency=4)
    proc = start_run(job, "--workers", "2")
    wait_for(lambda: endpoint_app.stats()["requests"] >= 60, 60, "the run sending")
    asked = time.time()
    endpoint_app.configure(throttle_first=1, retry_after="4")  # the next request: 429, 4 s
    code, _, err = finish(proc)
    assert code == 0, err
    assert sorted(_ids(tmp_path)) == list(range(ROWS))
    arrivals = endpoint_app.arrivals()
    throttled = min(t for t in arrivals if t >= asked)
    # both shards held: nothing arrives while the 4 s last (the first 1.5 s cover the pipe's
    # relay and the requests in flight on a busy machine; the end, the hold's own timer)
    held = [t for t in arrivals if throttled + 1.5 < t < throttled + 3.5]
    assert held == []
    assert endpoint_app.stats()["statuses"].get("429", 0) == 1


def test_parquet_in_and_out_with_a_limit(endpoint_app: EndpointApp, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.support.run import read_results

    data = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": [f"t{i}" for i in range(500)]}), data, row_group_size=40)
    out = tmp_path / "out.parquet"
    job = write_job(tmp_path / "job.toml", job_sections(endpoint_app.url, str(data), str(out)))
    code, summary, err = finish(start_run(job, "--workers", "2", "--limit", "300"))
    assert code == 0, err
    assert summary["succeeded"] == 300 and summary["input_rows"] == 300
    assert sorted(r["id"] for r in read_results(out)) == list(range(300))
    assert endpoint_app.stats()["requests"] == 300


def test_run_job_refuses_a_sharded_output(endpoint_app: EndpointApp, tmp_path: Path) -> None:
    import batchrun
    from batchrun.errors import JobError
    from batchrun.job import load_job

    job = _job(tmp_path, endpoint_app.url, rows=50, workers=2)
    with pytest.raises(JobError, match="sharded run"):
        batchrun.run_job(load_job(job), progress=False)
    assert endpoint_app.stats()["requests"] == 0
