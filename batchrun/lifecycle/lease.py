"""`EndpointLease`: a run's hold on its endpoint, from resume (or create) to rest.

```python
async with EndpointLease(job) as lease:        # get / create / resume, wait until ready
    ...send requests to lease.url with lease.headers, until lease.stop_event is set...
# on_exit applied here, whatever ended the block, and confirmed by reading the state back
```

Entering: resolve the API and token (`provider = "local"` starts the local service if nothing
answers), register a lease in batchrun's home, read the endpoint (missing → create it from the
job's create fields, or exit 2 without them; failed → exit 5; different from the creation keys
the job sets → exit 2 before anything is touched, or updated with `[endpoint] update`), learn
the price (`pricing`), start the watchdog (it survives a kill -9 of this process), resume or
create, wait until ready (up to `[endpoint] ready_timeout`, exit 5 after). Meanwhile two
background tasks (`watchers`) watch: the endpoint's state (feeding the cost meter; `failed`
mid-run sets `stop_reason = "endpoint_failed"`) and the budget (`"budget"` / `"deadline"`,
early enough that the pause lands inside the limit).

Leaving: unless another live lease holds the endpoint, `rest.apply_on_exit` (retried, confirmed);
if that fails, `EndpointRestError` (exit 6) naming the endpoint and the pause command, the lease
is left on disk and the watchdog keeps trying. A cancelled task still waits for the pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import httpx

from batchrun.budget import Budget, CostMeter
from batchrun.endpoints.client import EndpointsClient
from batchrun.endpoints.connect import api_url_for, control_plane
from batchrun.endpoints.http import ControlRetryPolicy
from batchrun.endpoints.models import Endpoint, EndpointState
from batchrun.endpoints.payloads import CreateSpec, EndpointDrift
from batchrun.errors import (
    BatchrunError,
    EndpointDriftError,
    EndpointFailedError,
    EndpointRestError,
    JobError,
)
from batchrun.job import Job
from batchrun.lifecycle.pricing import check_budget_fits, price_per_hour
from batchrun.lifecycle.registry import HeldLease, LeaseRecord, LeaseRegistry
from batchrun.lifecycle.rest import RestOutcome, apply_on_exit
from batchrun.lifecycle.watchdog import Watchdog, WatchdogOrders
from batchrun.lifecycle.watchers import FAILED, EndpointReader, watch_budget, watch_state

__all__ = ["EndpointLease"]

logger = logging.getLogger(__name__)


class EndpointLease:
    """The runner's target for `provider = "hf"` and `"local"`: an async context manager.

    Attributes:
        url: the endpoint's URL for data-plane requests (set once ready).
        headers: headers for data-plane requests (the bearer token, if any).
        endpoint: the endpoint as last read.
        namespace: its namespace.
        meter: the cost meter.
        budget: the run's limits.
        stop_event: set when dispatching must stop; `stop_reason` says why ("budget",
            "deadline" or "endpoint_failed") and `stop_message` in one line.
        found_state: the state the run found ("missing" when it created the endpoint).
        state_at_exit: the state read back after `on_exit` (None before the exit).
        rest: what `on_exit` did, once applied.

    Args:
        job: the job; its `[endpoint]` section says which endpoint and what to do at exit.
        token: the API token; else the local service's (provider "local"), else
            `HF_TOKEN` and the other places `resolve_token` looks.
        watchdog: start the kill -9 watchdog (default: `[endpoint] watchdog`).
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
        watchdog: bool | None = None,
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
        self._watchdog_wanted = spec.watchdog if watchdog is None else watchdog
        local_api = (
            spec.provider == "local"
            or "://127.0.0.1" in self.api_url
            or "://localhost" in self.api_url
        )
        self.refresh_every = refresh_every or (0.25 if local_api else 5.0)
        self._clock = clock
        self._transport = transport
        self.url = ""
        self.headers: dict[str, str] = {}
        self.endpoint: Endpoint | None = None
        self.namespace = spec.namespace or ""
        self.meter = CostMeter(
            price_per_hour=job.budget.price_per_hour,
            quantum_s=job.budget.billing_quantum_s,
            clock=clock,
        )
        self.budget = Budget.from_spec(job.budget, clock=clock)
        self.stop_event = asyncio.Event()
        self.stop_reason: str | None = None
        self.stop_message: str | None = None
        self.found_state: str | None = None
        self.state_at_exit: str | None = None
        self.rest: RestOutcome | None = None
        self.rest_requested_at: float | None = None
        self.idle_at: float | None = None
        self._client: EndpointsClient | None = None
        self._reader: EndpointReader | None = None
        self._registry = LeaseRegistry()
        self._lease: HeldLease | None = None
        self._watchdog: Watchdog | None = None
        self._touched = False  # from here on, leaving must apply on_exit
        self._tasks: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return (
            f"EndpointLease({self.namespace or '?'}/{self.name}, on_exit={self.on_exit!r}, "
            f"url={self.url!r})"
        )

    # -- the stop signal --------------------------------------------------------------------

    def stop(self, reason: str, message: str) -> None:
        """Ask the runner to stop dispatching; the first reason given wins."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stop_message = message
            logger.warning("%s/%s: %s", self.namespace, self.name, message)
        self.stop_event.set()

    def cost_text(self) -> str:
        """The cost so far for the progress bar, e.g. "$0.0123" ("$?" without a price)."""
        cost = self.meter.cost_usd()
        return "$?" if cost is None else f"${cost:.4f}"

    def mark_idle(self) -> None:
        """The runner has its last result: from here on, billed time is idle."""
        if self.idle_at is None:
            self.idle_at = self._clock()
            self.meter.mark_idle(at=self.idle_at)

    # -- entering ---------------------------------------------------------------------------

    async def __aenter__(self) -> EndpointLease:
        """Get the endpoint running (or stop early for the budget/deadline; see `stop_event`).

        If anything fails after the endpoint was touched, `on_exit` is applied before raising.

        Raises:
            JobError: the endpoint is missing and the job cannot create it; `max_cost_usd`
                without a known price, or below one billing quantum; a past deadline.
            EndpointFailedError: it is failed, or failed while starting (exit 5).
            EndpointTimeoutError: not ready within `[endpoint] ready_timeout` (exit 5).
            APIError: the API refused a call; APIConnectionError: it could not be reached.
            EndpointRestError: on top of one of these, `on_exit` could not be applied (exit 6).
        """
        try:
            await self._enter()
        except BaseException as e:
            await self._leave(e)
            raise
        return self

    async def _enter(self) -> None:
        spec = self.job.endpoint
        self.api_url, self._token = await control_plane(
            spec.provider, self._lease_api_url, self._explicit_token
        )
        self._client = EndpointsClient(
            api_url=self.api_url,
            token=self._token,
            namespace=spec.namespace,
            transport=self._transport,
            retry=ControlRetryPolicy(attempts=4, backoff_initial=0.25, backoff_max=4.0),
        )
        self.namespace = await self._client.namespace()
        self._reader = EndpointReader(self._client, self.name, self.namespace)
        async with self._registry.alocked():
            self._lease = self._registry.register(
                LeaseRecord(
                    id=self._registry.new_id(self.name),
                    endpoint=self.name,
                    namespace=self.namespace,
                    api_url=self._lease_api_url,
                    provider=spec.provider,
                    on_exit=self.on_exit,
                    output=self.job.output.path,
                )
            )
        found = await self._reader.read()
        self._check_found(found)
        drift = self._check_drift(found)
        self.found_state = found.state_text if found else "missing"
        priced = found
        if found is not None and drift is not None:  # priced as it will be once updated
            sizes = ("instance_type", "instance_size")
            priced = dataclasses.replace(
                found, **{k: v for k, v in drift.update.items() if k in sizes}
            )
        self.meter.price_per_hour = await price_per_hour(
            self.job, self._client, priced, namespace=self.namespace
        )
        check_budget_fits(self.job, self.meter.price_per_hour, self.budget)
        self._lease.update(found_state=self.found_state)
        if self._watchdog_wanted:
            await self._start_watchdog()
        self._touched = True
        if found is not None and drift is not None:
            found = await self._apply_drift(found, drift)
        self._seen(await self._wake(found))
        self._start_watchers()
        ready = await self._wait_ready()
        if ready is None:  # stopped by the budget or the deadline while waiting
            return
        self._seen(ready)
        self.meter.mark_ready()
        self.meter.mark_busy()
        logger.info(
            "%s/%s is ready (%.2fs billed before it was)",
            self.namespace,
            self.name,
            self.meter.reading().ready_wait_s,
        )
        assert ready.url is not None
        self.url = ready.url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def _check_found(self, found: Endpoint | None) -> None:
        spec = self.job.endpoint
        where = f"endpoint {self.namespace}/{self.name}"
        if found is None and not spec.repository:
            raise JobError(
                f"{self.job.source}: {where} does not exist at {self.api_url}, and [endpoint] "
                "repository is not set, so it cannot be created"
            )
        if found is not None and found.state in FAILED:
            raise EndpointFailedError(
                f"{where} is {found.state_text} ({found.message or 'no message'}); nothing was "
                "sent. Fix or recreate it, then run again"
            )

    def _check_drift(self, found: Endpoint | None) -> EndpointDrift | None:
        """The update to apply (`[endpoint] update`), or None; refuse drift otherwise.

        Raises:
            EndpointDriftError: the endpoint differs from the creation keys the job sets, and
                the job does not ask to update it (or asks for what an update cannot change).
        """
        if found is None:
            return None
        spec = self.job.endpoint
        drift = EndpointDrift.of(spec, found, given=self.job.endpoint_keys)
        where = f"endpoint {self.namespace}/{self.name}"
        for warning in drift.warnings:
            logger.warning("%s: %s", where, warning)
        if not drift.differences:
            return None
        listed = "; ".join(drift.differences)
        if drift.fixed:
            raise EndpointDriftError(
                f"{self.job.source}: {where} differs from the job ({listed}); an update cannot "
                f"change {', '.join(drift.fixed)}: fix the job, or delete the endpoint so the run "
                "creates it. Nothing was sent"
            )
        if not spec.update:
            raise EndpointDriftError(
                f"{self.job.source}: {where} differs from the job ({listed}); nothing was sent "
                "and it was left as it was. Run with --update-endpoint (or [endpoint] update = "
                "true) to update it, or change the job"
            )
        return drift

    async def _apply_drift(self, found: Endpoint, drift: EndpointDrift) -> Endpoint:
        """Update the endpoint with the job's values; `_wake` and `_wait_ready` do the rest."""
        assert self._client is not None
        logger.warning(
            "updating endpoint %s/%s: %s", self.namespace, self.name, "; ".join(drift.differences)
        )
        return await self._client.update(self.name, namespace=self.namespace, **drift.update)

    async def _start_watchdog(self) -> None:
        assert self._lease is not None
        orders = WatchdogOrders(
            lease_id=self._lease.record.id,
            registry_root=str(self._registry.root),
            api_url=self.api_url,
            namespace=self.namespace,
            name=self.name,
            on_exit=self.on_exit,
            found_state=self.found_state,
            token=self._token,
        )
        try:
            self._watchdog = await asyncio.to_thread(Watchdog.start, orders)
        except BatchrunError as e:
            logger.warning("%s; `batchrun reap` still finds this run's lease if it dies", e)
            return
        self._lease.update(watchdog_pid=self._watchdog.pid)

    async def _wake(self, found: Endpoint | None) -> Endpoint:
        """Create a missing endpoint, resume a paused or scaled-to-zero one."""
        assert self._client is not None
        spec = self.job.endpoint
        if found is None:
            assert spec.repository is not None
            logger.info("creating endpoint %s/%s (%s)", self.namespace, self.name, spec.repository)
            return await self._client.create(
                self.name, CreateSpec.from_job(spec), namespace=self.namespace
            )
        if found.state in (EndpointState.PAUSED, EndpointState.SCALED_TO_ZERO):
            logger.info("resuming endpoint %s/%s (%s)", self.namespace, self.name, found.state_text)
            return await self._client.resume(self.name, namespace=self.namespace, running_ok=True)
        return found

    async def _wait_ready(self) -> Endpoint | None:
        assert self._client is not None
        waiting = asyncio.create_task(
            self._client.wait(
                self.name,
                namespace=self.namespace,
                timeout=self.job.endpoint.ready_timeout,
                refresh_every=self.refresh_every,
            )
        )
        stopped = asyncio.create_task(self.stop_event.wait())
        try:
            await asyncio.wait({waiting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiting, stopped):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        if waiting.done() and not waiting.cancelled():
            return waiting.result()  # raises EndpointFailedError / EndpointTimeoutError
        if self.stop_reason == "endpoint_failed":
            raise EndpointFailedError(self.stop_message or f"endpoint {self.name} failed")
        return None

    # -- watching ---------------------------------------------------------------------------

    def _seen(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.meter.observe(
            endpoint.state_text,
            target_replica=endpoint.target_replica,
            ready_replica=endpoint.ready_replica,
        )

    def _start_watchers(self) -> None:
        assert self._reader is not None
        state = watch_state(
            self._reader,
            every=self.refresh_every,
            stop=self.stop,
            seen=self._seen,
            serving=lambda: bool(self.url),
        )
        budget = watch_budget(
            meter=self.meter,
            budget=self.budget,
            stop=self.stop,
            stopped=lambda: self.stop_reason is not None,
            margin_s=self.margin_s,
            held=self._lease,
        )
        self._tasks = [
            asyncio.create_task(state, name="lease-state"),
            asyncio.create_task(budget, name="lease-budget"),
        ]

    def margin_s(self) -> float:
        """From a stop decision until billing stops: drain in-flight requests, commit, pause."""
        drain = min(self.job.run.grace_period, self.job.run.request_timeout)
        rtt = self._reader.rtt if self._reader is not None else 0.0
        return drain + max(0.5, 3 * rtt)

    # -- leaving ----------------------------------------------------------------------------

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
        await self._leave(exc)

    async def _leave(self, error: BaseException | None) -> None:
        """Put the endpoint to rest, even while this task is being cancelled."""
        settling = asyncio.ensure_future(self._settle())
        cancelled = False
        while True:
            try:
                await asyncio.shield(settling)
                break
            except asyncio.CancelledError:
                if settling.done():
                    break  # the settle task itself was cancelled (loop shutdown): the watchdog acts
                cancelled = True  # a second Ctrl-C skips the grace, never the pause
            except EndpointRestError as rest_error:
                if error is not None and not isinstance(error, EndpointRestError):
                    raise rest_error from error
                raise
        if cancelled and error is None:
            raise asyncio.CancelledError

    async def _settle(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        self.mark_idle()
        try:
            if self._touched and self._lease is not None and self._client is not None:
                await self._rest()
        finally:
            if self._lease is not None and self._lease.held:
                self._lease.release()
            if self._client is not None:
                await self._client.aclose()

    async def _rest(self) -> None:
        assert self._lease is not None and self._client is not None
        lease = self._lease
        async with self._registry.alocked():
            others = self._registry.live_on(lease.record.key, exclude=lease.record.id)
            if others:
                pids = ", ".join(str(r.pid) for r in others)
                logger.info(
                    "%s/%s stays up: still leased by pid %s", self.namespace, self.name, pids
                )
                with contextlib.suppress(BatchrunError):
                    assert self._reader is not None
                    current = await self._reader.read()
                    self.state_at_exit = current.state_text if current else "deleted"
                self.meter.stop()
                lease.release()
                await self._release_watchdog()
                return
            self.rest_requested_at = self._clock()
            if self.idle_at is not None:
                logger.info(
                    "last result → %s requested in %.0f ms",
                    self.on_exit,
                    (self.rest_requested_at - self.idle_at) * 1000,
                )
            try:
                self.rest = await apply_on_exit(
                    self._client,
                    self.name,
                    namespace=self.namespace,
                    on_exit=self.on_exit,
                    found_state=self.found_state,
                )
            except EndpointRestError as e:
                self.state_at_exit = "unknown"
                lease.abandon()  # the file stays for `batchrun reap`
                if self._watchdog is None:
                    raise
                self._watchdog.abandon()  # and the watchdog tries again at once
                self._watchdog = None
                raise EndpointRestError(f"{e}; its watchdog keeps trying") from e.__cause__
            self.meter.stop()
            self.state_at_exit = self.rest.state
            reading = self.meter.reading()
            logger.info(
                "%s/%s %s; billed %.2fs, idle %.2fs of it (%.2fs waiting until ready), cost %s",
                self.namespace,
                self.name,
                self.state_at_exit,
                reading.billed_s,
                reading.idle_billed_s,
                reading.ready_wait_s,
                "unknown" if reading.cost_usd is None else f"${reading.cost_usd:.4f}",
            )
            lease.release()
            await self._release_watchdog()

    async def _release_watchdog(self) -> None:
        if self._watchdog is not None:
            await asyncio.to_thread(self._watchdog.release)
            self._watchdog = None

    def summary_fields(self) -> dict[str, Any]:
        """The lifecycle fields of the run summary."""
        reading = self.meter.reading()
        return {
            "endpoint": f"{self.namespace}/{self.name}",
            "on_exit": self.on_exit,
            "endpoint_state_at_exit": self.state_at_exit,
            "cost_usd": None if reading.cost_usd is None else round(reading.cost_usd, 6),
            "billed_s": round(reading.billed_s, 3),
            "idle_billed_s": round(reading.idle_billed_s, 3),
        }
