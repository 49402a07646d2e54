"""EndpointLease against the local service (`batchrun serve`, echo model), without the runner."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchrun.endpoints import SyncEndpointsClient
from batchrun.errors import EndpointFailedError, EndpointRestError, JobError
from batchrun.job import Job
from batchrun.lifecycle.lease import EndpointLease
from batchrun.lifecycle.registry import LeaseRegistry
from tests.support.lifecycle import ECHO, FaultyProxy, job_sections, state_of
from tests.support.waiting import wait_for


@pytest.fixture
def api(local_service: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[SyncEndpointsClient]:
    monkeypatch.setenv("HF_TOKEN", local_service.token)
    with SyncEndpointsClient(api_url=local_service.api_url, token=local_service.token) as client:
        yield client


def _job(api_url: str, name: str, tmp: Path, **extra: dict[str, Any]) -> Job:
    return Job.from_dict(job_sections(api_url, name, tmp, **extra), source="job.toml")


def _create(api: SyncEndpointsClient, name: str, *, env: dict[str, str] | None = None) -> None:
    api.create(name, repository=ECHO, task="text-generation", env=env)
    api.wait(name, timeout=60, refresh_every=0.1)


async def _echo(lease: EndpointLease) -> int:
    async with httpx.AsyncClient(trust_env=False) as http:
        r = await http.post(lease.url + "/", json={"inputs": "hi"}, headers=lease.headers)
        return r.status_code


def test_missing_endpoint_is_created_then_paused(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path
) -> None:
    job = _job(local_service.api_url, "made", tmp_path)

    async def scenario() -> EndpointLease:
        async with EndpointLease(job) as lease:
            assert lease.found_state == "missing"
            assert lease.url and await _echo(lease) == 200
            (record,) = LeaseRegistry().records()
            assert record.endpoint == "made" and record.watchdog_pid
            assert await asyncio.to_thread(state_of, api, "made") == "running"
        return lease

    lease = asyncio.run(scenario())
    assert state_of(api, "made") == "paused"
    assert lease.state_at_exit == "paused"
    fields = lease.summary_fields()
    assert fields["endpoint"] == "local/made" and fields["endpoint_state_at_exit"] == "paused"
    assert fields["cost_usd"] is not None and fields["cost_usd"] > 0  # simulated list price
    assert fields["billed_s"] >= 60  # one started quantum at least
    assert LeaseRegistry().records() == []
    assert local_service.token not in repr(lease)


def test_paused_endpoint_is_resumed_and_restore_pauses_it_again(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path
) -> None:
    _create(api, "sleepy")
    api.pause("sleepy")
    job = _job(local_service.api_url, "sleepy", tmp_path, endpoint={"on_exit": "restore"})

    async def scenario() -> None:
        async with EndpointLease(job) as lease:
            assert lease.found_state == "paused"
            assert await _echo(lease) == 200

    asyncio.run(scenario())
    assert state_of(api, "sleepy") == "paused"


def test_restore_leaves_a_running_endpoint_running(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path
) -> None:
    _create(api, "busy")
    job = _job(local_service.api_url, "busy", tmp_path, endpoint={"on_exit": "restore"})

    async def scenario() -> EndpointLease:
        async with EndpointLease(job) as lease:
            assert await _echo(lease) == 200
        return lease

    lease = asyncio.run(scenario())
    assert state_of(api, "busy") == "running"
    assert lease.state_at_exit == "running"
    assert not lease.meter.billing  # the lease no longer pays for it


def test_missing_endpoint_without_repository_creates_nothing(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path
) -> None:
    job = _job(local_service.api_url, "ghost", tmp_path, endpoint={"repository": None})
    with pytest.raises(JobError, match=r"local/ghost does not exist.*repository"):
        asyncio.run(EndpointLease(job).__aenter__())
    assert api.list() == []
    assert LeaseRegistry().records() == []


def test_failed_endpoint_is_exit_5_before_anything_is_sent(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path
) -> None:
    api.create("broken", repository="nobody/no-such-model", task="text-generation")
    wait_for(lambda: state_of(api, "broken") == "failed", 30, "the endpoint to fail")
    job = _job(local_service.api_url, "broken", tmp_path)
    with pytest.raises(EndpointFailedError, match="local/broken is failed") as info:
        asyncio.run(EndpointLease(job).__aenter__())
    assert info.value.exit_code == 5
    assert LeaseRegistry().records() == []


def test_two_leases_on_one_endpoint_the_last_one_pauses(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path
) -> None:
    _create(api, "shared")
    job = _job(local_service.api_url, "shared", tmp_path, endpoint={"watchdog": False})

    async def scenario() -> None:
        first = EndpointLease(job)
        second = EndpointLease(job)
        await first.__aenter__()
        await second.__aenter__()
        await first.__aexit__(None, None, None)
        assert (
            await asyncio.to_thread(state_of, api, "shared") == "running"
        )  # not paused under the second
        assert first.state_at_exit == "running"
        assert await _echo(second) == 200
        await second.__aexit__(None, None, None)
        assert second.state_at_exit == "paused"

    asyncio.run(scenario())
    assert state_of(api, "shared") == "paused"


def test_on_exit_failure_is_exit_6_and_the_watchdog_keeps_trying(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path
) -> None:
    _create(api, "stubborn")
    with FaultyProxy(local_service.api_url) as proxy:
        job = _job(proxy.url, "stubborn", tmp_path, endpoint={"provider": "hf"})

        async def scenario() -> None:
            async with EndpointLease(job):
                proxy.fail_pause = True

        with pytest.raises(EndpointRestError) as info:
            asyncio.run(scenario())
        message = str(info.value)
        assert info.value.exit_code == 6
        assert "local/stubborn" in message
        assert (
            f"batchrun endpoints pause stubborn --namespace local --api-url {proxy.url}" in message
        )
        assert local_service.token not in message
        assert state_of(api, "stubborn") == "running"
        (left,) = LeaseRegistry().records()  # kept for `batchrun reap`
        assert left.endpoint == "stubborn"
        proxy.fail_pause = False  # the watchdog's own retries now get through
        wait_for(lambda: state_of(api, "stubborn") == "paused", 60, "the watchdog to pause it")
        wait_for(lambda: LeaseRegistry().records() == [], 30, "the watchdog to drop the lease")


def test_budget_stops_the_run_before_the_limit(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path
) -> None:
    _create(api, "metered")
    job = _job(
        local_service.api_url,
        "metered",
        tmp_path,
        budget={"price_per_hour": 36.0, "billing_quantum_s": 0.5, "max_cost_usd": 0.05},
    )

    async def scenario() -> EndpointLease:
        async with EndpointLease(job) as lease:
            await asyncio.wait_for(lease.stop_event.wait(), 20)
            assert lease.stop_reason == "budget"
        return lease

    lease = asyncio.run(scenario())
    cost = lease.summary_fields()["cost_usd"]
    assert cost is not None and 0 < cost <= 0.05
    assert state_of(api, "metered") == "paused"


def test_max_duration_stops_the_run_in_time(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path
) -> None:
    _create(api, "timed")
    job = _job(local_service.api_url, "timed", tmp_path, budget={"max_duration": "4s"})

    async def scenario() -> float:
        start = time.monotonic()
        async with EndpointLease(job) as lease:
            await asyncio.wait_for(lease.stop_event.wait(), 20)
            assert lease.stop_reason == "deadline"
            assert "max_duration 4s" in (lease.stop_message or "")
        return time.monotonic() - start

    assert asyncio.run(scenario()) <= 4.0
    assert state_of(api, "timed") == "paused"


def test_budget_too_small_for_one_quantum_starts_nothing(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path
) -> None:
    job = _job(
        local_service.api_url,
        "tiny",
        tmp_path,
        budget={"price_per_hour": 3600.0, "max_cost_usd": 1.0},  # one 60 s quantum is $60
    )
    with pytest.raises(JobError, match="does not cover one billing quantum"):
        asyncio.run(EndpointLease(job).__aenter__())
    assert api.list() == []


def test_endpoint_failing_mid_run_sets_the_stop_reason(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path
) -> None:
    _create(api, "fragile", env={"BATCHRUN_ECHO_CRASH_AFTER": "2"})
    job = _job(local_service.api_url, "fragile", tmp_path)

    async def scenario() -> EndpointLease:
        async with EndpointLease(job) as lease:
            for _ in range(3):
                try:
                    await _echo(lease)
                except httpx.HTTPError:
                    break
            await asyncio.wait_for(lease.stop_event.wait(), 20)
            assert lease.stop_reason == "endpoint_failed"
            assert "fragile failed mid-run" in (lease.stop_message or "")
        return lease

    lease = asyncio.run(scenario())
    assert lease.state_at_exit == "paused"
    assert state_of(api, "fragile") == "paused"


@pytest.mark.parametrize(
    ("on_exit", "after"), [("delete", "missing"), ("scale-to-zero", "scaledToZero")]
)
def test_delete_and_scale_to_zero(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path, on_exit: str, after: str
) -> None:
    job = _job(local_service.api_url, "brief", tmp_path, endpoint={"on_exit": on_exit})

    async def scenario() -> EndpointLease:
        async with EndpointLease(job) as lease:
            assert await _echo(lease) == 200
        return lease

    lease = asyncio.run(scenario())
    assert state_of(api, "brief") == after
    assert lease.state_at_exit == ("deleted" if on_exit == "delete" else after)
