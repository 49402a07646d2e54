"""The deadline's replica decision (`lifecycle.scaling.replicas_for_deadline`) and its rate
meter, on numbers and a fake clock: no server."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchrun.endpoints.client import EndpointsClient
from batchrun.endpoints.models import Endpoint
from batchrun.errors import JobError
from batchrun.io.state import RunState
from batchrun.job import Job
from batchrun.lifecycle.scaler import DeadlineScaler
from batchrun.lifecycle.scaling import RateMeter, check_deadline_plan, replicas_for_deadline


def decide(**kw: float) -> tuple[int, bool, bool]:
    args: dict[str, float] = {
        "rows_left": 1000,
        "rate_per_replica": 10.0,
        "seconds_left": 1000.0,
        "cold_start_s": 0.0,
        "max_replicas": 8,
        "margin": 0.0,
    }
    args.update(kw)
    d = replicas_for_deadline(
        rows_left=int(args["rows_left"]),
        rate_per_replica=args["rate_per_replica"],
        seconds_left=args["seconds_left"],
        cold_start_s=args["cold_start_s"],
        max_replicas=int(args["max_replicas"]),
        current=int(kw.get("current", 1)),
        price_per_hour=kw.get("price_per_hour"),
        budget_left_usd=kw.get("budget_left_usd"),
        margin=args["margin"],
    )
    return d.replicas, d.meets_deadline, d.affordable


def test_safe_with_one_replica_stays_at_one() -> None:
    assert decide(seconds_left=100.0) == (1, True, True)  # 1000 rows / 10 rows/s = 100 s


def test_needs_exactly_three_not_four() -> None:
    # 1000 rows in 40 s at 10 rows/s per replica: 2.5 replicas, so 3
    assert decide(seconds_left=40.0) == (3, True, True)
    assert decide(seconds_left=34.0)[0] == 3  # 3 × 34 × 10 = 1020 ≥ 1000
    assert decide(seconds_left=33.0)[0] == 4


def test_cold_start_of_added_replicas_counts() -> None:
    # with a 10 s cold start, 2 added replicas serve 30 s each: 400 + 300 + 300 = 1000
    assert decide(seconds_left=40.0, cold_start_s=10.0)[0] == 3
    assert decide(seconds_left=39.0, cold_start_s=10.0)[0] == 4
    # replicas already running have no cold start
    assert decide(seconds_left=40.0, cold_start_s=10.0, current=3)[0] == 3


def test_a_scale_up_in_flight_is_not_asked_for_twice() -> None:
    # 3 asked 5 s ago with a 10 s cold start: 1 ready, 2 serve in 5 s. Counting the 2 as
    # new (a whole cold start from now) would want 4; they are partly started: 3 suffice
    def at(starting: int, price: float | None = None, budget: float | None = None) -> Any:
        return replicas_for_deadline(
            rows_left=1000,
            rate_per_replica=10.0,
            seconds_left=38.0,
            cold_start_s=10.0,
            max_replicas=8,
            current=1,
            starting=starting,
            starting_in_s=5.0,
            price_per_hour=price,
            budget_left_usd=budget,
            margin=0.0,
        )

    assert at(0).replicas == 4
    assert (at(2).replicas, at(2).feasible) == (3, True)
    # the budget pays only the part of their cold start still to come: 100 + 2 × 5 s
    priced = at(2, price=3600.0, budget=111.0)
    assert (priced.replicas, priced.feasible, priced.cost_usd) == (3, True, 110.0)


def test_margin_keeps_a_reserve() -> None:
    assert decide(seconds_left=100.0, margin=0.15)[0] == 2


def test_scales_down_when_ahead_of_plan() -> None:
    assert decide(rows_left=100, seconds_left=100.0, current=4)[0] == 1


def test_max_replicas_caps_and_says_so() -> None:
    d = replicas_for_deadline(
        rows_left=1000,
        rate_per_replica=10.0,
        seconds_left=10.0,
        cold_start_s=0.0,
        max_replicas=3,
        margin=0.0,
    )
    assert (d.replicas, d.meets_deadline, d.feasible) == (3, False, False)
    assert d.reason is not None and "max_replicas = 3" in d.reason


def test_budget_caps_replicas_by_their_cold_starts() -> None:
    # the work: 1000 rows / 10 rows/s = 100 replica-s = $0.10 at $3.6/h; each added replica's
    # 10 s cold start costs $0.01; $0.12 pays for 2 added replicas, not the 3 the deadline needs
    args = {"rows_left": 1000, "seconds_left": 35.0, "cold_start_s": 10.0, "price_per_hour": 3.6}
    assert decide(**args, budget_left_usd=0.2)[0] == 4
    assert decide(**args, budget_left_usd=0.12) == (3, False, False)


def test_budget_that_cannot_pay_the_work_refuses() -> None:
    d = replicas_for_deadline(
        rows_left=1000,
        rate_per_replica=10.0,
        seconds_left=1000.0,
        cold_start_s=0.0,
        max_replicas=8,
        price_per_hour=3.6,
        budget_left_usd=0.05,
    )
    assert not d.affordable and d.cost_usd == pytest.approx(0.1)
    assert d.reason is not None and "budget" in d.reason


def test_nothing_left_needs_one() -> None:
    assert decide(rows_left=0, seconds_left=0.0) == (1, True, True)


def test_rate_meter_skips_warmup_and_restarts_on_a_replica_change() -> None:
    now = [0.0]
    meter = RateMeter(warmup_s=2.0, clock=lambda: now[0])
    assert meter.sample(0, 1) is None
    now[0] = 1.0
    assert meter.sample(500, 1) is None  # warming up: not counted
    now[0] = 2.0
    assert meter.sample(600, 1) is None  # the warm-up ends here
    now[0] = 4.0
    assert meter.sample(620, 1) == pytest.approx(10.0)
    now[0] = 5.0
    assert meter.sample(630, 2) == pytest.approx(10.0)  # a new window: the last rate stays
    now[0] = 7.0
    meter.sample(650, 2)
    now[0] = 9.0
    assert meter.sample(730, 2) == pytest.approx(20.0)  # 80 rows / 2 s / 2 replicas


def test_rate_meter_waits_for_a_window_long_enough_to_measure() -> None:
    # rows settle in bursts (2 at a time every 0.2 s here): half a second reads 4 or 8 rows/s
    now = [0.0]
    meter = RateMeter(warmup_s=1.0, window_s=2.0, clock=lambda: now[0])
    meter.sample(0, 1)
    now[0] = 1.0
    meter.sample(10, 1)  # the warm-up ends
    now[0] = 1.5
    assert meter.sample(12, 1) is None  # too short a span to say
    assert meter.sample(12, 1, final=True) == pytest.approx(4.0)  # a short run's last word
    now[0] = 3.0
    assert meter.sample(30, 1) == pytest.approx(10.0)


def _endpoint(*, ready: int, target: int, scaling: dict[str, int]) -> dict[str, Any]:
    return {
        "name": "e",
        "type": "protected",
        "compute": {"scaling": {"minReplica": scaling["min"], "maxReplica": scaling["max"]}},
        "model": {"repository": "batchrun/echo", "task": "text-generation"},
        "status": {
            "state": "running",
            "url": "http://127.0.0.1:9",
            "readyReplica": ready,
            "targetReplica": target,
        },
    }


class _ControlPlane:
    """The endpoint's GET and PUT (httpx.MockTransport): the PUT bodies are the scaler's asks."""

    def __init__(self) -> None:
        self.scaling = {"min": 0, "max": 1}
        self.puts: list[dict[str, Any]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            body = json.loads(request.content)
            self.puts.append(body["compute"]["scaling"])
            scaling = body["compute"]["scaling"]
            self.scaling = {"min": scaling["minReplica"], "max": scaling["maxReplica"]}
        raw = _endpoint(ready=1, target=self.scaling["min"] or 1, scaling=self.scaling)
        return httpx.Response(200, json=raw)


def test_the_scaler_asks_once_for_what_the_deadline_needs_then_scales_down_calmly() -> None:
    plane = _ControlPlane()
    now = [0.0]
    settled = [0]
    left = [2000]
    seconds_left = [120.0]

    async def scenario() -> list[int]:
        async with EndpointsClient(
            api_url="http://control.test/v2",
            token="t",
            namespace="ns",
            transport=httpx.MockTransport(plane.handle),
        ) as client:
            scaler = DeadlineScaler(
                client,
                "e",
                namespace="ns",
                seconds_left=lambda: seconds_left[0],
                max_replicas=8,
                price_per_hour=lambda: None,
                budget_left=lambda: None,
                held=None,
                every=1.0,
                window_s=1.0,
                clock=lambda: now[0],
            )
            scaler.watch_progress(lambda: (settled[0], left[0]))
            running = Endpoint.from_raw(
                _endpoint(ready=1, target=1, scaling={"min": 0, "max": 1}), "ns"
            )
            scaler.seen(running)
            scaler.cold_start_s = 4.0
            for t in range(0, 8):  # 10 rows/s on one replica: 2000 rows need 200 s, 120 s left
                now[0], settled[0] = float(t), 10 * t
                left[0] = 2000 - settled[0]
                seconds_left[0] = 120.0 - t
                await scaler.step(running)
            asked_first = list(scaler.changes)
            three = Endpoint.from_raw(
                _endpoint(ready=3, target=3, scaling={"min": 3, "max": 3}), "ns"
            )
            now[0] = 8.0
            scaler.seen(three)  # the added replicas serve, 5 s after the ask (t = 3)
            assert scaler.cold_start_s == pytest.approx(5.0)
            # the rest goes faster than planned: few rows left, much time
            left[0], seconds_left[0] = 50, 100.0
            now[0] = 9.0
            await scaler.step(three)  # too soon after the change: no flapping
            assert scaler.changes == asked_first
            now[0] = 30.0
            await scaler.step(three)
            return scaler.changes

    changes = asyncio.run(scenario())
    assert changes == [3, 1]  # 2 replicas are not enough (cold start, margin), 4 too many
    assert plane.puts == [
        {"minReplica": 3, "maxReplica": 3},
        {"minReplica": 1, "maxReplica": 1},
    ]
    assert plane.scaling == {"min": 1, "max": 1}


def _job(tmp_path: Path, **run: Any) -> Job:
    rows = tmp_path / "in.jsonl"
    rows.write_text("".join(f'{{"text": "row {i}"}}\n' for i in range(500)))
    deadline = (dt.datetime.now().astimezone() + dt.timedelta(seconds=60)).isoformat()
    return Job.from_dict(
        {
            "endpoint": {"provider": "local", "name": "e"},
            "input": {"path": str(rows), "field": "text"},
            "output": {"path": str(tmp_path / "out.jsonl")},
            "run": {"scale": "deadline", "max_replicas": 2, **run},
            "budget": {"deadline": deadline},
        }
    )


def test_the_up_front_check_refuses_an_unmeetable_deadline_unless_best_effort(
    tmp_path: Path,
) -> None:
    job = _job(tmp_path)
    check_deadline_plan(job, None, price_per_hour=None)  # no measured rate: the run goes ahead
    state = Path(job.output.state_dir)
    state.mkdir()
    # 500 rows at 2 rows/s per replica: 250 replica-seconds, 2 replicas × ~51 s are not enough
    RunState.remember_run(state, {"rows_per_s_per_replica": 2.0, "cold_start_s": 1.0})
    with pytest.raises(JobError, match=r"max_replicas = 2.*--best-effort"):
        check_deadline_plan(job, None, price_per_hour=None)
    check_deadline_plan(_job(tmp_path, best_effort=True), None, price_per_hour=None)
    RunState.remember_run(state, {"rows_per_s_per_replica": 50.0, "cold_start_s": 1.0})
    check_deadline_plan(job, None, price_per_hour=None)  # 10 s on one replica: fine


def test_scale_deadline_needs_a_deadline_and_a_lifecycle(tmp_path: Path) -> None:
    base: dict[str, Any] = {
        "input": {"path": "in.jsonl"},
        "output": {"path": "out.jsonl"},
        "run": {"scale": "deadline"},
    }
    with pytest.raises(JobError, match=r'scale = "deadline" needs \[budget\] deadline'):
        Job.from_dict({**base, "endpoint": {"provider": "local", "name": "e"}})
    with pytest.raises(JobError, match='needs \\[endpoint\\] provider "hf" or "local"'):
        Job.from_dict(
            {**base, "endpoint": {"url": "http://127.0.0.1:9"}, "budget": {"deadline": "06:00"}}
        )
