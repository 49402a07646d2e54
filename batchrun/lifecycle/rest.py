"""Putting an endpoint to rest: what each `on_exit` means, applied with retries, confirmed.

`apply_on_exit` is the one implementation shared by the runner's `finally` (`EndpointLease`),
the watchdog (the runner was killed) and `batchrun reap` (the runner died with no watchdog;
both in `batchrun.lifecycle.reaper`). It calls the API, then reads the endpoint back until it
is in the state asked for; a call or a read-back that fails is tried again with backoff, by
tenacity. Only when every try has failed does it raise `EndpointRestError`, whose message names
the endpoint and the command to pause it.

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
from collections.abc import Awaitable
from dataclasses import dataclass
from enum import StrEnum

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from batchrun.endpoints.auth import DEFAULT_API_URL
from batchrun.endpoints.client import EndpointsClient
from batchrun.endpoints.connect import is_home_service
from batchrun.endpoints.models import Endpoint, EndpointState
from batchrun.errors import (
    APIClientError,
    APIConnectionError,
    APIError,
    AuthenticationError,
    BatchrunError,
    EndpointRestError,
    NotAtRestYetError,
    NotFoundError,
    PermissionDeniedError,
)

__all__ = [
    "RestAction",
    "RestOutcome",
    "apply_on_exit",
    "pause_command",
    "rest_action",
    "settle_even_if_cancelled",
]

logger = logging.getLogger(__name__)


class RestAction(StrEnum):
    """The call that puts an endpoint to rest."""

    PAUSE = "pause"
    SCALE_TO_ZERO = "scale-to-zero"
    DELETE = "delete"
    NONE = "none"


@dataclass(slots=True, kw_only=True, frozen=True)
class RestOutcome:
    """What `apply_on_exit` did.

    Attributes:
        action: the call made.
        state: the state read back at the end ("deleted" when gone).
        endpoint: the endpoint as last read, or None when deleted.
        seconds: from the first call to the confirmation.
    """

    action: RestAction
    state: str
    endpoint: Endpoint | None
    seconds: float


def rest_action(on_exit: str, found_state: str | None) -> RestAction:
    """The call that puts an endpoint in its `on_exit` state.

    Args:
        on_exit: the job's `[endpoint] on_exit`.
        found_state: the state the run found the endpoint in ("missing" if it created it).
    """
    if on_exit in ("pause", "scale-to-zero", "delete"):
        return RestAction(on_exit)
    if on_exit == "keep":
        return RestAction.NONE
    # restore
    if found_state in {state.value for state in EndpointState if state.bills}:
        return RestAction.NONE
    if found_state == EndpointState.SCALED_TO_ZERO:
        return RestAction.SCALE_TO_ZERO
    return RestAction.PAUSE  # found paused, failed, or missing (the run created it)


def pause_command(name: str, namespace: str, api_url: str | None = None) -> str:
    """The command a person runs to pause the endpoint by hand (`--local` for this home's local
    service, which finds it wherever it listens by then)."""
    command = f"batchrun endpoints pause {name} --namespace {namespace}"
    if api_url and is_home_service(api_url):
        return command + " --local"
    if api_url and api_url.rstrip("/") != DEFAULT_API_URL:
        command += f" --api-url {api_url.rstrip('/')}"
    return command


def _at_rest(action: RestAction, endpoint: Endpoint | None) -> bool:
    if action is RestAction.DELETE:
        return endpoint is None
    if endpoint is None:  # gone: nothing bills
        return True
    if action is RestAction.PAUSE:
        return endpoint.state is EndpointState.PAUSED
    if action is RestAction.SCALE_TO_ZERO:
        return endpoint.state in (EndpointState.SCALED_TO_ZERO, EndpointState.PAUSED)
    return True


async def _read(client: EndpointsClient, name: str, namespace: str) -> Endpoint | None:
    try:
        return await client.get(name, namespace=namespace)
    except NotFoundError:
        return None


async def _call(client: EndpointsClient, action: RestAction, name: str, namespace: str) -> None:
    try:
        if action is RestAction.PAUSE:
            await client.pause(name, namespace=namespace)
        elif action is RestAction.SCALE_TO_ZERO:
            await client.scale_to_zero(name, namespace=namespace)
        elif action is RestAction.DELETE:
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
    if action is RestAction.NONE:
        try:
            endpoint = await _read(client, name, namespace)
        except BatchrunError as e:  # nothing to apply: a failed look is not a failure
            logger.warning("on_exit %s: could not read %s/%s back: %s", on_exit, namespace, name, e)
            return RestOutcome(action=action, state="unknown", endpoint=None, seconds=0.0)
        state = endpoint.state_text if endpoint else "deleted"
        logger.info("on_exit %s: left %s/%s %s", on_exit, namespace, name, state)
        return RestOutcome(action=action, state=state, endpoint=endpoint, seconds=0.0)

    def warn(retry: RetryCallState) -> None:
        assert retry.outcome is not None and retry.next_action is not None
        logger.warning(
            "on_exit %s of %s/%s: try %d/%d failed (%s); again in %.1fs",
            on_exit,
            namespace,
            name,
            retry.attempt_number,
            attempts,
            retry.outcome.exception(),
            retry.next_action.sleep,
        )

    retrying = AsyncRetrying(
        stop=stop_after_attempt(max(attempts, 1)),
        wait=wait_exponential(multiplier=backoff, exp_base=2),
        retry=retry_if_exception(_retryable),
        before_sleep=warn,
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                endpoint = await _read(client, name, namespace)
                if not _at_rest(action, endpoint):
                    logger.info("on_exit %s: %s %s/%s", on_exit, action, namespace, name)
                    await _call(client, action, name, namespace)
                    endpoint = await _confirm(
                        client, action, name, namespace, confirm_timeout, refresh_every
                    )
    except (APIError, APIConnectionError, NotAtRestYetError) as e:
        raise EndpointRestError(
            f"endpoint {namespace}/{name} could not be put in its on_exit state ({on_exit}): "
            f"{e}; it may still be billing. Pause it with: "
            f"{pause_command(name, namespace, client.api_url)}"
        ) from e
    state = endpoint.state_text if endpoint else "deleted"
    seconds = time.monotonic() - start
    logger.info("on_exit %s: %s/%s is %s (%.2fs)", on_exit, namespace, name, state, seconds)
    return RestOutcome(action=action, state=state, endpoint=endpoint, seconds=seconds)


def _retryable(error: BaseException) -> bool:
    """A failed call or read-back that another try may fix (not a refused token or request)."""
    if isinstance(error, AuthenticationError | PermissionDeniedError):
        return False
    if isinstance(error, APIClientError):
        return error.status in (409, 429)
    return isinstance(error, APIError | APIConnectionError | NotAtRestYetError)


async def _confirm(
    client: EndpointsClient,
    action: RestAction,
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
            raise NotAtRestYetError(f"asked to {action}, still {state} after {timeout:g}s")
        await asyncio.sleep(refresh_every)


async def settle_even_if_cancelled(settling: Awaitable[None], error: BaseException | None) -> None:
    """Await `settling` (the way to rest) to its end, even while this task is being cancelled.

    A cancellation (a second Ctrl-C) is held until `settling` is done, then raised again,
    unless the run already failed with `error`; it skips the grace, never the pause. Only a
    cancellation of `settling` itself (the loop shutting down) ends the wait early: the
    watchdog then acts.

    Raises:
        EndpointRestError: `settling` could not put the endpoint to rest (chained to `error`).
        CancelledError: this task was cancelled meanwhile, and `error` is None.
    """
    task = asyncio.ensure_future(settling)
    cancelled = False
    while True:
        try:
            await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                break  # the settle task itself was cancelled (loop shutdown): the watchdog acts
            cancelled = True
        except EndpointRestError as rest_error:
            if error is not None and not isinstance(error, EndpointRestError):
                raise rest_error from error
            raise
    if cancelled and error is None:
        raise asyncio.CancelledError
