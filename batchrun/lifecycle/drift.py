"""What the lease found, checked against the job before anything is touched.

`check_found` refuses an endpoint the run cannot use: missing without `[endpoint] repository`
to create it from (exit 2), failed (exit 5), or different from the creation keys the job
sets (`EndpointDrift`, exit 2) unless the job asks for an update (`[endpoint] update`), in
which case it returns that update (`wake` applies it). `as_updated` is the endpoint as the
update will leave it, for the price. Nothing here calls the API.
"""

from __future__ import annotations

import dataclasses
import logging

from batchrun.endpoints.models import Endpoint
from batchrun.endpoints.payloads import EndpointDrift
from batchrun.errors import EndpointDriftError, EndpointFailedError, JobError
from batchrun.job import Job
from batchrun.lifecycle.watchers import FAILED

__all__ = ["as_updated", "check_found"]

logger = logging.getLogger(__name__)


def check_found(
    job: Job, found: Endpoint | None, *, where: str, api_url: str
) -> EndpointDrift | None:
    """The update to apply (`[endpoint] update`), or None; refuse what cannot be used.

    Args:
        job: the job.
        found: the endpoint as read (None: it does not exist).
        where: "endpoint NAMESPACE/NAME", for the messages.
        api_url: the control plane, for the message about a missing endpoint.

    Raises:
        JobError: it is missing and `[endpoint] repository` is not set.
        EndpointFailedError: it is failed or failed to update (exit 5).
        EndpointDriftError: it differs from the creation keys the job sets, and the job does
            not ask to update it (or asks for what an update cannot change).
    """
    if found is None:
        if not job.endpoint.repository:
            raise JobError(
                f"{job.source}: {where} does not exist at {api_url}, and [endpoint] "
                "repository is not set, so it cannot be created"
            )
        return None
    if found.state in FAILED:
        raise EndpointFailedError(
            f"{where} is {found.state_text} ({found.message or 'no message'}); nothing was "
            "sent. Fix or recreate it, then run again"
        )
    return _check_drift(job, found, where)


def _check_drift(job: Job, found: Endpoint, where: str) -> EndpointDrift | None:
    drift = EndpointDrift.of(job.endpoint, found, given=job.endpoint_keys)
    for warning in drift.warnings:
        logger.warning("%s: %s", where, warning)
    if not drift.differences:
        return None
    listed = "; ".join(drift.differences)
    if drift.fixed:
        raise EndpointDriftError(
            f"{job.source}: {where} differs from the job ({listed}); an update cannot "
            f"change {', '.join(drift.fixed)}: fix the job, or delete the endpoint so the run "
            "creates it. Nothing was sent"
        )
    if not job.endpoint.update:
        raise EndpointDriftError(
            f"{job.source}: {where} differs from the job ({listed}); nothing was sent "
            "and it was left as it was. Run with --update-endpoint (or [endpoint] update = "
            "true) to update it, or change the job"
        )
    return drift


def as_updated(found: Endpoint | None, drift: EndpointDrift | None) -> Endpoint | None:
    """The endpoint with the update's instance type and size: what it will be priced at."""
    if found is None or drift is None:
        return found
    sizes = ("instance_type", "instance_size")
    return dataclasses.replace(found, **{k: v for k, v in drift.update.items() if k in sizes})
