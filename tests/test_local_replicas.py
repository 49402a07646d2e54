"""The local service's replicas and the echo model's capacity model, against the real service.

Replicas: `max(minReplica, 1)` worker processes serve one URL; `update` changes the count live
and readyReplica follows; the cost meter bills every replica. Capacity: at most MAX_BATCH
requests in service per worker, a bounded queue, 429 with Retry-After past it. Everything is
asserted by counts (pids that answered, high-water marks, statuses), never by wall time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import LocalService, start_local_service
from tests.support.waiting import wait_for
from tests.test_local_helpers import NS, api, body, data_client, wait_state


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalService]:
    service = start_local_service(tmp_path_factory.mktemp("replicas") / "state")
    try:
        yield service
    finally:
        service.stop()


def _create(
    c: httpx.Client, name: str, *, replicas: int = 1, env: dict[str, str] | None = None
) -> dict[str, Any]:
    b = body(name, env=env, min_replica=replicas)
    b["compute"]["scaling"]["maxReplica"] = max(replicas, 1)
    r = c.post(f"/endpoint/{NS}", json=b)
    assert r.status_code == 200, r.text
    return wait_state(c, name, "running")


def _status(c: httpx.Client, name: str) -> dict[str, Any]:
    r = c.get(f"/endpoint/{NS}/{name}")
    assert r.status_code == 200, r.text
    status: dict[str, Any] = r.json()["status"]
    return status


def _scale(c: httpx.Client, name: str, replicas: int) -> None:
    r = c.put(
        f"/endpoint/{NS}/{name}",
        json={"compute": {"scaling": {"minReplica": replicas, "maxReplica": replicas}}},
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"]["targetReplica"] == replicas


def _replicas_answering(svc: LocalService, url: str, n: int) -> set[str]:
    """The pids (X-Batchrun-Replica) that answered `n` requests, each on its own connection."""
    pids = set()
    for i in range(n):
        with data_client(svc.token) as d:
            r = d.post(url, json={"inputs": f"row {i}"})
            assert r.status_code == 200, r.text
            pids.add(r.headers["X-Batchrun-Replica"])
    return pids


def test_two_replicas_are_two_worker_processes_on_one_url(svc: LocalService) -> None:
    with api(svc) as c:
        data = _create(c, "two", replicas=2)
        url = data["status"]["url"]
        wait_for(lambda: _status(c, "two")["readyReplica"] == 2, 20, "2 ready replicas")
        status = _status(c, "two")
        assert (status["state"], status["targetReplica"]) == ("running", 2)
        pids = _replicas_answering(svc, url, 20)
        assert len(pids) == 2, pids
        assert {int(p) for p in pids} <= set(svc.worker_pids())
        c.delete(f"/endpoint/{NS}/two")


def test_update_changes_the_replicas_live(svc: LocalService) -> None:
    with api(svc) as c:
        url = _create(c, "live", replicas=1)["status"]["url"]
        first = _replicas_answering(svc, url, 3)
        assert len(first) == 1
        with data_client(svc.token) as kept:  # one kept-alive connection through it all
            assert kept.post(url, json={"inputs": "a"}).status_code == 200
            _scale(c, "live", 2)
            status = _status(c, "live")
            assert status["state"] == "running"  # the replica already there goes on serving
            assert status["readyReplica"] == 1
            wait_for(lambda: _status(c, "live")["readyReplica"] == 2, 20, "the second replica")
            # the kept-alive connection is recycled, so requests reach the new replica too
            seen: set[str] = set()

            def both() -> bool:
                r = kept.post(url, json={"inputs": "b"})
                assert r.status_code == 200, r.text
                seen.add(r.headers["X-Batchrun-Replica"])
                return len(seen) == 2

            wait_for(both, 20, "requests on a kept-alive connection reaching both replicas")
            assert first < seen
            _scale(c, "live", 1)
            wait_for(lambda: _status(c, "live")["readyReplica"] == 1, 20, "back to one replica")
            wait_for(
                lambda: len(svc.worker_pids()) == 1, 20, "the removed worker drained and exited"
            )
            answers = [kept.post(url, json={"inputs": "c"}) for _ in range(5)]
            assert [r.status_code for r in answers] == [200] * 5
            assert len({r.headers["X-Batchrun-Replica"] for r in answers}) == 1
        c.delete(f"/endpoint/{NS}/live")


def test_the_cost_meter_bills_every_replica(svc: LocalService) -> None:
    from batchrun.budget import CostMeter
    from batchrun.endpoints.models import Endpoint

    def read(c: httpx.Client) -> Endpoint:
        return Endpoint.from_raw(c.get(f"/endpoint/{NS}/billed").json(), NS)

    with api(svc) as c:
        _create(c, "billed", replicas=1)
        one = read(c)
        _scale(c, "billed", 2)
        wait_for(lambda: _status(c, "billed")["readyReplica"] == 2, 20, "2 ready replicas")
        two = read(c)
        c.delete(f"/endpoint/{NS}/billed")
    assert (one.target_replica, one.ready_replica) == (1, 1)
    assert (two.target_replica, two.ready_replica) == (2, 2)
    now = [0.0]
    meter = CostMeter(price_per_hour=3.6, quantum_s=60.0, clock=lambda: now[0])
    meter.observe(one.state_text, target_replica=one.target_replica, ready_replica=1)
    # billed by started one-minute quanta: 10 of one replica, then 10 of two
    assert meter.reading(at=599.0).cost_usd == pytest.approx(0.6)
    now[0] = 601.0  # in the 11th quantum (quanta are (k·q, (k+1)·q])
    meter.observe(two.state_text, target_replica=two.target_replica, ready_replica=2)
    assert meter.reading(at=1199.0).cost_usd == pytest.approx(0.6 + 2 * 0.6)


async def _burst(url: str, token: str, n: int) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(headers=headers, timeout=20, trust_env=False, limits=limits) as d:
        return list(
            await asyncio.gather(*(d.post(url, json={"inputs": f"r{i}"}) for i in range(n)))
        )


def _capacity(c: httpx.Client, name: str) -> dict[str, Any]:
    url = _status(c, name)["url"]
    stats: dict[str, Any] = httpx.get(f"{url}/info", timeout=5, trust_env=False).json()
    return stats


def test_past_the_queue_the_endpoint_answers_429(svc: LocalService) -> None:
    env = {
        "BATCHRUN_ECHO_MAX_BATCH": "4",
        "BATCHRUN_ECHO_MAX_QUEUE": "4",
        "BATCHRUN_ECHO_BASE_MS": "400",
    }
    with api(svc) as c:
        url = _create(c, "full", env=env)["status"]["url"]
        answers = asyncio.run(_burst(url, svc.token, 12))
        codes = sorted(r.status_code for r in answers)
        assert codes == [200] * 8 + [429] * 4
        refused = [r for r in answers if r.status_code == 429]
        assert all(r.headers["Retry-After"] == "1" for r in refused)
        assert refused[0].json()["error_type"] == "overloaded"
        cap = _capacity(c, "full")["capacity"]
        assert (cap["in_service_max"], cap["queued_max"]) == (4, 4)
        assert (cap["served"], cap["rejected"]) == (8, 4)
        c.delete(f"/endpoint/{NS}/full")


def test_requests_in_service_are_batched_up_to_max_batch(svc: LocalService) -> None:
    env = {
        "BATCHRUN_ECHO_MAX_BATCH": "4",
        "BATCHRUN_ECHO_BASE_MS": "50",
        "BATCHRUN_ECHO_PER_ITEM_MS": "10",
    }
    with api(svc) as c:
        url = _create(c, "batched", env=env)["status"]["url"]
        with data_client(svc.token) as d:  # C = 1: never more than one in service
            for i in range(4):
                assert d.post(url, json={"inputs": f"s{i}"}).status_code == 200
        cap = _capacity(c, "batched")["capacity"]
        assert (cap["in_service_max"], cap["queued_max"], cap["served"]) == (1, 0, 4)
        # C = 16 against MAX_BATCH 4: batches of 4 fill, the rest queue, none is refused
        answers = asyncio.run(_burst(url, svc.token, 16))
        assert [r.status_code for r in answers] == [200] * 16
        cap = _capacity(c, "batched")["capacity"]
        assert cap["in_service_max"] == 4
        assert cap["queued_max"] >= 1
        assert (cap["served"], cap["rejected"]) == (20, 0)
        c.delete(f"/endpoint/{NS}/batched")


async def _in_flight_then_scale_down(svc: LocalService, c: httpx.Client, url: str) -> list[str]:
    """12 slow requests, each on its own connection; scale 2 -> 1 once all are in service."""
    headers = {"Authorization": f"Bearer {svc.token}"}

    async def one(i: int) -> httpx.Response:
        async with httpx.AsyncClient(headers=headers, timeout=30, trust_env=False) as d:
            return await d.post(url, json={"inputs": f"slow {i}"})

    tasks = [asyncio.ensure_future(one(i)) for i in range(12)]
    in_service: dict[int, int] = {}  # the last count each replica's /info showed

    def all_in_service() -> bool:
        info = _capacity(c, "drained")
        in_service[info["pid"]] = info["capacity"]["in_service"]
        return sum(in_service.values()) == 12

    await asyncio.to_thread(wait_for, all_in_service, 10, "the 12 requests in service")
    await asyncio.to_thread(_scale, c, "drained", 1)
    answers = await asyncio.gather(*tasks)
    assert [r.status_code for r in answers] == [200] * 12
    return [r.headers["X-Batchrun-Replica"] for r in answers]


def test_a_removed_replica_finishes_its_requests_in_flight(svc: LocalService) -> None:
    env = {"BATCHRUN_ECHO_MAX_BATCH": "16", "BATCHRUN_ECHO_BASE_MS": "2000"}
    with api(svc) as c:
        url = _create(c, "drained", replicas=2, env=env)["status"]["url"]
        wait_for(lambda: _status(c, "drained")["readyReplica"] == 2, 20, "2 ready replicas")
        pids = asyncio.run(_in_flight_then_scale_down(svc, c, url))
        assert len(set(pids)) == 2  # both replicas had requests in flight, and answered them all
        wait_for(lambda: _status(c, "drained")["readyReplica"] == 1, 20, "one replica left")
        c.delete(f"/endpoint/{NS}/drained")


def test_a_bad_capacity_or_recycle_value_fails_the_endpoint_naming_it(svc: LocalService) -> None:
    with api(svc) as c:
        for name, env in (
            ("bad-recycle", {"BATCHRUN_RECYCLE_S": "soon"}),
            ("bad-batch", {"BATCHRUN_ECHO_MAX_BATCH": "-2"}),
        ):
            b = body(name, env=env)
            assert c.post(f"/endpoint/{NS}", json=b).status_code == 200
            status = wait_state(c, name, "failed")["status"]
            key = next(iter(env))
            assert status["message"] == f"model.env {key}={env[key]!r} " + (
                "is not a number" if name == "bad-recycle" else "is out of range"
            )
            assert (status["readyReplica"], status["targetReplica"]) == (0, 0)
            c.delete(f"/endpoint/{NS}/{name}")
