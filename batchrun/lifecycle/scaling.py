"""Replicas chosen for the deadline (`[run] scale = "deadline"`): the decision and the plan.

`replicas_for_deadline` is the decision, a pure function: from the rows left, the rate one
ready replica serves, the seconds left before the deadline, the cold start of a new replica,
`[run] max_replicas` and what the budget has left, the fewest replicas that finish in time.
Its model: the replicas running now keep serving; each added one serves only after the cold
start; a removed one stops at once. The work itself costs about the same replica-seconds
whatever the count (rows ÷ rate per replica), so what more replicas add to the bill is one
cold start each: that is what the budget bounds.

`RateMeter` measures rows/s per ready replica from the runner's settled-row count, after a
warm-up and again after every change of the ready count. `deadline_decision` is the decision
for a job before it starts, at the rate its last run measured (`last_rates`, from
`last_run.json`): `batchrun plan` shows it, and `check_deadline_plan` refuses a deadline that
cannot be met before anything is spent. The lease's watcher that applies the decision, and
the restore of the endpoint's own scaling, are `scaler`'s.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from batchrun.endpoints.models import Endpoint
from batchrun.errors import BatchrunError, JobError
from batchrun.io.readers import open_input
from batchrun.io.state import RunState
from batchrun.job import Job

__all__ = [
    "DEFAULT_COLD_START_S",
    "MARGIN",
    "Progress",
    "RateMeter",
    "ScaleDecision",
    "carried_rates",
    "check_deadline_plan",
    "deadline_decision",
    "last_rates",
    "replicas_for_deadline",
    "rows_left_of",
]

logger = logging.getLogger(__name__)

DEFAULT_COLD_START_S = 120.0
"""A new replica's cold start until the endpoint's own `initializing` time was measured."""

MARGIN = 0.15
"""The share of the time left kept in reserve: plan to finish by 85 % of it."""

Progress = Callable[[], tuple[int, int | None]]
"""`progress()`: (rows settled by this run so far, rows left or None when unknown)."""


@dataclass(slots=True, kw_only=True, frozen=True)
class ScaleDecision:
    """What `replicas_for_deadline` decided.

    Attributes:
        replicas: the replicas to run (1 to `max_replicas`).
        meets_deadline: whether `replicas` finish before the deadline (with the margin).
        affordable: whether the budget pays for finishing with `replicas`.
        cost_usd: what the rest of the run costs at `replicas` (None without a price).
        reason: why the deadline cannot be met, in one line (None when it can).
    """

    replicas: int
    meets_deadline: bool
    affordable: bool
    cost_usd: float | None
    reason: str | None = None

    @property
    def feasible(self) -> bool:
        """Whether the deadline is met within `max_replicas` and the budget."""
        return self.meets_deadline and self.affordable


def _rows_by(
    n: int,
    current: int,
    rate: float,
    usable_s: float,
    cold_start_s: float,
    starting: int = 0,
    starting_in_s: float = 0.0,
) -> float:
    """Rows `n` replicas serve in `usable_s` when `current` run now, `starting` more serve in
    `starting_in_s` (asked for already) and any others only after a whole cold start."""
    kept = min(n, current)
    pending = min(max(n - current, 0), starting)
    added = max(n - current - starting, 0)
    return rate * (
        kept * usable_s
        + pending * max(usable_s - starting_in_s, 0.0)
        + added * max(usable_s - cold_start_s, 0.0)
    )


def replicas_for_deadline(
    *,
    rows_left: int,
    rate_per_replica: float,
    seconds_left: float,
    cold_start_s: float,
    max_replicas: int,
    current: int = 1,
    starting: int = 0,
    starting_in_s: float = 0.0,
    price_per_hour: float | None = None,
    budget_left_usd: float | None = None,
    margin: float = MARGIN,
) -> ScaleDecision:
    """The fewest replicas that finish `rows_left` before the deadline, within the limits.

    Args:
        rows_left: rows still to send.
        rate_per_replica: rows/s one ready replica serves (> 0).
        seconds_left: seconds until the deadline.
        cold_start_s: seconds from asking for a replica until it serves.
        max_replicas: the most replicas the run may ask for (`[run] max_replicas`).
        current: the replicas ready now (they serve without a cold start).
        starting: replicas asked for already, not ready yet: they serve in `starting_in_s`,
            and their cold start is paid already (so a scale-up in flight is not counted
            twice, which would ask for more while the first ones are still starting).
        starting_in_s: seconds until the `starting` replicas serve.
        price_per_hour: USD per replica-hour (None: no budget arithmetic).
        budget_left_usd: what `max_cost_usd` has left (None: no cost limit).
        margin: the share of `seconds_left` kept in reserve.

    Returns:
        The decision; when the deadline cannot be met, `replicas` is the most the limits
        allow (the best effort) and `reason` says which limit binds.
    """
    max_replicas = max(max_replicas, 1)
    current = max(current, 1)
    usable = max(seconds_left, 0.0) * (1.0 - margin)
    rate = max(rate_per_replica, 1e-12)
    work_s = max(rows_left, 0) / rate  # replica-seconds of serving, whatever the count

    def cost(n: int) -> float | None:
        if price_per_hour is None:
            return None
        starts = max(n - current - starting, 0) * cold_start_s
        starts += min(max(n - current, 0), starting) * starting_in_s
        return (work_s + starts) * price_per_hour / 3600.0

    starting = max(starting, 0)
    starting_in_s = max(min(starting_in_s, cold_start_s), 0.0)
    affordable_max = max_replicas
    if price_per_hour is not None and budget_left_usd is not None and price_per_hour > 0:
        spare_s = budget_left_usd * 3600.0 / price_per_hour - work_s - starting * starting_in_s
        if spare_s < 0:
            affordable_max = 0  # not even the work itself
        elif cold_start_s > 0:
            affordable_max = min(
                max_replicas, current + starting + math.floor(spare_s / cold_start_s)
            )
    if rows_left <= 0:
        return ScaleDecision(replicas=1, meets_deadline=True, affordable=True, cost_usd=0.0)
    need = next(
        (
            n
            for n in range(1, max_replicas + 1)
            if _rows_by(n, current, rate, usable, cold_start_s, starting, starting_in_s)
            >= rows_left
        ),
        None,
    )
    if affordable_max == 0:
        n = min(need or max_replicas, max_replicas)
        return ScaleDecision(
            replicas=n,
            meets_deadline=need is not None,
            affordable=False,
            cost_usd=cost(n),
            reason=f"the budget left (${budget_left_usd:.4f}) does not pay for the rows left "
            f"(${cost(n) or 0.0:.4f} at any replica count)",
        )
    if need is None:
        n = max(affordable_max, 1)
        return ScaleDecision(
            replicas=n,
            meets_deadline=False,
            affordable=True,
            cost_usd=cost(n),
            reason=f"{rows_left:,} rows at {rate_per_replica:.3g} rows/s per replica need more "
            f"than max_replicas = {max_replicas} to finish in {seconds_left:.0f}s",
        )
    if need > affordable_max:
        return ScaleDecision(
            replicas=max(affordable_max, 1),
            meets_deadline=False,
            affordable=False,
            cost_usd=cost(need),
            reason=f"the deadline needs {need} replicas (${cost(need) or 0.0:.4f}), more than "
            f"the budget left (${budget_left_usd:.4f}) pays for",
        )
    return ScaleDecision(replicas=need, meets_deadline=True, affordable=True, cost_usd=cost(need))


class RateMeter:
    """Rows/s per ready replica, measured while the ready count holds still.

    A window starts at the first sample and again at each change of the ready count; its
    first `warmup_s` seconds are left out (connections, a new replica's first requests). The
    rate is the rows settled since the warm-up ended over the time since, per ready replica,
    once that spans `window_s` (rows settle in bursts: a short span misreads the rate, and a
    low misread buys a replica too many). The last rate measured stays until a newer window
    has one.

    Args:
        warmup_s: seconds after a window starts before it counts.
        window_s: the shortest span a rate is measured over.
        clock: the monotonic clock.
    """

    def __init__(
        self,
        *,
        warmup_s: float = 2.0,
        window_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.warmup_s = warmup_s
        self.window_s = window_s
        self._clock = clock
        self._ready = -1
        self._start = 0.0
        self._warm: tuple[float, int] | None = None
        self.rate: float | None = None

    def sample(self, settled: int, ready: int, *, final: bool = False) -> float | None:
        """Note the settled rows with `ready` replicas serving; the rate per replica, if known.
        `final`: the run's last sample, measured over whatever span it has (a short run)."""
        now = self._clock()
        if ready != self._ready:
            self._ready, self._start, self._warm = ready, now, None
        elif ready > 0 and now - self._start >= self.warmup_s:
            if self._warm is None:
                self._warm = (now, settled)
            elif (
                now - self._warm[0] >= (1e-9 if final else max(self.window_s, 1e-9))
                and settled > self._warm[1]
            ):
                self.rate = (settled - self._warm[1]) / (now - self._warm[0]) / ready
        return self.rate


def last_rates(job: Job) -> tuple[float | None, float | None]:
    """(rows/s per replica, cold start s) the job's last run measured, from `last_run.json`."""
    last = RunState.last_run(RunState.directory_for(job.output.path)) or {}
    rate, cold = last.get("rows_per_s_per_replica"), last.get("cold_start_s")
    return (
        float(rate) if isinstance(rate, int | float) and rate > 0 else None,
        float(cold) if isinstance(cold, int | float) and cold >= 0 else None,
    )


def carried_rates(job: Job) -> dict[str, float]:
    """For the summary of a `scale = "deadline"` run that measured nothing (refused up front,
    stopped before serving): the last run's measured rate and cold start, so its
    `last_run.json` does not lose them for the next `plan` and up-front check."""
    if job.run.scale != "deadline":
        return {}
    rate, cold = last_rates(job)
    kept = {"rows_per_s_per_replica": rate, "cold_start_s": cold}
    return {key: value for key, value in kept.items() if value is not None}


def rows_left_of(job: Job) -> int | None:
    """Rows the job has left to send, when cheap to count (no row decoded), else None."""
    try:
        rows = open_input(job.input, limit=job.run.limit, source=job.source).count_rows()
    except BatchrunError:
        return None
    if rows is None:
        return None
    view = RunState.peek(RunState.directory_for(job.output.path))
    done = view.committed.results_count + view.committed.errors_count if view else 0
    return max(rows - done, 0)


def deadline_decision(
    job: Job,
    *,
    rows_left: int | None,
    rate_per_replica: float | None,
    cold_start_s: float | None,
    price_per_hour: float | None,
    endpoint_max_replica: int | None,
    current: int = 1,
) -> ScaleDecision | None:
    """`replicas_for_deadline` for a job before it starts (None: rows, rate or deadline unknown)."""
    deadline = job.budget.deadline
    if rows_left is None or not rate_per_replica or deadline is None:
        return None
    seconds_left = (deadline - dt.datetime.now().astimezone()).total_seconds()
    return replicas_for_deadline(
        rows_left=rows_left,
        rate_per_replica=rate_per_replica,
        seconds_left=seconds_left,
        cold_start_s=DEFAULT_COLD_START_S if cold_start_s is None else cold_start_s,
        max_replicas=job.run.max_replicas or endpoint_max_replica or 1,
        current=current,
        price_per_hour=price_per_hour,
        budget_left_usd=job.budget.max_cost_usd,
    )


def check_deadline_plan(job: Job, found: Endpoint | None, *, price_per_hour: float | None) -> None:
    """Before anything is spent: refuse a deadline the last measured rate says cannot be met
    within `max_replicas` or the budget, unless `[run] best_effort` (`--best-effort`).

    With no measured rate (a first run) the run goes ahead and scales from what it measures.

    Raises:
        JobError: the deadline cannot be met (exit 2); nothing was sent or spent.
    """
    rate, cold = last_rates(job)
    decision = deadline_decision(
        job,
        rows_left=rows_left_of(job),
        rate_per_replica=rate,
        cold_start_s=cold,
        price_per_hour=price_per_hour,
        endpoint_max_replica=found.max_replica if found else job.endpoint.max_replica,
    )
    if decision is None:
        logger.info("scale = deadline: no measured rate yet; scaling from what this run measures")
        return
    if decision.feasible:
        logger.info(
            "scale = deadline: %d replica(s) at the last run's %.3g rows/s per replica",
            decision.replicas,
            rate,
        )
        return
    if job.run.best_effort:
        logger.warning("%s; going ahead (--best-effort)", decision.reason)
        return
    raise JobError(
        f"{job.source}: [budget] deadline cannot be met: {decision.reason}. Nothing was sent; "
        "raise [run] max_replicas or [budget] max_cost_usd, move the deadline, or run with "
        "--best-effort"
    )
