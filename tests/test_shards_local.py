"""Sharded runs with the local executor (`batchrun run JOB --workers W`), end to end against
the test endpoint: every id once, through kills of a worker and of the driver, C never
exceeded, signals, a second driver refused."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest

from batchrun.shards.plan import ShardPlan
from tests.support.endpoint_app import EndpointApp, EndpointProcess
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
        return [p for p in psutil.Process(driver).children() if "batchrun.shards.worker" in p.cmdline()]
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


def test_sharded_run_completes_every_id_once_within_c(endpoint_app: EndpointApp, tmp_path: Path) -> None:
    endpoint_app.configure(latency_ms=5)
    job = _job(tmp_path, endpoint_app.url, concurrency=6)
    code, summary, err = finish(start_run(job, "--workers", "3"))
    assert code == 0, err
    assert summary["succeeded"] == ROWS and summary["pending"] == 0
    assert _ids(tmp_path) == list(range(ROWS))  # merged in shard order: input order
    assert endpoint_app.stats()["max_in_flight"] <= 6
    plan = ShardPlan.load(tmp_path / "out.jsonl.batchrun")
    assert plan is not None and plan.merged and len(plan.shards) >= 12
    # a second run finds nothing to do and sends nothing
    before = endpoint_app.stats()["requests"]
    code, summary, err = finish(start_run(job))
    assert code == 0, err
    assert summary["rows"] == 0 and endpoint_app.stats()["requests"] == before
