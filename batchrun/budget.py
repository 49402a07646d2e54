"""What a run costs, and when it must stop so that the pause lands inside its limits.

`CostMeter` follows DESIGN.md, "Cost": an endpoint bills per replica while it is in a billed
state (pending, initializing, updating, running), from the first such state the lease sees
until the pause (or scale-to-zero) is confirmed. Each billing period is charged per *started*
quantum (60 s on Hugging Face; `[budget] billing_quantum_s` so tests run fast), and each
quantum at the most replicas seen during it, `max(targetReplica, readyReplica, 1)`.

`Budget` holds the three limits (`max_cost_usd`, `max_duration`, `deadline`) and answers one
question: if dispatching stopped now, would the endpoint be at rest, and the bill settled,
inside every limit? The caller passes a margin (time to drain in-flight requests plus the
pause latency); the answer is the stop reason, or None to go on.

Both take an injectable monotonic clock, and `Budget` a wall clock for the deadline, so that
tests drive time by hand.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from batchrun.endpoints.models import EndpointState
from batchrun.job import BudgetSpec

__all__ = ["BILLED_STATES", "Budget", "CostMeter", "MeterReading", "StopDecision"]

BILLED_STATES = frozenset(state.value for state in EndpointState if state.bills)
"""Endpoint states that cost money. paused, scaledToZero and failed do not."""

_EPS = 1e-9


@dataclass(slots=True, kw_only=True, frozen=True)
class MeterReading:
    """One look at the meter.

    Attributes:
        cost_usd: billed cost so far, or None when the price is unknown.
        billed_s: billed replica-seconds (started quanta × quantum × replicas).
        idle_billed_s: the part of `billed_s` with no request in flight (readiness wait,
            the tail after the last result, the rest of the last started quantum).
        ready_wait_s: billed wall seconds spent before the endpoint was first ready.
        billing: whether the endpoint is billing right now.
    """

    cost_usd: float | None
    billed_s: float
    idle_billed_s: float
    ready_wait_s: float
    billing: bool


class CostMeter:
    """Meters an endpoint's bill from the lease's observations of its state.

    Call `observe` with each state read from the API (or `start`/`stop` directly), `mark_ready`
    once the endpoint first serves, and `mark_busy`/`mark_idle` around the time requests are in
    flight. All methods take an optional `at` (the clock's time) for tests and replays.
    """

    def __init__(
        self,
        *,
        price_per_hour: float | None,
        quantum_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if quantum_s <= 0:
            raise ValueError("quantum_s must be positive")
        self.price_per_hour = price_per_hour
        self.quantum_s = quantum_s
        self._clock = clock
        self._closed_units = 0.0  # replica-quanta of closed quanta and closed periods
        self._period_start: float | None = None  # start of the current billing period
        self._q_index = 0  # current quantum within the period
        self._q_max = 1  # most replicas seen in the current quantum
        self._replicas = 1
        self._busy_since: float | None = None
        self._busy = False
        self._busy_replica_s = 0.0
        self._last = 0.0  # time of the last accumulation of busy replica-seconds
        self._first_billed: float | None = None
        self._ready_at: float | None = None

    # -- events -----------------------------------------------------------------------------

    def observe(
        self,
        state: str,
        *,
        target_replica: int | None = None,
        ready_replica: int | None = None,
        at: float | None = None,
    ) -> None:
        """Record a state read from the API: starts or stops billing, updates replicas."""
        now = self._now(at)
        replicas = max(target_replica or 0, ready_replica or 0, 1)
        if state in BILLED_STATES:
            if self._period_start is None:
                self.start(replicas=replicas, at=now)
            else:
                self.set_replicas(replicas, at=now)
        elif self._period_start is not None:
            self.stop(at=now)

    def start(self, *, replicas: int = 1, at: float | None = None) -> None:
        """Billing starts (the first billed state after a resume or create)."""
        now = self._now(at)
        if self._period_start is not None:
            self.set_replicas(replicas, at=now)
            return
        self._accumulate(now)
        self._period_start = now
        self._q_index = 0
        self._replicas = max(replicas, 1)
        self._q_max = self._replicas
        if self._first_billed is None:
            self._first_billed = now

    def set_replicas(self, replicas: int, *, at: float | None = None) -> None:
        """The endpoint now runs `replicas` replicas (at least one is always billed)."""
        now = self._now(at)
        self._advance(now)
        self._accumulate(now)
        self._replicas = max(replicas, 1)
        self._q_max = max(self._q_max, self._replicas)

    def stop(self, *, at: float | None = None) -> None:
        """Billing stops (pause or scale-to-zero confirmed); the started quantum is charged."""
        now = self._now(at)
        if self._period_start is None:
            return
        self._accumulate(now)
        self._closed_units += self._period_units(now)
        self._period_start = None

    def mark_ready(self, *, at: float | None = None) -> None:
        """The endpoint answered as ready for the first time: the end of the readiness wait."""
        if self._ready_at is None:
            self._ready_at = self._now(at)

    def mark_busy(self, *, at: float | None = None) -> None:
        """Requests are in flight from now on."""
        now = self._now(at)
        self._accumulate(now)
        self._busy = True

    def mark_idle(self, *, at: float | None = None) -> None:
        """Nothing is in flight from now on (e.g. the last result arrived)."""
        now = self._now(at)
        self._accumulate(now)
        self._busy = False

    # -- readings ---------------------------------------------------------------------------

    @property
    def billing(self) -> bool:
        """Whether the endpoint is billing now, as far as the meter knows."""
        return self._period_start is not None

    def billed_s(self, *, at: float | None = None) -> float:
        """Billed replica-seconds up to `at` (default now)."""
        return self._units(self._now(at)) * self.quantum_s

    def cost_usd(self, *, at: float | None = None) -> float | None:
        """Billed cost up to `at`, or None when the price is unknown."""
        if self.price_per_hour is None:
            return None
        return self.billed_s(at=at) * self.price_per_hour / 3600.0

    def projected_cost_usd(self, until: float) -> float | None:
        """The cost if billing went on at today's replicas until `until` and stopped there."""
        return self.cost_usd(at=until)

    def reading(self, *, at: float | None = None) -> MeterReading:
        """Everything the summary and the progress bar show."""
        now = self._now(at)
        billed = self.billed_s(at=now)
        busy = self._busy_replica_s
        if self._busy and self._period_start is not None:
            busy += max(now - self._last, 0.0) * self._replicas
        ready_wait = 0.0
        if self._first_billed is not None:
            end = self._ready_at if self._ready_at is not None else now
            ready_wait = max(end - self._first_billed, 0.0)
        return MeterReading(
            cost_usd=self.cost_usd(at=now),
            billed_s=billed,
            idle_billed_s=max(billed - busy, 0.0),
            ready_wait_s=ready_wait,
            billing=self.billing,
        )

    # -- internals --------------------------------------------------------------------------

    def _now(self, at: float | None) -> float:
        return self._clock() if at is None else at

    def _units(self, now: float) -> float:
        units = self._closed_units
        if self._period_start is not None:
            units += self._period_units(now)
        return units

    def _advance(self, now: float) -> None:
        """Close the quanta of the current period that ended before `now`."""
        if self._period_start is None:
            return
        current = self._started_quanta(now) - 1  # quanta are (k·q, (k+1)·q], the first [0, q]
        if current > self._q_index:
            # the quantum in progress at its max, the ones skipped over at today's replicas
            self._closed_units += self._q_max + (current - self._q_index - 1) * self._replicas
            self._q_index = current
            self._q_max = self._replicas

    def _started_quanta(self, now: float) -> int:
        assert self._period_start is not None
        elapsed = max(now - self._period_start, 0.0)
        return max(math.ceil(elapsed / self.quantum_s - _EPS), 1)

    def _period_units(self, now: float) -> float:
        """Replica-quanta of the current period not yet in `_closed_units`, charged up to now."""
        started = self._started_quanta(now)
        later = max(started - 1 - self._q_index, 0)  # quanta after the last event's
        return float(self._q_max + later * self._replicas)

    def _accumulate(self, now: float) -> None:
        if self._busy and self._period_start is not None:
            self._busy_replica_s += max(now - self._last, 0.0) * self._replicas
        self._last = now


@dataclass(slots=True, kw_only=True, frozen=True)
class StopDecision:
    """Why dispatching must stop now.

    Attributes:
        reason: "budget" (max_cost_usd) or "deadline" (max_duration or deadline).
        message: one line for the summary and the log.
    """

    reason: str
    message: str


class Budget:
    """The run's hard limits, checked against a projection of where the pause would land."""

    def __init__(
        self,
        *,
        max_cost_usd: float | None = None,
        max_duration_s: float | None = None,
        deadline: dt.datetime | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.max_cost_usd = max_cost_usd
        self.max_duration_s = max_duration_s
        self.deadline = deadline
        self._clock = clock
        self._wall_clock = wall_clock or (lambda: dt.datetime.now().astimezone())
        self.started = clock()

    @classmethod
    def from_spec(
        cls,
        spec: BudgetSpec,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], dt.datetime] | None = None,
    ) -> Budget:
        """The limits of a job's `[budget]` section, counting duration from now."""
        return cls(
            max_cost_usd=spec.max_cost_usd,
            max_duration_s=spec.max_duration,
            deadline=spec.deadline,
            clock=clock,
            wall_clock=wall_clock,
        )

    @property
    def limited(self) -> bool:
        """Whether any limit is set."""
        return (
            self.max_cost_usd is not None
            or self.max_duration_s is not None
            or self.deadline is not None
        )

    def seconds_left(self) -> float | None:
        """Seconds until the nearest time limit (duration or deadline), or None without one."""
        now = self._clock()
        lefts: list[float] = []
        if self.max_duration_s is not None:
            lefts.append(self.started + self.max_duration_s - now)
        if self.deadline is not None:
            lefts.append((self.deadline - self._wall_clock()).total_seconds())
        return min(lefts) if lefts else None

    def check(self, meter: CostMeter, *, margin_s: float) -> StopDecision | None:
        """Whether to stop dispatching now so that the endpoint rests inside every limit.

        Args:
            meter: the run's cost meter.
            margin_s: how long from now until billing would stop if this check let the run
                go on: the time to the next check, plus draining in-flight requests,
                committing, and the pause call with its read-back.

        Returns:
            The reason to stop, or None to go on.
        """
        now = self._clock()
        left = self.seconds_left()
        if left is not None and left <= margin_s:
            which = (
                "deadline"
                if self.deadline is not None
                and (self.deadline - self._wall_clock()).total_seconds() <= margin_s
                else "max_duration"
            )
            what = (
                f"deadline {self.deadline.isoformat(timespec='seconds')}"
                if which == "deadline" and self.deadline is not None
                else f"max_duration {self.max_duration_s:g}s"
            )
            return StopDecision(
                reason="deadline",
                message=f"stopped {margin_s:.1f}s before the {what} so the pause lands inside it",
            )
        if self.max_cost_usd is not None:
            projected = meter.projected_cost_usd(now + margin_s)
            if projected is not None and projected > self.max_cost_usd + _EPS:
                return StopDecision(
                    reason="budget",
                    message=(
                        f"stopped at ${meter.cost_usd() or 0.0:.4f}: going on would bill "
                        f"${projected:.4f} by the time the endpoint is paused, over "
                        f"max_cost_usd ${self.max_cost_usd:g}"
                    ),
                )
        return None
