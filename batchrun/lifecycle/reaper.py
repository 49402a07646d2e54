"""Putting a dead run's endpoint to rest: `settle_dead_lease` (the watchdog, and `batchrun reap`
for each lease) and `reap_dead_leases` (`batchrun reap`). Both apply `on_exit` with
`batchrun.lifecycle.rest.apply_on_exit`, unless another live lease holds the endpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from batchrun.endpoints.client import EndpointsClient
from batchrun.endpoints.connect import HOME_SERVICE, control_plane
from batchrun.errors import BatchrunError, EndpointRestError
from batchrun.lifecycle.registry import HeldLease, LeaseRegistry
from batchrun.lifecycle.rest import apply_on_exit
from batchrun.lifecycle.scaler import restore_own_scaling

__all__ = ["ReapResult", "reap_dead_leases", "settle_dead_lease"]

logger = logging.getLogger(__name__)


async def settle_dead_lease(
    held: HeldLease, *, token: str | None, attempts: int = 3, api_url: str | None = None
) -> str:
    """Put a claimed dead lease's endpoint to rest, unless another live lease holds it.

    Scaling the run changed for its deadline (`LeaseRecord.own_scaling`) is put back first.

    Deletes the lease when done; keeps it on disk (releasing only its lock) when `on_exit`
    could not be applied, so that a later `batchrun reap` tries again.

    Args:
        held: a lease claimed with `LeaseRegistry.claim`.
        token: the API token for the lease's endpoint.
        attempts: tries of `apply_on_exit`.
        api_url: where its API is now (default: the lease's; a lease on this home's local
            service is found again through its `service.json`, started if it is not running).

    Returns:
        What happened, one line (for logs and `batchrun reap`).

    Raises:
        EndpointRestError: `on_exit` could not be applied.
    """
    record = held.record
    registry = held.registry
    where = f"{record.namespace}/{record.endpoint}"
    async with registry.alocked():
        others = registry.live_on(record.key, exclude=record.id)
        if others:
            pids = ", ".join(str(r.pid) for r in others)
            held.release()
            return f"{where}: left as it is, still leased by pid {pids}"
        try:
            if (api_url or record.api_url) == HOME_SERVICE:
                api_url, token = await control_plane(record.provider, HOME_SERVICE, token)
            async with EndpointsClient(
                api_url=api_url or record.api_url, token=token, namespace=record.namespace
            ) as client:
                if record.on_exit != "delete":
                    await restore_own_scaling(
                        client, record.endpoint, namespace=record.namespace, own=record.own_scaling
                    )
                outcome = await apply_on_exit(
                    client,
                    record.endpoint,
                    namespace=record.namespace,
                    on_exit=record.on_exit,
                    found_state=record.found_state,
                    attempts=attempts,
                )
        except EndpointRestError:
            held.abandon()
            raise
        except BatchrunError as e:  # e.g. a bad api_url in a hand-edited lease
            held.abandon()
            raise EndpointRestError(f"{where}: {e}") from e
        held.release()
    return f"{where}: {record.on_exit} → {outcome.state} (runner pid {record.pid} was gone)"


@dataclass(slots=True, kw_only=True, frozen=True)
class ReapResult:
    """What `batchrun reap` did with one dead lease.

    Attributes:
        lease_id: the lease.
        endpoint: "namespace/name".
        ok: whether the endpoint is at rest (or left to another live lease).
        message: one line.
    """

    lease_id: str
    endpoint: str
    ok: bool
    message: str


async def reap_dead_leases(
    registry: LeaseRegistry | None = None, *, token: str | None = None, dry_run: bool = False
) -> list[ReapResult]:
    """Apply `on_exit` for every lease whose runner is gone (no watchdog did it).

    Live leases are left alone. For a `local` lease whose service is not running, the service is
    started (its endpoints' states survive it) so that the endpoint can be paused.

    Args:
        registry: the lease registry (default: batchrun's home).
        token: the API token (default: the local service's for local leases, else the usual
            places `resolve_token` looks).
        dry_run: only say what would be done.

    Returns:
        One result per dead lease, oldest first.
    """
    registry = registry or LeaseRegistry()
    results: list[ReapResult] = []
    for record in registry.records():
        if registry.is_live(record.id):
            continue
        where = f"{record.namespace}/{record.endpoint}"
        if dry_run:
            message = (
                f"{where}: would apply on_exit {record.on_exit} (runner pid {record.pid} is gone)"
            )
            results.append(ReapResult(lease_id=record.id, endpoint=where, ok=True, message=message))
            continue
        held = registry.claim(record.id)
        if held is None:
            continue  # someone else (a watchdog) is at it, or it is done
        try:
            api_url, lease_token = await control_plane(
                record.provider, record.api_url, token, tolerant=True
            )
            message = await settle_dead_lease(held, token=lease_token, api_url=api_url)
            results.append(ReapResult(lease_id=record.id, endpoint=where, ok=True, message=message))
        except EndpointRestError as e:
            results.append(ReapResult(lease_id=record.id, endpoint=where, ok=False, message=str(e)))
    return results
