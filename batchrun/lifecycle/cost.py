"""`LeaseCost`: what holding the endpoint costs, from its price to the summary's figures.

The lease gives it what it sees (`observe` each state read, `ready`, `mark_idle`); it keeps
the cost meter (`budget.CostMeter`) and the run's limits (`budget.Budget`), learns the price
and refuses a budget below one quantum (`pricing`), and runs the budget watcher
(`watchers.watch_budget`) that stops the run early enough for the pause to land inside the
limit. All the cost arithmetic stays in `batchrun.budget`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from batchrun.budget import Budget, CostMeter
from batchrun.endpoints.client import EndpointsClient
from batchrun.endpoints.models import Endpoint
from batchrun.job import Job
from batchrun.lifecycle.pricing import check_budget_fits, price_per_hour
from batchrun.lifecycle.registry import HeldLease
from batchrun.lifecycle.watchers import Stop, watch_budget

__all__ = ["LeaseCost"]

logger = logging.getLogger(__name__)


class LeaseCost:
    """The meter, the budget and the budget watcher of one lease.

    Args:
        job: the job (its `[budget]`, and `[run]` for the time a stop takes to land).
        clock: the monotonic clock of the meter and the budget.

    Attributes:
        meter: the cost meter.
        budget: the run's limits.
        idle_at: when the runner had its last result (None until then).
    """

    def __init__(self, job: Job, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.job = job
        self.meter = CostMeter(
            price_per_hour=job.budget.price_per_hour,
            quantum_s=job.budget.billing_quantum_s,
            clock=clock,
        )
        self.budget = Budget.from_spec(job.budget, clock=clock)
        self.idle_at: float | None = None
        self._clock = clock

    async def learn_price(
        self, client: EndpointsClient, endpoint: Endpoint | None, *, namespace: str
    ) -> None:
        """Price the endpoint (as it will run) and check the budget covers one quantum.

        Raises:
            JobError: `max_cost_usd` without a known price, or below one billing quantum;
                a past deadline.
        """
        price = await price_per_hour(self.job, client, endpoint, namespace=namespace)
        self.meter.price_per_hour = price
        check_budget_fits(self.job, price, self.budget)

    def observe(self, endpoint: Endpoint) -> None:
        """A state read from the API: the meter bills what it says."""
        self.meter.observe(
            endpoint.state_text,
            target_replica=endpoint.target_replica,
            ready_replica=endpoint.ready_replica,
        )

    def ready(self) -> float:
        """The endpoint serves: requests start now; the billed seconds spent waiting for it."""
        self.meter.mark_ready()
        self.meter.mark_busy()
        return self.meter.reading().ready_wait_s

    def mark_idle(self) -> None:
        """The runner has its last result: from here on, billed time is idle."""
        if self.idle_at is None:
            self.idle_at = self._clock()
            self.meter.mark_idle(at=self.idle_at)

    def margin_s(self, rtt: float) -> float:
        """From a stop decision until billing stops: drain in-flight requests, commit, pause
        (`rtt`: the slowest recent control-plane round trip)."""
        drain = min(self.job.run.grace_period, self.job.run.request_timeout)
        return drain + max(0.5, 3 * rtt)

    def watch(
        self,
        *,
        stop: Stop,
        stopped: Callable[[], bool],
        rtt: Callable[[], float],
        held: HeldLease | None,
    ) -> Coroutine[Any, Any, None]:
        """The budget watcher (`watchers.watch_budget`) for this meter and budget."""
        return watch_budget(
            meter=self.meter,
            budget=self.budget,
            stop=stop,
            stopped=stopped,
            margin_s=lambda: self.margin_s(rtt()),
            held=held,
        )

    def log_rest_requested(self, on_exit: str) -> None:
        """INFO: how long after the last result the rest was asked for (the idle tail)."""
        if self.idle_at is not None:
            ms = (self._clock() - self.idle_at) * 1000
            logger.info("last result → %s requested in %.0f ms", on_exit, ms)

    def log_rested(self, namespace: str, name: str, state: str | None) -> None:
        """INFO: the bill, once the endpoint is at rest and the meter stopped."""
        reading = self.meter.reading()
        logger.info(
            "%s/%s %s; billed %.2fs, idle %.2fs of it (%.2fs waiting until ready), cost %s",
            namespace,
            name,
            state,
            reading.billed_s,
            reading.idle_billed_s,
            reading.ready_wait_s,
            "unknown" if reading.cost_usd is None else f"${reading.cost_usd:.4f}",
        )

    def summary_fields(self) -> dict[str, Any]:
        """The cost fields of the run summary: cost_usd, billed_s, idle_billed_s."""
        reading = self.meter.reading()
        return {
            "cost_usd": None if reading.cost_usd is None else round(reading.cost_usd, 6),
            "billed_s": round(reading.billed_s, 3),
            "idle_billed_s": round(reading.idle_billed_s, 3),
        }
