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
# the echo capacity model: each replica serves 2 requests at once in 200 ms, 10 rows/s, and
# takes a second more to start (a known cold start, measured from `initializing`)
CAPACITY = {
    "BATCHRUN_ECHO_MAX_BATCH": "2",
    "BATCHRUN_ECHO_BASE_MS": "200",
    "BATCHRUN_ECHO_START_DELAY_MS": "1000",
}


@pytest.fixture
def api(local_service: Any) -> Iterator[SyncEndpointsClient]:
    with SyncEndpointsClient(api_url=local_service.api_url, token=local_service.token) as client:
        yield client


def _paused_endpoint(
    api: SyncEndpointsClient, name: str, env: dict[str, str] | None = None
) -> None:
    api.create(name, repository=ECHO, task="text-generation", env=env or LATENCY, **OWN)
    api.wait(name, timeout=60, refresh_every=0.1)
    api.pause(name)


def _scaling(api: SyncEndpointsClient, name: str) -> dict[str, int | None]:
    endpoint = api.get(name)
    return {"min_replica": endpoint.min_replica, "max_replica": endpoint.max_replica}


def _deadline(seconds: float) -> str:
    return (dt.datetime.now().astimezone() + dt.timedelta(seconds=seconds)).isoformat(
        timespec="milliseconds"
    )


def _job(
    service: Any, name: str, tmp: Path, *, rows: int, deadline: str, **extra: dict[str, Any]
) -> Path:
    run = {"scale": "deadline", "max_replicas": 4, **extra.pop("run", {})}
    budget = {"deadline": deadline, "billing_quantum_s": 1, **extra.pop("budget", {})}
    sections = job_sections(service.api_url, name, tmp, rows=rows, run=run, budget=budget, **extra)
    return write_job(tmp / "job.toml", sections)


def _decisions(err: str) -> list[str]:
    return [line for line in err.splitlines() if "for the deadline" in line]


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
    # a budget that pays the work but not the cold starts of the replicas a tight deadline
    # needs: at the measured rate and cold start, 1 replica serves about half the rows left
    # in time, so more are needed, and the budget pays only half a cold start beyond the work
    rate, cold = last["rows_per_s_per_replica"], last["cold_start_s"]
    assert cold is not None and cold > 0  # measured from the resume's `initializing`
    work = 540 / rate
    budget = {"max_cost_usd": round((work + cold / 2) / 1000, 6), "price_per_hour": 3.6}
    job = _job(
        local_service,
        "safe",
        tmp_path,
        rows=600,
        deadline=_deadline((work / 2 + cold + 1) / 0.85),
        budget=budget,
        run={"max_replicas": 16},
    )
    code, summary, err = finish(start_run(job, local_service.token))
    assert code == 2, err
    assert "replicas" in err and "more than the budget left" in err, err
    assert state_of(api, "safe") == "paused" and _scaling(api, "safe") == OWN
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 60
    assert LeaseRegistry().records() == []


def test_a_deadline_that_needs_three_replicas_gets_three_and_finishes_then_the_own_scaling_back(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path
) -> None:
    _paused_endpoint(api, "tight", CAPACITY)
    # 600 rows at 10 rows/s per replica: ~57 replica-seconds of work left at the first
    # decision, which comes ~9 s in (start, resume, the rate's warm-up and window) with ~31 s
    # left, 85 % of it usable (~26 s): 2 replicas serve ~50 replica-s of it (the added one
    # after its ~2-3 s cold start), 3 ~73: the fewest that finish is 3, with slack either side
    # (a start 3 s faster or slower, a rate 10 % off, still make it 3)
    deadline = _deadline(40)
    run = {"concurrency": 24}  # 2 in service per replica, the rest queued: 3 replicas saturate
    job = _job(local_service, "tight", tmp_path, rows=600, deadline=deadline, run=run)
    proc = start_run(job, local_service.token, "-v")  # its decisions on stderr, if it fails
    seen: list[tuple[int | None, int | None]] = []

    def scaled() -> bool:
        endpoint = api.get("tight")
        seen.append((endpoint.min_replica, endpoint.ready_replica))
        return (endpoint.ready_replica or 0) >= 3

    wait_for(scaled, timeout=30, what="three replicas serve")
    code, summary, err = finish(proc)
    assert code == 0, err  # done before the deadline (the budget stops at it: exit 4)
    assert summary["succeeded"] == 600 and len(read_jsonl(tmp_path / "out.jsonl")) == 600
    asked = summary["replicas_asked"]
    assert asked[0] == 3 and max(asked) == 3, (asked, _decisions(err))  # 3, never 4
    assert max(ready or 0 for _, ready in seen) == 3
    assert {m for m, _ in seen} <= {OWN["min_replica"], *asked}
    assert summary["cold_start_s"] is not None and summary["rows_per_s_per_replica"] > 0
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
