"""Putting an endpoint to rest: what each `on_exit` means, applied with retries, confirmed.

Also the two ways a dead run's endpoint is put to rest: `settle_dead_lease` (the watchdog, and
`batchrun reap` for each lease) and `reap_dead_leases` (`batchrun reap`).

`apply_on_exit` is the one implementation shared by the runner's `finally` (`EndpointLease`),
the watchdog (the runner was killed) and `batchrun reap` (the runner died with no watchdog).
It calls the API, then reads the endpoint back until it is in the state asked for; a call or
a read-back that fails is tried again with backoff. Only when every try has failed does it
raise `EndpointRestError`, whose message names the endpoint and the command to pause it.

| on_exit         | the endpoint ends                                                       |
| --------------- | ----------------------------------------------------------------------- |
| `pause`         | paused                                                                  |
| `scale-to-zero` | scaled to zero (or paused, if it already was: that bills nothing too)  |
| `delete`        | deleted                                                                 |
| `restore`       | as the run found it: running stays running, paused is paused again,     |
|                 | scaled to zero is scaled to zero again; an endpoint the run created, or |
|                 | found failed, is paused                                                 |
| `keep`          | as it is (an explicit opt-out; nothing is called)                       |
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from batchrun.endpoints import Endpoint, EndpointsClient, EndpointState
from batchrun.endpoints.auth import DEFAULT_API_URL, resolve_token
from batchrun.errors import (
    APIClientError,
    APIConnectionError,
    APIError,
    AuthenticationError,
    BatchrunError,
    EndpointRestError,
    NotFoundError,
    PermissionDeniedError,
)
from batchrun.leases import HeldLease, LeaseRegistry

__all__ = [
    "ReapResult",
    "RestOutcome",
    "apply_on_exit",
    "pause_command",
    "reap_dead_leases",
    "rest_action",
    "settle_dead_lease",
]

logger = logging.getLogger(__name__)

_RUNNING_LIKE = {"running", "initializing", "pending", "updating"}


@dataclass(slots=True, kw_only=True, frozen=True)
class RestOutcome:
    """What `apply_on_exit` did.

    Attributes:
        action: the call made: "pause", "scale-to-zero", "delete" or "none".
        state: the state read back at the end ("deleted" when gone).
        endpoint: the endpoint as last read, or None when deleted.
        seconds: from the first call to the confirmation.
    """

    action: str
    state: str
    endpoint: Endpoint | None
    seconds: float


def rest_action(on_exit: str, found_state: str | None) -> str:
    """The call that puts an endpoint in its `on_exit` state: pause, scale-to-zero, delete, none.

    Args:
        on_exit: the job's `[endpoint] on_exit`.
        found_state: the state the run found the endpoint in ("missing" if it created it).
    """
    if on_exit in ("pause", "scale-to-zero", "delete"):
        return on_exit
    if on_exit == "keep":
        return "none"
    # restore
    if found_state in _RUNNING_LIKE:
        return "none"
    if found_state == "scaledToZero":
        return "scale-to-zero"
    return "pause"  # found paused, failed, or missing (the run created it)


def pause_command(name: str, namespace: str, api_url: str | None = None) -> str:
    """The command a person runs to pause the endpoint by hand."""
    command = f"batchrun endpoints pause {name} --namespace {namespace}"
    if api_url and api_url.rstrip("/") != DEFAULT_API_URL:
        command += f" --api-url {api_url.rstrip('/')}"
    return command


def _at_rest(action: str, endpoint: Endpoint | None) -> bool:
    if action == "delete":
        return endpoint is None
    if endpoint is None:  # gone: nothing bills
        return True
    if action == "pause":
        return endpoint.state is EndpointState.PAUSED
    if action == "scale-to-zero":
        return endpoint.state in (EndpointState.SCALED_TO_ZERO, EndpointState.PAUSED)
    return True


async def _read(client: EndpointsClient, name: str, namespace: str) -> Endpoint | None:
    try:
        return await client.get(name, namespace=namespace)
    except NotFoundError:
        return None


async def _call(client: EndpointsClient, action: str, name: str, namespace: str) -> None:
    try:
        if action == "pause":
            await client.pause(name, namespace=namespace)
        elif action == "scale-to-zero":
            await client.scale_to_zero(name, namespace=namespace)
        elif action == "delete":
            await client.delete(name, namespace=namespace)
    except NotFoundError:
        pass  # gone already: at rest for every action


async def apply_on_exit(
    client: EndpointsClient,
    name: str,
    *,
    namespace: str,
    on_exit: str,
    found_state: str | None,
    attempts: int = 3,
    backoff: float = 1.0,
    confirm_timeout: float = 30.0,
    refresh_every: float = 0.25,
) -> RestOutcome:
    """Put the endpoint in its `on_exit` state and confirm it by reading the state back.

    Args:
        client: an open client of the endpoint's API (its own calls retry per its policy).
        name: the endpoint.
        namespace: its namespace.
        on_exit: "pause", "scale-to-zero", "delete", "restore" or "keep".
        found_state: what the run found ("missing" when it created the endpoint), for restore.
        attempts: tries of call + read-back in all.
        backoff: seconds before the second try, doubling after each.
        confirm_timeout: how long one try reads the state back before trying again.
        refresh_every: seconds between two read-backs.

    Returns:
        What was done and the state read back.

    Raises:
        EndpointRestError: every try failed; the message names the endpoint, the last error
            and the command to pause it by hand.
    """
    action = rest_action(on_exit, found_state)
    start = time.monotonic()
    if action == "none":
        try:
            endpoint = await _read(client, name, namespace)
        except BatchrunError as e:  # nothing to apply: a failed look is not a failure
            logger.warning("on_exit %s: could not read %s/%s back: %s", on_exit, namespace, name, e)
            return RestOutcome(action="none", state="unknown", endpoint=None, seconds=0.0)
        state = endpoint.state_text if endpoint else "deleted"
        logger.info("on_exit %s: left %s/%s %s", on_exit, namespace, name, state)
        return RestOutcome(action="none", state=state, endpoint=endpoint, seconds=0.0)

    last_error: BaseException | None = None
    delay = backoff
    for attempt in range(1, max(attempts, 1) + 1):
        try:
            endpoint = await _read(client, name, namespace)
            if not _at_rest(action, endpoint):
                logger.info("on_exit %s: %s %s/%s", on_exit, action, namespace, name)
                await _call(client, action, name, namespace)
                endpoint = await _confirm(
                    client, action, name, namespace, confirm_timeout, refresh_every
                )
            state = endpoint.state_text if endpoint else "deleted"
            seconds = time.monotonic() - start
            logger.info("on_exit %s: %s/%s is %s (%.2fs)", on_exit, namespace, name, state, seconds)
            return RestOutcome(action=action, state=state, endpoint=endpoint, seconds=seconds)
        except (AuthenticationError, PermissionDeniedError) as e:
            last_error = e  # retrying cannot fix the token
            break
        except (APIError, APIConnectionError, _NotAtRestYet) as e:
            last_error = e
            if isinstance(e, APIClientError) and e.status not in (409, 429):
                break
        if attempt < attempts:
            logger.warning(
                "on_exit %s of %s/%s: try %d/%d failed (%s); again in %.1fs",
                on_exit,
                namespace,
                name,
                attempt,
                attempts,
                last_error,
                delay,
            )
            await asyncio.sleep(delay)
            delay *= 2
    raise EndpointRestError(
        f"endpoint {namespace}/{name} could not be put in its on_exit state ({on_exit}): "
        f"{last_error}; it may still be billing. Pause it with: "
        f"{pause_command(name, namespace, client.api_url)}"
    ) from last_error


class _NotAtRestYet(BatchrunError):
    """The read-back did not show the state asked for in time."""


async def _confirm(
    client: EndpointsClient,
    action: str,
    name: str,
    namespace: str,
    timeout: float,
    refresh_every: float,
) -> Endpoint | None:
    deadline = time.monotonic() + timeout
    while True:
        endpoint = await _read(client, name, namespace)
        if _at_rest(action, endpoint):
            return endpoint
        if time.monotonic() >= deadline:
            state = endpoint.state_text if endpoint else "deleted"
            raise _NotAtRestYet(f"asked to {action}, still {state} after {timeout:g}s")
        await asyncio.sleep(refresh_every)


async def settle_dead_lease(held: HeldLease, *, token: str | None, attempts: int = 3) -> str:
    """Put a claimed dead lease's endpoint to rest, unless another live lease holds it.

    Deletes the lease when done; keeps it on disk (releasing only its lock) when `on_exit`
    could not be applied, so that a later `batchrun reap` tries again.

    Args:
        held: a lease claimed with `LeaseRegistry.claim`.
        token: the API token for the lease's endpoint.
        attempts: tries of `apply_on_exit`.

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
            async with EndpointsClient(
                api_url=record.api_url, token=token, namespace=record.namespace
            ) as client:
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
            message = await settle_dead_lease(
                held, token=await _token_for(record.provider, record.api_url, token)
            )
            results.append(ReapResult(lease_id=record.id, endpoint=where, ok=True, message=message))
        except EndpointRestError as e:
            results.append(ReapResult(lease_id=record.id, endpoint=where, ok=False, message=str(e)))
    return results


async def _token_for(provider: str, api_url: str, explicit: str | None) -> str | None:
    if explicit:
        return explicit
    if provider == "local":
        from batchrun.local import ensure_service

        try:
            info = await asyncio.to_thread(ensure_service, api_url=api_url)
        except BatchrunError as e:
            logger.warning("local service at %s: %s", api_url, e)
        else:
            if info.token:
                return info.token
    return resolve_token()
