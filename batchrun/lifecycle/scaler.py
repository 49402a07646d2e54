"""The lease's deadline scaling at run time: `DeadlineScaler`, and the restore of the
endpoint's own scaling.

`DeadlineScaler` is the lease's watcher for `[run] scale = "deadline"`: it measures the rate
per ready replica (`scaling.RateMeter`), decides (`scaling.replicas_for_deadline`) and asks
for the replicas with `update(min_replica=…, max_replica=…)`, after noting the endpoint's own
scaling in the lease file (`LeaseRecord.own_scaling`, with `scaled_to`). Whoever puts the
endpoint to rest (the lease at the run's end, the watchdog after a kill -9, `batchrun reap`)
first puts it back with `restore_own_scaling`; `runs_own_scaling` tells a rerun that replicas
a killed run left are that run's, not drift.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from batchrun.endpoints.client import EndpointsClient
from batchrun.endpoints.models import Endpoint
from batchrun.errors import BatchrunError
from batchrun.lifecycle.registry import HeldLease, LeaseRegistry
from batchrun.lifecycle.scaling import (
    DEFAULT_COLD_START_S,
    MARGIN,
    Progress,
    RateMeter,
    ScaleDecision,
    replicas_for_deadline,
)

__all__ = ["DeadlineScaler", "restore_own_scaling", "runs_own_scaling"]

logger = logging.getLogger(__name__)


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
        window_s: the shortest span the rate is measured over (default: four decisions').
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
        window_s: float | None = None,
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
        self.meter = RateMeter(
            warmup_s=2 * every if warmup_s is None else warmup_s,
            window_s=4 * every if window_s is None else window_s,
            clock=clock,
        )
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
            rate = self.meter.sample(self._progress()[0], endpoint.ready_replica or 0, final=True)
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
        cold = self.cold_start_s or DEFAULT_COLD_START_S
        # a scale-up in flight: its replicas are starting, their cold start partly gone
        starting = max((self.asked or 0) - ready, 0) if self._asked_at is not None else 0
        starting_in = max(cold - (self._clock() - (self._asked_at or 0.0)), 0.0)

        def decide(margin: float) -> ScaleDecision:
            return replicas_for_deadline(
                rows_left=rows_left,
                rate_per_replica=rate,
                seconds_left=seconds_left,
                cold_start_s=cold,
                max_replicas=self.max_replicas or own_max,
                current=ready,
                starting=starting,
                starting_in_s=starting_in,
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
