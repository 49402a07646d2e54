"""Sharded runs on the local service: the driver alone holds the endpoint, so a budget stops
every shard inside the budget, and a kill -9 of the driver gets the endpoint paused."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from batchrun.endpoints import SyncEndpointsClient
from tests.support.lifecycle import ECHO, finish, job_sections, start_run, state_of, write_job
from tests.support.waiting import wait_for


@pytest.fixture
def api(local_service: Any) -> Iterator[SyncEndpointsClient]:
    with SyncEndpointsClient(api_url=local_service.api_url, token=local_service.token) as client:
        yield client


def _create(api: SyncEndpointsClient, name: str) -> None:
    api.create(
        name, repository=ECHO, task="text-generation", env={"BATCHRUN_ECHO_LATENCY_MS": "50"}
    )
    api.wait(name, timeout=60, refresh_every=0.1)


def test_budget_stops_every_shard_inside_it(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path
) -> None:
    _create(api, "pricey")
    budget = {"price_per_hour": 36.0, "billing_quantum_s": 0.5, "max_cost_usd": 0.04}
    sections = job_sections(local_service.api_url, "pricey", tmp_path, rows=3000, budget=budget)
    job = write_job(tmp_path / "job.toml", sections)
    code, summary, err = finish(start_run(job, local_service.token, "--workers", "2"))
    assert code == 4, err
    assert summary["stop_reason"] == "budget" and summary["resumable"] is True
    assert 0 < summary["cost_usd"] <= 0.04
    assert 0 < summary["succeeded"] < 3000
    assert state_of(api, "pricey") == "paused"


def test_kill_9_of_the_driver_pauses_the_endpoint(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path
) -> None:
    _create(api, "orphan")
    sections = job_sections(local_service.api_url, "orphan", tmp_path, rows=3000)
    job = write_job(tmp_path / "job.toml", sections)
    proc = start_run(job, local_service.token, "--workers", "2")
    out = tmp_path / "out.jsonl.batchrun" / "shards"

    def workers() -> list[int]:
        kids = psutil.Process(proc.pid).children()
        return [p.pid for p in kids if "batchrun.shards.worker" in p.cmdline()]

    wait_for(lambda: len(workers()) == 2, 60, "two workers")
    pids = workers()
    wait_for(lambda: any(out.glob("*/results.jsonl")), 60, "shards writing")
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    wait_for(
        lambda: (
            not any(
                psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                for p in pids
            )
        ),
        10,
        "workers gone",
    )
    wait_for(lambda: state_of(api, "orphan") == "paused", 30, "the watchdog's pause")
