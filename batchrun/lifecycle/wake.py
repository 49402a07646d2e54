"""Waking an endpoint: update it to the job's values if asked, create it, or resume it.

`wake` is what the lease does to an endpoint it found (and checked: `drift.check_found`) once
the watchdog guards it; `rest` is the way back. What the run then waits for is
`EndpointsClient.wait` (through `watchers.until_ready`).
"""

from __future__ import annotations

import logging

from batchrun.endpoints.client import EndpointsClient
from batchrun.endpoints.models import Endpoint, EndpointState
from batchrun.endpoints.payloads import CreateSpec, EndpointDrift
from batchrun.job import EndpointSpec

__all__ = ["wake"]

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
