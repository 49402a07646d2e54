"""Waking an endpoint and waiting until it serves: the lease's way in (`rest` is the way out).

`wake` updates the endpoint to the job's values if asked, creates it, or resumes it: what the
lease does to an endpoint it found (and checked: `drift.check_found`) once the watchdog guards
it. `until_ready` then waits (`EndpointsClient.wait`) unless the run is stopped first, showing
the wait on a `WaitingView`: the progress layer's waiting line, passed in from above (the
lifecycle never imports it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from batchrun.endpoints.client import EndpointsClient
from batchrun.endpoints.models import Endpoint, EndpointState
from batchrun.endpoints.payloads import CreateSpec, EndpointDrift
from batchrun.job import EndpointSpec
from batchrun.lifecycle.watchers import cancel_all

__all__ = ["WaitingView", "until_ready", "wake"]

logger = logging.getLogger(__name__)


async def wake(
    client: EndpointsClient,
    spec: EndpointSpec,
    found: Endpoint | None,
    *,
    namespace: str,
    drift: EndpointDrift | None = None,
) -> Endpoint:
    """Update, create or resume the endpoint; the endpoint as the call returned it.

    Args:
        client: an open client of the endpoint's API.
        spec: the job's `[endpoint]` (its name, and what to create).
        found: the endpoint as read (None: it does not exist, so it is created).
        namespace: its namespace.
        drift: the update `check_found` returned (`[endpoint] update`), applied first.

    Raises:
        APIError: the API refused a call; APIConnectionError: it could not be reached.
    """
    assert spec.name is not None
    name = spec.name
    if found is not None and drift is not None:
        logger.warning("updating endpoint %s/%s: %s", namespace, name, "; ".join(drift.differences))
        found = await client.update(name, namespace=namespace, **drift.update)
    if found is None:
        assert spec.repository is not None  # check_found
        logger.info("creating endpoint %s/%s (%s)", namespace, name, spec.repository)
        return await client.create(name, CreateSpec.from_job(spec), namespace=namespace)
    if found.state in (EndpointState.PAUSED, EndpointState.SCALED_TO_ZERO):
        logger.info("resuming endpoint %s/%s (%s)", namespace, name, found.state_text)
        return await client.resume(name, namespace=namespace, running_ok=True)
    return found


class WaitingView(Protocol):
    """Shows a wait for an endpoint (`batchrun.progress.WaitingLine`)."""

    def show(self, where: str, state: str, elapsed_s: float) -> None:
        """`where` ("local/echo") is `state` ("initializing"), `elapsed_s` into the wait."""

    def done(self) -> None:
        """The wait is over (ready, stopped or failed)."""


async def until_ready(
    client: EndpointsClient,
    spec: EndpointSpec,
    *,
    namespace: str,
    refresh_every: float,
    stop_event: asyncio.Event,
    view: WaitingView | None = None,
    state: Callable[[], str] = lambda: "",
) -> Endpoint | None:
    """The endpoint once it serves, or None when `stop_event` is set first.

    Args:
        client: an open client of the endpoint's API.
        spec: the job's `[endpoint]` (its name and `ready_timeout`).
        namespace: the endpoint's namespace.
        refresh_every: seconds between two reads of its state.
        stop_event: set when the run must stop (the budget, the deadline, a failure).
        view: shown the state twice a second meanwhile, then told it is done; without one,
            the wait logs each state once at INFO.
        state: the endpoint's state as last read.

    Raises:
        EndpointFailedError, EndpointTimeoutError: as `EndpointsClient.wait`.
    """
    assert spec.name is not None
    ready = client.wait(
        spec.name,
        namespace=namespace,
        timeout=spec.ready_timeout,
        refresh_every=refresh_every,
        log_states=view is None,  # else the view says them
    )
    where = f"{namespace}/{spec.name}"
    waiting = asyncio.ensure_future(ready)
    stopped = asyncio.ensure_future(stop_event.wait())
    shown = asyncio.ensure_future(_show(view, where, state)) if view else None
    try:
        await asyncio.wait({waiting, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_all([waiting, stopped, *([shown] if shown else [])])
        if view is not None:
            view.done()
    if not waiting.cancelled():
        return waiting.result()  # raises EndpointFailedError / EndpointTimeoutError
    return None


async def _show(view: WaitingView, where: str, state: Callable[[], str]) -> None:
    start = time.monotonic()
    while True:
        view.show(where, state(), time.monotonic() - start)
        await asyncio.sleep(0.5)
