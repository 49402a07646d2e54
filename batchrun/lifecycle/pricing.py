"""What the endpoint costs, and whether the budget covers one billing quantum of it.

The price is the job's `[budget] price_per_hour`, else the endpoint's instance in the API's
price list (`GET /provider/{namespace}`); the instance is the endpoint's as found, else the one
the job would create. Without a price the cost is not metered, which `max_cost_usd` refuses.
"""

from __future__ import annotations

import logging

from batchrun.budget import Budget
from batchrun.endpoints.client import EndpointsClient
from batchrun.endpoints.models import Endpoint
from batchrun.errors import BatchrunError, JobError
from batchrun.job import Job

__all__ = ["check_budget_fits", "price_per_hour"]

logger = logging.getLogger(__name__)


async def price_per_hour(
    job: Job, client: EndpointsClient, found: Endpoint | None, *, namespace: str
) -> float | None:
    """The endpoint's price in USD per replica-hour, or None when nobody lists one.

    Args:
        job: the job (its `[budget] price_per_hour` wins; its create fields name the instance
            of an endpoint that does not exist yet).
        client: an open client of the endpoint's API.
        found: the endpoint as the run found it, or None (the run creates it).
        namespace: its namespace.

    Raises:
        JobError: `[budget] max_cost_usd` is set and no price is known.
    """
    budget = job.budget
    if budget.price_per_hour is not None:
        return budget.price_per_hour
    spec = job.endpoint
    want = {
        "vendor": (found.vendor if found else None) or spec.vendor,
        "region": (found.region if found else None) or spec.region,
        "instance_type": (found.instance_type if found else None) or spec.instance_type,
        "instance_size": (found.instance_size if found else None) or spec.instance_size,
    }
    try:
        options = await client.hardware(
            vendor=want["vendor"], region=want["region"], namespace=namespace
        )
    except BatchrunError as e:
        options = []
        logger.warning("no price list from %s: %s", client.api_url, e)
    for hw in options:
        if (hw.instance_type, hw.instance_size) == (want["instance_type"], want["instance_size"]):
            return hw.price_per_hour
    described = "{vendor}/{region} {instance_type} {instance_size}".format(**want)
    if budget.max_cost_usd is not None:
        raise JobError(
            f"{job.source}: [budget] max_cost_usd is set but {client.api_url} lists no "
            f"price for {described}; set [budget] price_per_hour"
        )
    logger.warning("no price for %s: the cost is not metered", described)
    return None


def check_budget_fits(job: Job, price: float | None, budget: Budget) -> None:
    """Refuse a run whose budget cannot pay one billing quantum, or whose deadline has passed.

    Raises:
        JobError: `max_cost_usd` below one quantum at `price`; a past deadline or max_duration.
    """
    spec = job.budget
    src = job.source
    if spec.max_cost_usd is not None and price:
        replicas = max(job.endpoint.min_replica, 1)
        one = price * replicas * spec.billing_quantum_s / 3600.0
        if one > spec.max_cost_usd:
            raise JobError(
                f"{src}: [budget] max_cost_usd ${spec.max_cost_usd:g} does not cover one "
                f"billing quantum ({spec.billing_quantum_s:g}s at ${price:g}/h × "
                f"{replicas} replica = ${one:.4f}); nothing was started"
            )
    left = budget.seconds_left()
    if left is not None and left <= 0:
        raise JobError(f"{src}: [budget] the deadline or max_duration has already passed")
