"""`EndpointLease`: a run's hold on its endpoint, from resume (or create) to rest.

```python
async with EndpointLease(job) as lease:        # get / create / resume, wait until ready
    ...send requests to lease.url with lease.headers, until lease.stop_event is set...
# on_exit applied here, whatever ended the block, and confirmed by reading the state back
```

Entering wakes the endpoint and waits: it reads the endpoint, checks it (`drift`), prices it
(`cost`), wakes it (`wake`) and waits until it is ready (`wake.until_ready`), while
`watchers` watch its state and the budget
(and with `[run] scale = "deadline"`, `scaling` asks for the replicas the deadline needs,
restoring the endpoint's own scaling before the rest). Leaving puts it to rest (`rest`), unless another
live lease holds it. The lease file and the watchdog are its `guard`'s (`guard.LeaseGuard`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import httpx

from batchrun.endpoints.client import EndpointsClient
from batchrun.endpoints.connect import api_url_for, open_client, state_poll_s
from batchrun.endpoints.http import ControlRetryPolicy
from batchrun.endpoints.models import Endpoint
from batchrun.errors import BatchrunError, EndpointFailedError, EndpointRestError, JobError
from batchrun.job import Job
from batchrun.lifecycle.cost import LeaseCost
from batchrun.lifecycle.drift import as_updated, check_found
from batchrun.lifecycle.guard import LeaseGuard
from batchrun.lifecycle.rest import RestOutcome, apply_on_exit, settle_even_if_cancelled
from batchrun.lifecycle.scaler import DeadlineScaler, restore_own_scaling, runs_own_scaling
from batchrun.lifecycle.scaling import Progress, carried_rates, check_deadline_plan
from batchrun.lifecycle.wake import WaitingView, until_ready, wake
from batchrun.lifecycle.watchers import EndpointReader, cancel_all, watch_state

__all__ = ["EndpointLease"]

logger = logging.getLogger(__name__)


class EndpointLease:
    """The runner's target for `provider = "hf"` and `"local"`: an async context manager.

    Attributes:
        url: the endpoint's URL for data-plane requests (set once ready).
        headers: headers for data-plane requests (the bearer token, if any).
        endpoint: the endpoint as last read.
        namespace: its namespace.
        cost: the meter (`cost.meter`, also `meter`) and the budget (`cost.budget`, `budget`).
        guard: the lease file and the watchdog.
        stop_event: set when dispatching must stop; `stop_reason` says why ("budget",
            "deadline" or "endpoint_failed") and `stop_message` in one line.
        found_state: the state the run found ("missing" when it created the endpoint).
        state_at_exit: the state read back after `on_exit` (None before the exit).
        rest: what `on_exit` did, once applied.

    Args:
        job: the job; its `[endpoint]` section says which endpoint and what to do at exit.
        token: the API token; else the local service's (provider "local"), else
            `HF_TOKEN` and the other places `resolve_token` looks.
        guard: registers the lease and starts the watchdog (default: a `LeaseGuard` in
            batchrun's home, with a watchdog unless `[endpoint] watchdog` is off).
        waiting: shows the wait until the endpoint is ready (e.g. `progress.WaitingLine`).
        refresh_every: seconds between two reads of the endpoint's state (default 0.25 s for
            a local API, 5 s otherwise).
        clock: the monotonic clock of the meter and the budget.
        transport: an httpx transport for the control plane (tests).

    Raises:
        JobError: the job's provider is not "hf" or "local".
    """

    def __init__(
        self,
        job: Job,
        *,
        token: str | None = None,
        guard: LeaseGuard | None = None,
        waiting: WaitingView | None = None,
        refresh_every: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        spec = job.endpoint
        if spec.provider not in ("hf", "local") or not spec.name:
            raise JobError(f"{job.source}: EndpointLease needs provider hf or local and a name")
        self.job = job
        self.name: str = spec.name
        # "local" (HOME_SERVICE) until entering finds this home's service; the lease file keeps
        # that word, so whoever reaps it finds the service again through service.json.
        self.api_url = api_url_for(spec)
        self._lease_api_url = self.api_url
        self.on_exit: str = spec.on_exit
        self._explicit_token = token
        self._token: str | None = None
        self.guard = guard or LeaseGuard(watchdog=spec.watchdog)
        self.waiting = waiting
        self.refresh_every = refresh_every or state_poll_s(spec, self.api_url)
        self._transport = transport
        self.url = ""
        self.headers: dict[str, str] = {}
        self.endpoint: Endpoint | None = None
        self.namespace = spec.namespace or ""
        self.cost = LeaseCost(job, clock=clock)
        self.meter, self.budget = self.cost.meter, self.cost.budget
        self.stop_event = asyncio.Event()
        self.stop_reason: str | None = None
        self.stop_message: str | None = None
        self.found_state: str | None = None
        self.state_at_exit: str | None = None
        self.rest: RestOutcome | None = None
        self._client: EndpointsClient | None = None
        self._reader: EndpointReader | None = None
        self._touched = False  # from here on, leaving must apply on_exit
        self._tasks: list[asyncio.Task[None]] = []
        self.scaler: DeadlineScaler | None = None  # `[run] scale = "deadline"`
        self._progress: Progress | None = None

    def __repr__(self) -> str:
        where = f"{self.namespace or '?'}/{self.name}"
        return f"EndpointLease({where}, on_exit={self.on_exit!r}, url={self.url!r})"

    def stop(self, reason: str, message: str) -> None:
        """Ask the runner to stop dispatching; the first reason given wins."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stop_message = message
            logger.warning("%s/%s: %s", self.namespace, self.name, message)
        self.stop_event.set()

    def mark_idle(self) -> None:
        """The runner has its last result: from here on, billed time is idle."""
        if self.scaler is not None and self.cost.idle_at is None:
            self.scaler.last_result(self.endpoint)
        self.cost.mark_idle()

    def watch_progress(self, progress: Progress) -> None:
        """The runner's settled rows and rows left, for the deadline's scaling."""
        self._progress = progress
        if self.scaler is not None:
            self.scaler.watch_progress(progress)

    def summary_fields(self) -> dict[str, Any]:
        """The lifecycle fields of the run summary."""
        return {
            "endpoint": f"{self.namespace}/{self.name}",
            "on_exit": self.on_exit,
            "endpoint_state_at_exit": self.state_at_exit,
            **self.cost.summary_fields(),
            **(
                self.scaler.summary_fields() if self.scaler is not None else carried_rates(self.job)
            ),
        }

    # -- entering: wake + wait --------------------------------------------------------------

    async def __aenter__(self) -> EndpointLease:
        """Get the endpoint running (or stop early for the budget/deadline; see `stop_event`).

        If anything fails after the endpoint was touched, `on_exit` is applied before raising.

        Raises:
            JobError: the endpoint is missing and the job cannot create it; `max_cost_usd`
                without a known price, or below one billing quantum; a past deadline.
            EndpointDriftError: the endpoint differs from the job, which does not update it.
            EndpointFailedError: it is failed, or failed while starting (exit 5).
            EndpointTimeoutError: not ready within `[endpoint] ready_timeout` (exit 5).
            APIError: the API refused a call; APIConnectionError: it could not be reached.
            EndpointRestError: on top of one of these, `on_exit` could not be applied (exit 6).
        """
        try:
            await self._enter()
        except BaseException as e:
            await settle_even_if_cancelled(self._settle(), e)
            raise
        return self

    async def _enter(self) -> None:
        client, reader = await self._connect()
        spec = self.job.endpoint
        await self.guard.register(self.job, namespace=self.namespace, api_url=self._lease_api_url)
        found = await reader.read()
        where = f"endpoint {self.namespace}/{self.name}"
        # replicas a killed run of this job asked for are its own, not drift
        found, own = runs_own_scaling(self.guard.registry, self.guard.held, found)
        drift = check_found(self.job, found, where=where, api_url=self.api_url)
        self.found_state = found.state_text if found else "missing"
        await self.cost.learn_price(client, as_updated(found, drift), namespace=self.namespace)
        if self.job.run.scale == "deadline":
            check_deadline_plan(self.job, found, price_per_hour=self.meter.price_per_hour)
            self.scaler = self._new_scaler(client, found, own)
        await self.guard.arm(found_state=self.found_state, api_url=self.api_url, token=self._token)
        self._touched = True
        self._seen(await wake(client, spec, found, namespace=self.namespace, drift=drift))
        self._start_watchers(reader)
        ready = await until_ready(
            client,
            spec,
            namespace=self.namespace,
            refresh_every=self.refresh_every,
            stop_event=self.stop_event,
            view=self.waiting,
            state=lambda: self.endpoint.state_text if self.endpoint else "pending",
        )
        if ready is None:  # stopped by the budget, the deadline or a failure while waiting
            if self.stop_reason == "endpoint_failed":
                raise EndpointFailedError(self.stop_message or f"{where} failed")
            return
        self._seen(ready)
        waited = self.cost.ready()
        logger.info(
            "%s/%s is ready (%.2fs billed before it was)", self.namespace, self.name, waited
        )
        assert ready.url is not None
        self.url = ready.url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}

    async def _connect(self) -> tuple[EndpointsClient, EndpointReader]:
        self._client, self._token = await open_client(
            self.job.endpoint.provider,
            self._lease_api_url,
            self._explicit_token,
            namespace=self.job.endpoint.namespace,
            retry=ControlRetryPolicy(attempts=4, backoff_initial=0.25, backoff_max=4.0),
            transport=self._transport,
        )
        self.api_url = self._client.api_url
        self.namespace = await self._client.namespace()
        self._reader = EndpointReader(self._client, self.name, self.namespace)
        return self._client, self._reader

    def _seen(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.cost.observe(endpoint)
        if self.scaler is not None:
            self.scaler.seen(endpoint)

    def _seconds_to_stop(self) -> float | None:
        """Seconds until the budget stops dispatching for the deadline (its stop margin off)."""
        left = self.budget.seconds_left()
        rtt = self._reader.rtt if self._reader is not None else 0.0
        return None if left is None else left - self.cost.margin_s(rtt)

    def _new_scaler(
        self, client: EndpointsClient, found: Endpoint | None, own: dict[str, int] | None
    ) -> DeadlineScaler:
        def budget_left() -> float | None:
            spent = self.meter.cost_usd()
            limit = self.job.budget.max_cost_usd
            return None if limit is None or spent is None else max(limit - spent, 0.0)

        scaler = DeadlineScaler(
            client,
            self.name,
            namespace=self.namespace,
            seconds_left=self._seconds_to_stop,
            max_replicas=self.job.run.max_replicas,
            price_per_hour=lambda: self.meter.price_per_hour,
            budget_left=budget_left,
            held=self.guard.held,
            every=min(self.refresh_every * 2, 10.0),
        )
        if own is not None:  # a killed run's change, still on the endpoint
            scaler.own = dict(own)
        elif found is not None:
            scaler.seen(found)
        if self._progress is not None:
            scaler.watch_progress(self._progress)
        return scaler

    def _start_watchers(self, reader: EndpointReader) -> None:
        state = watch_state(
            reader,
            every=self.refresh_every,
            stop=self.stop,
            seen=self._seen,
            serving=lambda: bool(self.url),
        )
        budget = self.cost.watch(
            stop=self.stop,
            stopped=lambda: self.stop_reason is not None,
            rtt=lambda: reader.rtt,
            held=self.guard.held,
        )
        self._tasks = [
            asyncio.create_task(state, name="lease-state"),
            asyncio.create_task(budget, name="lease-budget"),
        ]
        if self.scaler is not None:
            scaling = self.scaler.run(lambda: self.endpoint if self.url else None)
            self._tasks.append(asyncio.create_task(scaling, name="lease-scaling"))

    # -- leaving: rest ----------------------------------------------------------------------

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Put the endpoint to rest (unless another live lease holds it); never suppresses.

        Raises:
            EndpointRestError: `on_exit` could not be applied and confirmed (exit 6); the lease
                stays on disk for `batchrun reap`, and the watchdog keeps trying.
        """
        await settle_even_if_cancelled(self._settle(), exc)

    async def _settle(self) -> None:
        await cancel_all(self._tasks)
        self._tasks = []
        self.mark_idle()
        try:
            if self._touched and self._client is not None:
                async with self.guard.leaving() as last:
                    await (self._rest(self._client) if last else self._hand_over())
                    await self.guard.release()
        finally:
            self.guard.close()
            if self._client is not None:
                await self._client.aclose()

    async def _hand_over(self) -> None:
        """Another live lease holds the endpoint: it stays up, and this run stops paying."""
        with contextlib.suppress(BatchrunError):
            assert self._reader is not None
            current = await self._reader.read()
            self.state_at_exit = current.state_text if current else "deleted"
        self.meter.stop()

    async def _rest(self, client: EndpointsClient) -> None:
        self.cost.log_rest_requested(self.on_exit)
        held = self.guard.held
        if held is not None and held.record.own_scaling and self.on_exit != "delete":
            # the deadline's replicas: the endpoint's own scaling goes back before the rest
            await restore_own_scaling(
                client, self.name, namespace=self.namespace, own=held.record.own_scaling
            )
        try:
            self.rest = await apply_on_exit(
                client,
                self.name,
                namespace=self.namespace,
                on_exit=self.on_exit,
                found_state=self.found_state,
            )
        except EndpointRestError as e:
            self.state_at_exit = "unknown"
            if not self.guard.abandon():  # the lease file stays for `batchrun reap`
                raise
            raise EndpointRestError(f"{e}; its watchdog keeps trying") from e.__cause__
        self.meter.stop()
        self.state_at_exit = self.rest.state
        self.cost.log_rested(self.namespace, self.name, self.state_at_exit)
