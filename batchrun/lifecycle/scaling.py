"""Replicas chosen for the deadline (`[run] scale = "deadline"`).

`replicas_for_deadline` is the decision, a pure function: from the rows left, the rate one
ready replica serves, the seconds left before the deadline, the cold start of a new replica,
`[run] max_replicas` and what the budget has left, the fewest replicas that finish in time.
Its model: the replicas running now keep serving; each added one serves only after the cold
start; a removed one stops at once. The work itself costs about the same replica-seconds
whatever the count (rows ÷ rate per replica), so what more replicas add to the bill is one
cold start each: that is what the budget bounds.

`RateMeter` measures rows/s per ready replica from the runner's settled-row count, after a
warm-up and again after every change of the ready count. `DeadlineScaler` is the lease's
watcher that applies the decision with `update(min_replica=…, max_replica=…)`, after noting
the endpoint's own scaling in the lease file (`LeaseRecord.own_scaling`) so that the run's end,
the watchdog and `batchrun reap` can put it back (`restore_own_scaling`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from batchrun.endpoints.client import EndpointsClient
from batchrun.endpoints.models import Endpoint
from batchrun.errors import BatchrunError, JobError
from batchrun.io.readers import open_input
from batchrun.io.state import RunState
from batchrun.job import Job
from batchrun.lifecycle.registry import HeldLease, LeaseRegistry

__all__ = [
    "DEFAULT_COLD_START_S",
    "DeadlineScaler",
    "Progress",
    "RateMeter",
    "ScaleDecision",
    "check_deadline_plan",
    "deadline_decision",
    "last_rates",
    "replicas_for_deadline",
    "restore_own_scaling",
    "rows_left_of",
    "runs_own_scaling",
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


def _rows_by(n: int, current: int, rate: float, usable_s: float, cold_start_s: float) -> float:
    """Rows `n` replicas serve in `usable_s` when `current` run now (added ones start later)."""
    kept = min(n, current)
    added = max(n - current, 0)
    return rate * (kept * usable_s + added * max(usable_s - cold_start_s, 0.0))


def replicas_for_deadline(
    *,
    rows_left: int,
    rate_per_replica: float,
    seconds_left: float,
    cold_start_s: float,
    max_replicas: int,
    current: int = 1,
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
        return (work_s + max(n - current, 0) * cold_start_s) * price_per_hour / 3600.0

    affordable_max = max_replicas
    if price_per_hour is not None and budget_left_usd is not None and price_per_hour > 0:
        spare_s = budget_left_usd * 3600.0 / price_per_hour - work_s
        if spare_s < 0:
            affordable_max = 0  # not even the work itself
        elif cold_start_s > 0:
            affordable_max = min(max_replicas, current + math.floor(spare_s / cold_start_s))
    if rows_left <= 0:
        return ScaleDecision(replicas=1, meets_deadline=True, affordable=True, cost_usd=0.0)
    need = next(
        (
            n
            for n in range(1, max_replicas + 1)
            if _rows_by(n, current, rate, usable, cold_start_s) >= rows_left
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
    rate is the rows settled since the warm-up ended over the time since, per ready replica.
    The last rate measured stays until a newer window has one.

    Args:
        warmup_s: seconds after a window starts before it counts.
        clock: the monotonic clock.
    """

    def __init__(
        self, *, warmup_s: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.warmup_s = warmup_s
        self._clock = clock
        self._ready = -1
        self._start = 0.0
        self._warm: tuple[float, int] | None = None
        self.rate: float | None = None

    def sample(self, settled: int, ready: int) -> float | None:
        """Note the settled rows with `ready` replicas serving; the rate per replica, if known."""
        now = self._clock()
        if ready != self._ready:
            self._ready, self._start, self._warm = ready, now, None
        elif ready > 0 and now - self._start >= self.warmup_s:
            if self._warm is None:
                self._warm = (now, settled)
            elif now > self._warm[0] and settled > self._warm[1]:
                self.rate = (settled - self._warm[1]) / (now - self._warm[0]) / ready
        return self.rate


def _scaling_of(endpoint: Endpoint) -> dict[str, int]:
    return {"min_replica": endpoint.min_replica or 0, "max_replica": endpoint.max_replica or 1}


async def restore_own_scaling(
    client: EndpointsClient, name: str, *, namespace: str, own: dict[str, Any] | None
) -> bool:
    """Put the endpoint's own `min/max_replica` back (as a lease file noted them); whether it
    was changed. A call that fails is logged, not raised: the rest still has to happen.
    """
    if not own:
        return False
    try:
        found = await client.get(name, namespace=namespace)
        if _scaling_of(found) == {k: own.get(k) for k in ("min_replica", "max_replica")}:
            return False
        await client.update(
            name,
            namespace=namespace,
            min_replica=int(own["min_replica"]),
            max_replica=int(own["max_replica"]),
        )
    except (BatchrunError, KeyError, TypeError, ValueError) as e:
        logger.warning("%s/%s: could not restore its own scaling %s: %s", namespace, name, own, e)
        return False
    logger.info("%s/%s: its own scaling restored (%s)", namespace, name, own)
    return True


class DeadlineScaler:
    """The lease's watcher for `[run] scale = "deadline"`: asks for the replicas the deadline
    needs, at most every `every` seconds, and keeps what it did for the summary.

    Args:
        client: the endpoints client.
        name, namespace: the endpoint.
        seconds_left: seconds until the deadline, now.
        max_replicas: `[run] max_replicas` (None: the endpoint's own max_replica).
        price_per_hour: the meter's price (None: unknown).
        budget_left: USD `max_cost_usd` has left now (None: no limit).
        held: the lease, whose file gets the endpoint's own scaling before the first change.
        every: seconds between two decisions.
        warmup_s: the rate meter's warm-up (default: two decisions' time).
        clock: the monotonic clock.

    Attributes:
        own: the endpoint's own scaling (`min_replica`, `max_replica`), once read.
        cold_start_s: the measured cold start (None until measured).
        changes: the replica counts asked for, in order.
        rate: the last measured rows/s per ready replica.
    """

    def __init__(
        self,
        client: EndpointsClient,
        name: str,
        *,
        namespace: str,
        seconds_left: Callable[[], float | None],
        max_replicas: int | None,
        price_per_hour: Callable[[], float | None],
        budget_left: Callable[[], float | None],
        held: HeldLease | None,
        every: float = 1.0,
        warmup_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.name = name
        self.namespace = namespace
        self.seconds_left = seconds_left
        self.max_replicas = max_replicas
        self.price_per_hour = price_per_hour
        self.budget_left = budget_left
        self.held = held
        self.every = every
        self.meter = RateMeter(warmup_s=2 * every if warmup_s is None else warmup_s, clock=clock)
        self._clock = clock
        self.own: dict[str, int] | None = None
        self.cold_start_s: float | None = None
        self.changes: list[int] = []
        self.rate: float | None = None
        self.asked: int | None = None
        self._progress: Progress | None = None
        self._starting_since: float | None = None
        self._asked_at: float | None = None
        self._changed_at: float | None = None
        self.last: ScaleDecision | None = None

    def watch_progress(self, progress: Progress) -> None:
        """The runner's settled-row count and rows left, asked at each decision."""
        self._progress = progress

    def seen(self, endpoint: Endpoint) -> None:
        """Each state read: the cold start is measured from the endpoint's own
        `initializing` (or `pending`) until it runs, and after a scale-up until the ready
        count reaches what was asked."""
        now = self._clock()
        if self.own is None:
            self.own = _scaling_of(endpoint)
        state = endpoint.state_text
        if state in ("pending", "initializing", "updating"):
            if self._starting_since is None:
                self._starting_since = now
        elif state == "running" and self._starting_since is not None:
            self.cold_start_s = now - self._starting_since
            self._starting_since = None
        if (
            self._asked_at is not None
            and self.asked is not None
            and (endpoint.ready_replica or 0) >= self.asked
            and state == "running"
        ):
            self.cold_start_s = max(self.cold_start_s or 0.0, now - self._asked_at)
            self._asked_at = None

    def last_result(self, endpoint: Endpoint | None) -> None:
        """The runner has its last result: a last sample, so a short run has a rate too."""
        if self._progress is not None and endpoint is not None:
            rate = self.meter.sample(self._progress()[0], endpoint.ready_replica or 0)
            self.rate = rate if rate is not None else self.rate

    def summary_fields(self) -> dict[str, Any]:
        """What the run summary (and so `last_run.json`, for `batchrun plan`) keeps."""
        return {
            "rows_per_s_per_replica": None if self.rate is None else round(self.rate, 4),
            "replicas_asked": list(self.changes),
            "cold_start_s": None if self.cold_start_s is None else round(self.cold_start_s, 2),
        }

    async def run(self, endpoint: Callable[[], Endpoint | None]) -> None:
        """Decide every `every` seconds until cancelled (the lease cancels it at the end)."""
        while True:
            await asyncio.sleep(self.every)
            current = endpoint()
            if current is None or self._progress is None or current.state_text != "running":
                continue
            try:
                await self.step(current)
            except BatchrunError as e:
                logger.warning("%s/%s: scaling for the deadline: %s", self.namespace, self.name, e)

    async def step(self, current: Endpoint) -> ScaleDecision | None:
        """Measure, decide, and ask for a new replica count when it differs from the last.

        Raises:
            APIError, APIConnectionError: the update was refused or the API unreachable.
        """
        assert self._progress is not None
        settled, rows_left = self._progress()
        ready = current.ready_replica or 0
        rate = self.meter.sample(settled, ready)
        seconds_left = self.seconds_left()
        if rate is None or rows_left is None or seconds_left is None or ready == 0:
            return None
        self.rate = rate
        own_max = (self.own or {}).get("max_replica", 1)

        def decide(margin: float) -> ScaleDecision:
            return replicas_for_deadline(
                rows_left=rows_left,
                rate_per_replica=rate,
                seconds_left=seconds_left,
                cold_start_s=self.cold_start_s or DEFAULT_COLD_START_S,
                max_replicas=self.max_replicas or own_max,
                current=ready,
                price_per_hour=self.price_per_hour(),
                budget_left_usd=self.budget_left(),
                margin=margin,
            )

        decision = decide(MARGIN)
        self.last = decision
        want = decision.replicas
        have = self.asked if self.asked is not None else max(current.target_replica or 0, 1)
        if want < have:
            # ahead of plan: fewer replicas only when they would still finish with twice the
            # margin, and not while a scale-up is starting or soon after a change (no flapping)
            calm = self._changed_at is None or (
                self._clock() - self._changed_at >= max(8 * self.every, self.cold_start_s or 0.0)
            )
            want = (
                min(decide(2 * MARGIN).replicas, have) if calm and self._asked_at is None else have
            )
        if want == have:
            return decision
        if self.held is not None:  # before the change: a kill during it still restores
            own = self.held.record.own_scaling or (dict(self.own) if self.own else None)
            self.held.update(own_scaling=own, scaled_to={"min_replica": want, "max_replica": want})
        logger.info(
            "%s/%s: %d replica(s) for the deadline (%d rows left at %.3g rows/s per replica, "
            "%.0fs left)%s",
            self.namespace,
            self.name,
            want,
            rows_left,
            rate,
            seconds_left,
            "" if decision.feasible else f"; {decision.reason}",
        )
        await self.client.update(
            self.name, namespace=self.namespace, min_replica=want, max_replica=want
        )
        self.asked = want
        self.changes.append(want)
        self._changed_at = self._clock()
        if want > have:
            self._asked_at = self._clock()
        return decision


def last_rates(job: Job) -> tuple[float | None, float | None]:
    """(rows/s per replica, cold start s) the job's last run measured, from `last_run.json`."""
    last = RunState.last_run(RunState.directory_for(job.output.path)) or {}
    rate, cold = last.get("rows_per_s_per_replica"), last.get("cold_start_s")
    return (
        float(rate) if isinstance(rate, int | float) and rate > 0 else None,
        float(cold) if isinstance(cold, int | float) and cold >= 0 else None,
    )


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


def runs_own_scaling(
    registry: LeaseRegistry, held: HeldLease | None, found: Endpoint | None
) -> tuple[Endpoint | None, dict[str, int] | None]:
    """A dead lease on this endpoint whose run changed its scaling, still on it (a kill the
    watchdog could not settle): the endpoint as it was before (so that is not drift) and its
    own scaling, which this run puts back at its end (it takes the dead lease over, so
    `batchrun reap` does not pause the endpoint under it); else `(found, None)`."""
    if found is None or held is None:
        return found, None
    now = _scaling_of(found)
    for record in registry.records():
        if (
            record.key == held.record.key
            and record.id != held.record.id
            and record.own_scaling
            and record.scaled_to == now
            and not registry.is_live(record.id)
        ):
            own = {k: int(record.own_scaling[k]) for k in ("min_replica", "max_replica")}
            held.update(own_scaling=own)
            dead = registry.claim(record.id)
            if dead is not None:  # this run puts the endpoint to rest: the dead lease is done
                dead.release()
            return (
                dataclasses.replace(
                    found, min_replica=own["min_replica"], max_replica=own["max_replica"]
                ),
                own,
            )
    return found, None
