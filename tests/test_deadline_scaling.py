"""`[run] scale = "deadline"` end to end: real `batchrun serve`, real runs, replicas as the
service reports them. Assertions on counts and states; timings belong to tests/perf."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchrun.endpoints import SyncEndpointsClient
from batchrun.io.state import RunState
from batchrun.job import load_job
from batchrun.lifecycle.registry import LeaseRegistry
from batchrun.reports import plan_job
from tests.support.lifecycle import (
    ECHO,
    finish,
    job_sections,
    read_jsonl,
    start_run,
    state_of,
    write_job,
)
from tests.support.waiting import wait_for

OWN = {"min_replica": 1, "max_replica": 2}  # the endpoint's own scaling, which a run restores
LATENCY = {"BATCHRUN_ECHO_LATENCY_MS": "100"}  # 4 in flight: about 40 rows/s per replica


@pytest.fixture
def api(local_service: Any) -> Iterator[SyncEndpointsClient]:
    with SyncEndpointsClient(api_url=local_service.api_url, token=local_service.token) as client:
        yield client


def _paused_endpoint(api: SyncEndpointsClient, name: str) -> None:
    api.create(name, repository=ECHO, task="text-generation", env=LATENCY, **OWN)
    api.wait(name, timeout=60, refresh_every=0.1)
    api.pause(name)


def _scaling(api: SyncEndpointsClient, name: str) -> dict[str, int | None]:
    endpoint = api.get(name)
    return {"min_replica": endpoint.min_replica, "max_replica": endpoint.max_replica}


def _deadline(seconds: float) -> str:
    return (dt.datetime.now().astimezone() + dt.timedelta(seconds=seconds)).isoformat(
        timespec="seconds"
    )


def _job(
    service: Any, name: str, tmp: Path, *, rows: int, deadline: str, **extra: dict[str, Any]
) -> Path:
    run = {"scale": "deadline", "max_replicas": 4, **extra.pop("run", {})}
    budget = {"deadline": deadline, "billing_quantum_s": 1, **extra.pop("budget", {})}
    sections = job_sections(service.api_url, name, tmp, rows=rows, run=run, budget=budget, **extra)
    return write_job(tmp / "job.toml", sections)


def _plan(job: Path) -> str:
    return "\n".join(asyncio.run(plan_job(load_job(job))).lines())


def test_a_deadline_safe_with_one_replica_never_scales_then_a_budget_that_cannot_pay_refuses(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path
) -> None:
    _paused_endpoint(api, "safe")
    job = _job(local_service, "safe", tmp_path, rows=600, deadline=_deadline(3600))
    assert "rate unknown" in _plan(job)
    code, summary, err = finish(start_run(job, local_service.token, "--limit", "60"))
    assert code == 0, err
    assert summary["replicas_asked"] == []
    assert summary["rows_per_s_per_replica"] > 0
    assert _scaling(api, "safe") == OWN and state_of(api, "safe") == "paused"
    last = RunState.last_run(RunState.directory_for(str(tmp_path / "out.jsonl")))
    assert last is not None and last["rows_per_s_per_replica"] == summary["rows_per_s_per_replica"]
    assert "scale = deadline: 1 replica(s) at" in _plan(job)
    # 540 rows left at that rate cost more than $0.004 at $3.6/h ($0.001 a replica-second)
    budget = {"max_cost_usd": 0.004, "price_per_hour": 3.6}
    job = _job(local_service, "safe", tmp_path, rows=600, deadline=_deadline(3600), budget=budget)
    plan = _plan(job)
    assert "the deadline cannot be met" in plan and "does NOT fit" in plan
    code, summary, err = finish(start_run(job, local_service.token))
    assert code == 2, err
    assert "deadline cannot be met" in err and "--best-effort" in err
    assert state_of(api, "safe") == "paused" and _scaling(api, "safe") == OWN
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 60  # nothing more was sent
    assert LeaseRegistry().records() == []


def test_a_deadline_that_needs_more_replicas_gets_them_then_the_own_scaling_back(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path
) -> None:
    _paused_endpoint(api, "tight")
    # 15 s or more of work for one replica, 11 s to the deadline: more replicas
    job = _job(local_service, "tight", tmp_path, rows=600, deadline=_deadline(11))
    run = start_run(job, local_service.token)
    seen: list[dict[str, int | None]] = []

    def scaled() -> bool:
        now = _scaling(api, "tight")
        seen.append(now)
        return now["min_replica"] not in (None, OWN["min_replica"])

    wait_for(scaled, timeout=30, what="the run asks for more replicas")
    code, summary, err = finish(run)
    assert code in (0, 4), err  # done, or stopped at the deadline (one worker locally)
    asked = summary["replicas_asked"]
    assert asked and 2 <= asked[0] <= 4, asked
    first = next(s for s in seen if s["min_replica"] != OWN["min_replica"])
    assert first == {"min_replica": asked[0], "max_replica": asked[0]}
    assert _scaling(api, "tight") == OWN and state_of(api, "tight") == "paused"
    assert LeaseRegistry().records() == []


def test_kill_9_mid_scaling_leaves_the_endpoint_paused_with_its_own_scaling(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path
) -> None:
    _paused_endpoint(api, "killed")
    job = _job(local_service, "killed", tmp_path, rows=800, deadline=_deadline(14))
    run = start_run(job, local_service.token)
    wait_for(
        lambda: _scaling(api, "killed")["min_replica"] != OWN["min_replica"],
        timeout=30,
        what="the run asks for more replicas",
    )
    lease = next(r for r in LeaseRegistry().records() if r.endpoint == "killed")
    assert lease.own_scaling == OWN and lease.scaled_to is not None
    os.kill(run.pid, signal.SIGKILL)
    run.communicate(timeout=30)
    wait_for(
        lambda: state_of(api, "killed") == "paused" and _scaling(api, "killed") == OWN,
        timeout=60,
        what="the watchdog restores the own scaling and pauses",
    )
    wait_for(lambda: LeaseRegistry().records() == [], timeout=30, what="the lease is settled")


def test_replicas_a_killed_run_left_are_not_drift_for_the_rerun_which_restores_them(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path
) -> None:
    _paused_endpoint(api, "orphan")
    endpoint = {**OWN, "watchdog": False}  # the job names the scaling: drift would see a change
    job = _job(
        local_service, "orphan", tmp_path, rows=800, deadline=_deadline(14), endpoint=endpoint
    )
    run = start_run(job, local_service.token)
    wait_for(
        lambda: _scaling(api, "orphan")["min_replica"] != OWN["min_replica"],
        timeout=30,
        what="the run asks for more replicas",
    )
    os.kill(run.pid, signal.SIGKILL)
    run.communicate(timeout=30)
    left = _scaling(api, "orphan")
    assert left != OWN and state_of(api, "orphan") != "paused"  # no watchdog: left as it was
    view = RunState.peek(RunState.directory_for(str(tmp_path / "out.jsonl")))
    assert view is not None
    done = view.committed.results_count + view.committed.errors_count
    rerun = _job(
        local_service, "orphan", tmp_path, rows=800, deadline=_deadline(3600), endpoint=endpoint
    )
    code, summary, err = finish(start_run(rerun, local_service.token, "--limit", str(done + 8)))
    assert code == 0, err
    assert summary["succeeded"] == 8
    assert _scaling(api, "orphan") == OWN and state_of(api, "orphan") == "paused"
    assert LeaseRegistry().records() == []  # the rerun took the dead lease over
