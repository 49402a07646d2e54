from __future__ import annotations

import datetime as dt

import pytest

from batchrun.budget import Budget, CostMeter
from batchrun.job import BudgetSpec


class Clock:
    """A hand-driven monotonic clock."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_started_quantum_is_billed_whole() -> None:
    clock = Clock()
    meter = CostMeter(price_per_hour=3.6, quantum_s=60, clock=clock)
    meter.observe("initializing", target_replica=1, ready_replica=0)
    assert meter.billed_s() == 60  # the first quantum is charged the moment billing starts
    clock.t += 59.9
    assert meter.billed_s() == 60
    clock.t += 0.2
    assert meter.billed_s() == 120
    meter.observe("paused")
    clock.t += 3600
    assert meter.billed_s() == 120
    assert meter.cost_usd() == pytest.approx(120 * 3.6 / 3600)
    assert not meter.billing


def test_quantum_boundary_is_not_a_new_quantum() -> None:
    clock = Clock()
    meter = CostMeter(price_per_hour=1.0, quantum_s=10, clock=clock)
    meter.start()
    clock.t += 10
    meter.set_replicas(1)
    meter.stop()
    assert meter.billed_s() == 10


def test_each_quantum_bills_the_most_replicas_seen_in_it() -> None:
    clock = Clock()
    meter = CostMeter(price_per_hour=1.0, quantum_s=10, clock=clock)
    meter.observe("running", target_replica=1, ready_replica=1)
    clock.t += 5
    meter.observe("running", target_replica=3, ready_replica=1)  # scaling up in quantum 0
    clock.t += 10  # quantum 1 at 3 replicas
    meter.observe("running", target_replica=1, ready_replica=2)  # quantum 1 (still max 3)
    clock.t += 10  # t = 25: quantum 2 at 2 replicas
    meter.observe("paused")
    assert meter.billed_s() == (3 + 3 + 2) * 10


def test_replicas_never_below_one_and_scaled_to_zero_stops_billing() -> None:
    clock = Clock()
    meter = CostMeter(price_per_hour=None, quantum_s=1, clock=clock)
    meter.observe("running", target_replica=0, ready_replica=0)
    clock.t += 2.5
    meter.observe("scaledToZero")
    clock.t += 100
    meter.observe("initializing", target_replica=1)  # woken: a new billing period
    clock.t += 0.5
    meter.stop()
    assert meter.billed_s() == 3 + 1
    assert meter.cost_usd() is None


def test_idle_share_counts_readiness_and_tail() -> None:
    clock = Clock()
    meter = CostMeter(price_per_hour=1.0, quantum_s=1, clock=clock)
    meter.observe("initializing")
    clock.t += 4
    meter.mark_ready()
    meter.mark_busy()
    clock.t += 10
    meter.mark_idle()
    clock.t += 0.5
    meter.observe("paused")
    reading = meter.reading()
    assert reading.billed_s == 15
    assert reading.ready_wait_s == 4
    assert reading.idle_billed_s == pytest.approx(5)  # 4 s readiness + 0.5 s tail + 0.5 s rounding


def test_budget_stops_before_the_quantum_that_would_overrun() -> None:
    clock = Clock()
    price = 36.0  # $0.01 per second per replica
    meter = CostMeter(price_per_hour=price, quantum_s=10, clock=clock)
    budget = Budget(max_cost_usd=0.30, clock=clock)  # three quanta
    meter.start()
    margin, step = 2.0, 0.5  # to the pause landing; to the next check
    stops = []
    while not stops:
        clock.t += step
        decision = budget.check(meter, margin_s=margin + step)
        if decision:
            stops.append((clock.t - budget.started, decision))
    elapsed, decision = stops[0]
    assert decision.reason == "budget"
    assert "max_cost_usd" in decision.message
    # stopping at elapsed, billing ends by elapsed + margin, inside the third quantum
    assert 30 - margin - step < elapsed <= 30 - margin
    clock.t += margin
    meter.stop()
    cost = meter.cost_usd()
    assert cost is not None and cost <= 0.30 + 1e-9


def test_duration_and_deadline() -> None:
    clock = Clock()
    wall = dt.datetime(2026, 1, 1, 5, 0, tzinfo=dt.UTC)
    start_wall = wall

    def wall_clock() -> dt.datetime:
        return start_wall + dt.timedelta(seconds=clock.t - 1000.0)

    meter = CostMeter(price_per_hour=None, clock=clock)
    budget = Budget(max_duration_s=60, clock=clock, wall_clock=wall_clock)
    assert budget.check(meter, margin_s=5) is None
    clock.t += 54.9
    assert budget.check(meter, margin_s=5) is None
    clock.t += 0.2
    decision = budget.check(meter, margin_s=5)
    assert decision is not None and decision.reason == "deadline"
    assert "max_duration 60s" in decision.message

    clock.t = 1000.0
    deadline = wall + dt.timedelta(seconds=30)
    budget = Budget(deadline=deadline, clock=clock, wall_clock=wall_clock)
    assert budget.seconds_left() == pytest.approx(30)
    clock.t += 26
    decision = budget.check(meter, margin_s=5)
    assert decision is not None and decision.reason == "deadline"
    assert "deadline 2026-01-01T05:00:30" in decision.message


def test_from_spec_and_unlimited() -> None:
    budget = Budget.from_spec(BudgetSpec())
    assert not budget.limited
    assert budget.seconds_left() is None
    meter = CostMeter(price_per_hour=1000.0, quantum_s=1)
    meter.start()
    assert budget.check(meter, margin_s=100) is None
    limited = Budget.from_spec(BudgetSpec(max_cost_usd=1.0, max_duration=90.0))
    assert limited.limited and limited.max_duration_s == 90.0


def test_unknown_price_never_stops_on_cost() -> None:
    clock = Clock()
    meter = CostMeter(price_per_hour=None, quantum_s=1, clock=clock)
    meter.start()
    budget = Budget(max_cost_usd=0.01, clock=clock)
    clock.t += 1000
    assert budget.check(meter, margin_s=1) is None
