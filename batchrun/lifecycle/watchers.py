"""What runs beside the requests while a lease holds its endpoint: the watcher tasks.

`watch_state` reads the endpoint every `refresh_every` seconds (feeding the cost meter); a
`failed` state, a deletion or a pause by someone else mid-run stops the run with reason
`"endpoint_failed"`. `watch_budget` checks the budget often enough that the stop lands inside
the limit (`"budget"` / `"deadline"`), and notes the meter in the lease file for
`batchrun status`. Both stop through the lease's `stop(reason, message)`; the lease cancels them.
`cancel_all` ends such tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from batchrun.budget import Budget, CostMeter
from batchrun.endpoints.client import EndpointsClient
from batchrun.endpoints.models import Endpoint, EndpointState
from batchrun.errors import BatchrunError, NotFoundError
from batchrun.lifecycle.registry import HeldLease

__all__ = ["EndpointReader", "cancel_all", "watch_budget", "watch_state"]

logger = logging.getLogger(__name__)

FAILED = (EndpointState.FAILED, EndpointState.UPDATE_FAILED)
"""The states in which an endpoint cannot serve."""

Stop = Callable[[str, str], None]
"""`stop(reason, message)`: ask the runner to stop dispatching."""


class EndpointReader:
    """Reads one endpoint (None once it is gone), keeping the slowest recent round trip.

    Attributes:
        rtt: the slowest recent read, in seconds (decays by 0.8 a read).
    """

    def __init__(self, client: EndpointsClient, name: str, namespace: str) -> None:
        self.client = client
        self.name = name
        self.namespace = namespace
        self.rtt = 0.0

    async def read(self) -> Endpoint | None:
        """The endpoint as the API has it now, or None when it does not exist.

        Raises:
            APIError, APIConnectionError: the API refused or could not be reached.
        """
        start = time.monotonic()
        try:
            return await self.client.get(self.name, namespace=self.namespace)
        except NotFoundError:
            return None
        finally:
            self.rtt = max(self.rtt * 0.8, time.monotonic() - start)


async def watch_state(
    reader: EndpointReader,
    *,
    every: float,
    stop: Stop,
    seen: Callable[[Endpoint], None],
    serving: Callable[[], bool],
) -> None:
    """Read the endpoint every `every` seconds until it fails, is deleted, or is paused.

    Args:
        reader: the lease's reader.
        every: seconds between two reads.
        stop: called once, with reason "endpoint_failed", when the endpoint cannot serve.
        seen: called with each endpoint read (the lease keeps it and feeds the meter).
        serving: whether the endpoint was ready (a pause counts only from then on).
    """
    where = f"endpoint {reader.namespace}/{reader.name}"
    while True:
        await asyncio.sleep(every)
        try:
            endpoint = await reader.read()
        except BatchrunError as e:
            logger.warning("could not read %s/%s: %s", reader.namespace, reader.name, e)
            continue
        if endpoint is None:
            stop("endpoint_failed", f"{where} was deleted during the run")
            return
        seen(endpoint)
        if endpoint.state in FAILED:
            reason = endpoint.message or "no message from the server"
            stop("endpoint_failed", f"{where} {endpoint.state_text} mid-run: {reason}")
            return
        if endpoint.state is EndpointState.PAUSED and serving():
            stop("endpoint_failed", f"{where} was paused by someone else mid-run")
            return


async def watch_budget(
    *,
    meter: CostMeter,
    budget: Budget,
    stop: Stop,
    stopped: Callable[[], bool],
    margin_s: Callable[[], float],
    held: HeldLease | None,
) -> None:
    """Check the budget each tick, stopping early enough that the pause lands inside it.

    Args:
        meter: the run's cost meter.
        budget: the run's limits.
        stop: called with the budget's decision ("budget" or "deadline").
        stopped: whether the run is already stopping (then nothing more is decided).
        margin_s: seconds from a stop decision until billing stops.
        held: the lease, whose file gets the meter every 2 s.
    """
    tick = min(1.0, max(meter.quantum_s / 8, 0.05))
    next_note = 0.0
    while True:
        await asyncio.sleep(tick)
        if budget.limited and not stopped():
            decision = budget.check(meter, margin_s=tick + margin_s())
            if decision is not None:
                stop(decision.reason, decision.message)
        now = time.monotonic()
        if held is not None and now >= next_note:
            next_note = now + 2.0
            reading = meter.reading()
            with contextlib.suppress(OSError):
                held.update(
                    meter={
                        "cost_usd": reading.cost_usd,
                        "billed_s": reading.billed_s,
                        "idle_billed_s": reading.idle_billed_s,
                    }
                )


async def cancel_all(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel the tasks that are still running and wait for all of them to end; what they
    raised is theirs (a caller that wants a result asks the task itself)."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
