"""`batchrun run` with an endpoint lifecycle, end to end: real `batchrun serve`, real runs.

Every test ends with the endpoint in its on_exit state, checked through the API.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrun.endpoints import SyncEndpointsClient
from batchrun.lifecycle.registry import LeaseRegistry
from tests.support.lifecycle import (
    ECHO,
    FaultyProxy,
    batchrun_cli,
    finish,
    first_request_hangs,
    job_sections,
    pid_alive,
    read_jsonl,
    start_run,
    state_of,
    write_job,
)
from tests.support.waiting import wait_for


@pytest.fixture
def api(local_service: Any) -> Iterator[SyncEndpointsClient]:
    with SyncEndpointsClient(api_url=local_service.api_url, token=local_service.token) as client:
        yield client


def _create(api: SyncEndpointsClient, name: str, **env: str) -> None:
    api.create(name, repository=ECHO, task="text-generation", env=env or None)
    api.wait(name, timeout=60, refresh_every=0.1)


def _job(service: Any, name: str, tmp: Path, *, rows: int = 20, **extra: dict[str, Any]) -> Path:
    return write_job(tmp / "job.toml", job_sections(service.api_url, name, tmp, rows=rows, **extra))


# with first_request_hangs(): the held request outlasts every wait of these tests
_HELD = {"request_timeout": 300}


def _ids(path: Path) -> Counter[str]:
    return Counter(str(r["id"]) for r in read_jsonl(path))


def test_missing_endpoint_is_created_run_then_paused_then_resumed(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path
) -> None:
    job = _job(local_service, "fresh", tmp_path, rows=30)
    code, summary, err = finish(start_run(job, local_service.token))
    assert code == 0, err
    assert summary["endpoint"] == "local/fresh"
    assert summary["on_exit"] == "pause"
    assert summary["endpoint_state_at_exit"] == "paused"
    assert summary["cost_usd"] > 0 and summary["billed_s"] >= 60
    assert 0 <= summary["idle_billed_s"] <= summary["billed_s"]
    assert state_of(api, "fresh") == "paused"
    assert LeaseRegistry().records() == []
    # the next run has nothing to do: it leaves the endpoint paused without resuming it
    code, summary, err = finish(start_run(job, local_service.token, "--retry-errors"))
    assert code == 0, err
    assert summary["skipped_done"] == 30 and summary["succeeded"] == 0
    assert state_of(api, "fresh") == "paused"
    assert _ids(tmp_path / "out.jsonl") == Counter({f"r{i}": 1 for i in range(30)})
    status = batchrun_cli(local_service.token, "status", str(tmp_path / "out.jsonl"))
    assert "30 results, 0 errors committed" in status.stdout
    assert "last run: exit 0" in status.stdout


def test_restore_leaves_a_running_endpoint_running(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path
) -> None:
    _create(api, "always-on")
    job = _job(local_service, "always-on", tmp_path, endpoint={"on_exit": "restore"})
    code, summary, err = finish(start_run(job, local_service.token))
    assert code == 0, err
    assert summary["endpoint_state_at_exit"] == "running"
    assert state_of(api, "always-on") == "running"


def test_500_storm_rows_in_errors_file_endpoint_paused(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path
) -> None:
    _create(api, "stormy", BATCHRUN_ECHO_ERROR_RATE="1")
    job = _job(local_service, "stormy", tmp_path, rows=12)
    code, summary, err = finish(start_run(job, local_service.token))
    assert code == 3, err
    errors = read_jsonl(tmp_path / "out.errors.jsonl")
    assert len(errors) == 12 and {e["status"] for e in errors} == {"http_500"}
    assert summary["endpoint_state_at_exit"] == "paused"
    assert state_of(api, "stormy") == "paused"


def test_endpoint_crash_mid_run_is_exit_5_paused_and_the_rerun_completes_exactly_once(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path
) -> None:
    _create(api, "crashy", BATCHRUN_ECHO_CRASH_AFTER="40", BATCHRUN_ECHO_LATENCY_MS="5")
    job = _job(local_service, "crashy", tmp_path, rows=200, run={"max_attempts": 20})
    code, _, err = finish(start_run(job, local_service.token))
    assert code == 5, err
    assert "crashy failed mid-run" in err and "a rerun resumes" in err
    assert state_of(api, "crashy") == "paused"
    done_before = len(_ids(tmp_path / "out.jsonl"))
    assert 0 < done_before < 200
    api.update("crashy", env={"BATCHRUN_ECHO_LATENCY_MS": "1"})  # the fault is fixed
    code, _, err = finish(start_run(job, local_service.token))
    assert code == 0, err
    assert _ids(tmp_path / "out.jsonl") == Counter({f"r{i}": 1 for i in range(200)})
    assert (
        not (tmp_path / "out.errors.jsonl").exists()
        or read_jsonl(tmp_path / "out.errors.jsonl") == []
    )
    assert state_of(api, "crashy") == "paused"


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_stop_commit_and_pause(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path, sig: int, code: int
) -> None:
    _create(api, "slow", **first_request_hangs())  # the run cannot end before the signal
    job = _job(local_service, "slow", tmp_path, rows=40, run=_HELD)
    proc = start_run(job, local_service.token)
    wait_for(lambda: len(read_jsonl(tmp_path / "out.jsonl")) == 39, 60, "the 39 rows not held")
    proc.send_signal(sig)
    exit_code, summary, err = finish(proc)
    assert exit_code == code, err
    assert summary["resumable"] is True and summary["results_total"] == 39
    assert summary["endpoint_state_at_exit"] == "paused"
    assert state_of(api, "slow") == "paused"
    assert LeaseRegistry().records() == []


def test_kill_9_the_watchdog_pauses_within_15_s(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path
) -> None:
    _create(api, "doomed", **first_request_hangs())  # the run cannot end before the kill
    job = _job(local_service, "doomed", tmp_path, rows=40, run=_HELD)
    proc = start_run(job, local_service.token)
    wait_for(lambda: len(read_jsonl(tmp_path / "out.jsonl")) >= 4, 60, "some results")
    (lease,) = LeaseRegistry().records()
    assert lease.pid == proc.pid and lease.watchdog_pid
    killed = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    finish(proc)
    took = wait_for(lambda: state_of(api, "doomed") == "paused", 15, "the watchdog's pause")
    print(f"kill -9 -> paused in {time.monotonic() - killed:.2f}s (polled {took:.2f}s)")
    wait_for(lambda: not pid_alive(lease.watchdog_pid or 0), 15, "the watchdog to exit")
    assert LeaseRegistry().records() == []


def test_kill_9_without_watchdog_then_reap(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path
) -> None:
    _create(api, "orphan", **first_request_hangs())  # the run cannot end before the kill
    job = _job(local_service, "orphan", tmp_path, rows=40, endpoint={"watchdog": False}, run=_HELD)
    proc = start_run(job, local_service.token)
    wait_for(lambda: len(read_jsonl(tmp_path / "out.jsonl")) >= 4, 60, "some results")
    os.kill(proc.pid, signal.SIGKILL)
    finish(proc)
    assert state_of(api, "orphan") == "running"  # nobody paused it
    status = batchrun_cli(local_service.token, "status")
    assert "DEAD" in status.stdout and "local/orphan" in status.stdout
    reaped = batchrun_cli(local_service.token, "reap")
    assert reaped.returncode == 0, reaped.stderr
    assert "local/orphan: pause → paused" in reaped.stdout
    assert state_of(api, "orphan") == "paused"
    assert LeaseRegistry().records() == []
    again = batchrun_cli(local_service.token, "reap")
    assert "nothing to reap" in again.stdout


def test_budget_stop_is_exit_4_paused_within_budget(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path
) -> None:
    _create(api, "pricey", BATCHRUN_ECHO_LATENCY_MS="50")
    budget = {"price_per_hour": 36.0, "billing_quantum_s": 0.5, "max_cost_usd": 0.04}
    job = _job(local_service, "pricey", tmp_path, rows=2000, budget=budget)
    code, summary, err = finish(start_run(job, local_service.token))
    assert code == 4, err
    assert summary["stop_reason"] == "budget" and summary["resumable"] is True
    assert 0 < summary["cost_usd"] <= 0.04
    assert 0 < summary["succeeded"] < 2000
    assert summary["endpoint_state_at_exit"] == "paused"
    assert state_of(api, "pricey") == "paused"
    print(f"budget $0.04: metered ${summary['cost_usd']:.4f}")


def test_deadline_stop_is_exit_4_paused_before_it(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path
) -> None:
    _create(api, "late", BATCHRUN_ECHO_LATENCY_MS="50")
    deadline = dt.datetime.now().astimezone() + dt.timedelta(seconds=6)
    job = _job(
        local_service, "late", tmp_path, rows=2000, budget={"deadline": deadline.isoformat()}
    )
    code, summary, err = finish(start_run(job, local_service.token))
    assert code == 4, err
    assert summary["stop_reason"] == "deadline"
    assert dt.datetime.now().astimezone() <= deadline + dt.timedelta(seconds=2)
    assert state_of(api, "late") == "paused"


def test_two_runs_on_one_endpoint_the_first_to_finish_does_not_pause_it(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path
) -> None:
    # the long run's first request is held: it cannot end before the short one, nor until
    # the test interrupts it (the short run's requests are answered)
    _create(api, "shared", **first_request_hangs())
    long_dir, short_dir = tmp_path / "long", tmp_path / "short"
    long_dir.mkdir()
    short_dir.mkdir()
    long_job = _job(local_service, "shared", long_dir, rows=40, run={"concurrency": 2, **_HELD})
    short_job = _job(local_service, "shared", short_dir, rows=10)
    long_run = start_run(long_job, local_service.token)
    wait_for(lambda: len(read_jsonl(long_dir / "out.jsonl")) >= 2, 60, "the long run to start")
    status = batchrun_cli(local_service.token, "status", str(long_dir / "out.jsonl"))
    assert f"run: live, pid {long_run.pid}" in status.stdout, status.stdout
    assert "local/shared" in status.stdout and " live, on_exit pause" in status.stdout
    code, summary, err = finish(start_run(short_job, local_service.token))
    assert code == 0, err
    assert summary["endpoint_state_at_exit"] == "running"
    assert long_run.poll() is None, "the long run should still be going"
    assert state_of(api, "shared") == "running"
    long_run.send_signal(signal.SIGINT)
    code, summary, err = finish(long_run)
    assert code == 130, err
    assert summary["endpoint_state_at_exit"] == "paused"
    assert state_of(api, "shared") == "paused"


def test_on_exit_failing_is_exit_6_naming_the_pause_command(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path
) -> None:
    _create(api, "sticky")
    with FaultyProxy(local_service.api_url) as proxy:
        job = _job(
            local_service, "sticky", tmp_path, endpoint={"provider": "hf", "api_url": proxy.url}
        )
        proxy.fail_pause = True
        code, summary, err = finish(start_run(job, local_service.token))
        assert code == 6, err
        # the summary is printed on every exit: the rows are done, the endpoint is not at rest
        assert summary["exit_code"] == 6 and summary["succeeded"] == 20, summary
        assert summary["endpoint_state_at_exit"] == "unknown" and summary["pending"] == 0
        assert "batchrun endpoints pause sticky" in summary["error"]
        assert local_service.token not in orjson.dumps(summary).decode()
        assert "local/sticky could not be put in its on_exit state (pause)" in err
        assert f"batchrun endpoints pause sticky --namespace local --api-url {proxy.url}" in err
        assert local_service.token not in err
        assert state_of(api, "sticky") == "running"
        proxy.fail_pause = False  # the watchdog, still trying, gets through now
        wait_for(lambda: state_of(api, "sticky") == "paused", 60, "the watchdog's pause")
        wait_for(lambda: LeaseRegistry().records() == [], 30, "the watchdog to drop the lease")


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ({"on_exit": "hibernate"}, "on_exit: expected one of"),
        ({"ready_timeot": 5}, "did you mean 'ready_timeout'"),
        ({"name": None}, 'provider = "local" needs [endpoint] name'),
    ],
)
def test_bad_lifecycle_keys_are_exit_2_and_create_nothing(
    local_service: Any,
    api: SyncEndpointsClient,
    tmp_path: Path,
    endpoint: dict[str, Any],
    message: str,
) -> None:
    job = _job(local_service, "never", tmp_path, endpoint=endpoint)
    code, _, err = finish(start_run(job, local_service.token))
    assert code == 2, err
    assert message in err
    assert api.list() == []
    assert LeaseRegistry().records() == []


def test_plan_spends_nothing(local_service: Any, api: SyncEndpointsClient, tmp_path: Path) -> None:
    _create(api, "planned")
    api.pause("planned")
    job = _job(
        local_service,
        "planned",
        tmp_path,
        rows=120,
        budget={"max_cost_usd": 0.001, "billing_quantum_s": 60},
    )
    result = batchrun_cli(local_service.token, "plan", str(job), "--rows-per-second", "2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "rows: 120 in the input, 0 already committed" in out
    assert "duration: 1m00s" in out
    assert "endpoint: local/planned (paused)" in out
    assert "list price (simulated)" in out
    assert "does NOT fit" in out  # $0.001 does not buy a minute of intel-icl x2 at list price
    assert state_of(api, "planned") == "paused"
    assert not (tmp_path / "out.jsonl").exists()


def test_ctrl_c_while_waiting_for_readiness_pauses_at_once(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path
) -> None:
    env = {"BATCHRUN_ECHO_START_DELAY_MS": "20000"}
    api.create("slowstart", repository=ECHO, task="text-generation", env=env)
    api.pause("slowstart")  # before it ever loads
    job = _job(local_service, "slowstart", tmp_path)
    proc = start_run(job, local_service.token)
    wait_for(lambda: state_of(api, "slowstart") in ("pending", "initializing"), 30, "the resume")
    asked = time.monotonic()
    proc.send_signal(signal.SIGINT)
    code, summary, err = finish(proc)
    assert code == 130, err
    assert time.monotonic() - asked < 10  # not the 20 s the model takes to load
    assert summary["succeeded"] == 0 and summary["endpoint_state_at_exit"] == "paused"
    assert state_of(api, "slowstart") == "paused"


def test_scaled_to_zero_mid_run_is_woken_without_row_failures(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path
) -> None:
    _create(api, "napper", BATCHRUN_ECHO_LATENCY_MS="50")
    job = _job(local_service, "napper", tmp_path, rows=300)
    proc = start_run(job, local_service.token)
    wait_for(lambda: len(read_jsonl(tmp_path / "out.jsonl")) >= 20, 60, "some results")
    api.scale_to_zero("napper")
    code, summary, err = finish(proc)
    assert code == 0, (err, read_jsonl(tmp_path / "out.errors.jsonl")[:2])
    assert summary["failed"] == 0
    assert _ids(tmp_path / "out.jsonl") == Counter({f"r{i}": 1 for i in range(300)})
    assert state_of(api, "napper") == "paused"
