"""`EndpointsClient`: every operation of the Inference Endpoints API, async, on one httpx client.

Fixes the reference client's traps: every call has a timeout; `wait` raises on `paused` and
`scaledToZero` instead of looping forever; the namespace is asked once per client; listing `"*"`
raises an organization's error instead of swallowing it. Idempotent calls (GET, pause, resume,
scale-to-zero) retry under `ControlRetryPolicy`; create and delete never repeat blindly: after a failure
that leaves it unknown whether the server acted, they read the endpoint back first.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from batchrun.endpoints.auth import (
    namespace_from_whoami,
    resolve_api_url,
    resolve_hub_url,
    resolve_token,
)
from batchrun.endpoints.http import ControlRetryPolicy, probe, send
from batchrun.endpoints.models import Endpoint, EndpointState, Hardware
from batchrun.endpoints.payloads import CreateSpec, create_payload, update_payload
from batchrun.errors import (
    APIClientError,
    ConflictError,
    EndpointFailedError,
    EndpointNotRunningError,
    EndpointTimeoutError,
    JobError,
    NotFoundError,
)

__all__ = ["EndpointsClient"]

logger = logging.getLogger(__name__)


def _items(data: Any) -> builtins.list[dict[str, Any]]:
    items = data.get("items") if isinstance(data, dict) else data
    return [item for item in items or [] if isinstance(item, dict)]


class EndpointsClient:
    """Async client of the Inference Endpoints API (Hugging Face's, or the local service).

    Use it as `async with EndpointsClient() as client: ...`, or call `aclose()`.

    Args:
        api_url: the API base, e.g. "http://127.0.0.1:8765/v2"; else `BATCHRUN_ENDPOINTS_API`,
            else Hugging Face's.
        token: the token; else `HF_TOKEN`, `HUGGING_FACE_HUB_TOKEN`, `$HF_HOME/token`.
        namespace: the default namespace; else the user from whoami-v2, asked once.
        hub_url: where whoami-v2 is asked; else derived from `api_url` (see `auth`).
        timeout: seconds for every single HTTP call.
        transport: an httpx transport (tests use `httpx.MockTransport`).
        retry: the retry policy of idempotent calls.

    Raises:
        JobError: `api_url` is not an http(s) URL.
    """

    def __init__(
        self,
        *,
        api_url: str | None = None,
        token: str | None = None,
        namespace: str | None = None,
        hub_url: str | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        retry: ControlRetryPolicy | None = None,
    ) -> None:
        self.api_url = resolve_api_url(api_url)
        self.hub_url = resolve_hub_url(self.api_url, hub_url)
        self.timeout = timeout
        self.retry = retry or ControlRetryPolicy()
        self._token = resolve_token(token)
        self._namespace = namespace or None
        self._whoami: dict[str, Any] | None = None
        self._whoami_lock = asyncio.Lock()
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            transport=transport,
            headers={"User-Agent": "batchrun"},
        )

    def __repr__(self) -> str:
        token = "set" if self._token else "none"
        return (
            f"EndpointsClient(api_url={self.api_url!r}, namespace={self._namespace!r}, "
            f"token={token})"
        )

    async def __aenter__(self) -> EndpointsClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._http.aclose()

    # -- plumbing ---------------------------------------------------------------------------

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        name: str | None = None,
        namespace: str | None = None,
        url: str | None = None,
    ) -> Any:
        """One idempotent call under the retry policy."""
        target = url or f"{self.api_url}{path}"
        async for attempt in self.retry.retrying(f"{method} {path}"):
            with attempt:
                return await self._once(method, target, body=body, name=name, namespace=namespace)
        raise AssertionError("unreachable: the retry policy re-raises")  # pragma: no cover

    async def _once(
        self,
        method: str,
        url: str,
        *,
        body: Any = None,
        name: str | None = None,
        namespace: str | None = None,
    ) -> Any:
        return await send(
            self._http,
            method,
            url,
            headers=self._auth(),
            json_body=body,
            name=name,
            namespace=namespace,
            secret=self._token,
        )

    @staticmethod
    def _path(namespace: str, name: str | None = None, action: str | None = None) -> str:
        path = f"/endpoint/{quote(namespace, safe='')}"
        if name is not None:
            path += f"/{quote(name, safe='')}"
        if action is not None:
            path += f"/{action}"
        return path

    def _endpoint(self, raw: Any, namespace: str) -> Endpoint:
        return Endpoint.from_raw(raw if isinstance(raw, dict) else {}, namespace, token=self._token)

    async def _lookup(self, name: str, namespace: str) -> Endpoint | None:
        """The endpoint, or None when the API says 404; one try, no retry."""
        try:
            raw = await self._once(
                "GET", self.api_url + self._path(namespace, name), name=name, namespace=namespace
            )
        except NotFoundError:
            return None
        return self._endpoint(raw, namespace)

    # -- identity ---------------------------------------------------------------------------

    async def whoami(self) -> dict[str, Any]:
        """The hub's `/api/whoami-v2` answer for the token, asked once per client.

        Raises:
            AuthenticationError: no token, or the hub does not accept it.
            APIError: another HTTP error.
            APIConnectionError: the hub could not be reached.
        """
        async with self._whoami_lock:
            if self._whoami is None:
                data = await self._call(
                    "GET", "/api/whoami-v2", url=f"{self.hub_url}/api/whoami-v2"
                )
                self._whoami = data if isinstance(data, dict) else {}
            return self._whoami

    async def namespace(self) -> str:
        """The default namespace: the one given to the client, else the user from whoami.

        Raises:
            JobError: the token is not a user's, so there is no default.
            AuthenticationError: no token, or the hub does not accept it.
            APIConnectionError: the hub could not be reached.
        """
        if self._namespace is None:
            self._namespace = namespace_from_whoami(await self.whoami())
        return self._namespace

    async def _ns(self, namespace: str | None) -> str:
        return namespace or await self.namespace()

    # -- operations -------------------------------------------------------------------------

    async def list(self, namespace: str | None = None) -> builtins.list[Endpoint]:
        """The endpoints of a namespace; `"*"` lists the user's and every organization's.

        Args:
            namespace: a user or organization; None for the default; "*" for all of them.

        Raises:
            APIError: the API refused (for "*": for any one namespace; nothing is skipped).
            APIConnectionError: the API could not be reached.
        """
        if namespace == "*":
            info = await self.whoami()
            namespaces = [namespace_from_whoami(info)]
            for org in info.get("orgs") or []:
                org_name = org.get("name") if isinstance(org, dict) else None
                if isinstance(org_name, str) and org_name not in namespaces:
                    namespaces.append(org_name)
            endpoints: builtins.list[Endpoint] = []
            for ns in namespaces:
                endpoints += await self.list(ns)
            return endpoints
        ns = await self._ns(namespace)
        data = await self._call("GET", self._path(ns), namespace=ns)
        return [self._endpoint(item, ns) for item in _items(data)]

    async def get(self, name: str, *, namespace: str | None = None) -> Endpoint:
        """One endpoint, as it is now.

        Raises:
            NotFoundError: no such endpoint in the namespace.
            APIError: another refusal or server error.
            APIConnectionError: the API could not be reached.
        """
        ns = await self._ns(namespace)
        raw = await self._call("GET", self._path(ns, name), name=name, namespace=ns)
        return self._endpoint(raw, ns)

    async def create(
        self,
        name: str,
        spec: CreateSpec | None = None,
        /,
        *,
        namespace: str | None = None,
        **fields: Any,
    ) -> Endpoint:
        """Create an endpoint from `spec`, or from its fields given as keywords (as in
        huggingface_hub's `create_inference_endpoint`: `repository=`, `task=`, ...).

        `type="protected"` is sent as "authenticated". `custom_image` is ``{"url",
        "health_route", "port", "env"}`` (or a variant-keyed image). When a try fails without a
        clear answer (connection error, 5xx), the endpoint is read back before any new try: if
        it exists, it is returned.

        Raises:
            ConflictError: the name is taken (also when, after an unclear try, an endpoint of
                that name turns out to serve another repository).
            UnprocessableError: the API rejected the body.
            JobError: a value that is wrong before anything is sent (type, image).
            APIError: another refusal or server error.
            APIConnectionError: the API could not be reached.
        """
        ns = await self._ns(namespace)
        spec = spec or CreateSpec(**fields)
        body = create_payload(name, spec)
        repository = spec.repository
        path = self._path(ns)
        uncertain = False
        async for attempt in self.retry.retrying(f"POST {path}"):
            with attempt:
                if uncertain:
                    existing = await self._lookup(name, ns)
                    if existing is not None and existing.repository != repository:
                        raise ConflictError(
                            f"endpoint {name!r} in namespace {ns!r} exists with repository "
                            f"{existing.repository!r}, not {repository!r}; an earlier create "
                            "got no clear answer, so it was not created by this call",
                            status=409,
                        )
                    if existing is not None:
                        logger.warning(
                            "create %s/%s: an earlier try got no clear answer, and the endpoint "
                            "exists now; using it",
                            ns,
                            name,
                        )
                        return existing
                uncertain = True
                raw = await self._once(
                    "POST", self.api_url + path, body=body, name=name, namespace=ns
                )
                logger.info("created endpoint %s/%s", ns, name)
                return self._endpoint(raw, ns)
        raise AssertionError("unreachable: the retry policy re-raises")  # pragma: no cover

    async def update(
        self,
        name: str,
        *,
        namespace: str | None = None,
        repository: str | None = None,
        framework: str | None = None,
        revision: str | None = None,
        task: str | None = None,
        accelerator: str | None = None,
        instance_size: str | None = None,
        instance_type: str | None = None,
        min_replica: int | None = None,
        max_replica: int | None = None,
        scale_to_zero_timeout: int | None = None,
        scaling_metric: str | None = None,
        scaling_threshold: float | None = None,
        custom_image: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        secrets: Mapping[str, str] | None = None,
        tags: builtins.list[str] | None = None,
        type: str | None = None,
    ) -> Endpoint:
        """Change an endpoint: only the fields given (not None) are sent.

        A PUT of the same fields is idempotent, so it retries like the GETs.

        Raises:
            JobError: nothing to change, or a value wrong before anything is sent.
            NotFoundError: no such endpoint.
            APIError: another refusal or server error.
            APIConnectionError: the API could not be reached.
        """
        body = update_payload(
            repository=repository,
            framework=framework,
            revision=revision,
            task=task,
            accelerator=accelerator,
            instance_size=instance_size,
            instance_type=instance_type,
            min_replica=min_replica,
            max_replica=max_replica,
            scale_to_zero_timeout=scale_to_zero_timeout,
            scaling_metric=scaling_metric,
            scaling_threshold=scaling_threshold,
            custom_image=custom_image,
            env=env,
            secrets=secrets,
            tags=tags,
            type=type,
        )
        ns = await self._ns(namespace)
        raw = await self._call("PUT", self._path(ns, name), body=body, name=name, namespace=ns)
        return self._endpoint(raw, ns)

    async def delete(self, name: str, *, namespace: str | None = None) -> None:
        """Delete an endpoint for good.

        After a try without a clear answer the endpoint is read back: gone means done.

        Raises:
            NotFoundError: no such endpoint.
            APIError: another refusal or server error.
            APIConnectionError: the API could not be reached.
        """
        ns = await self._ns(namespace)
        path = self._path(ns, name)
        uncertain = False
        async for attempt in self.retry.retrying(f"DELETE {path}"):
            with attempt:
                if uncertain and await self._lookup(name, ns) is None:
                    logger.info("deleted endpoint %s/%s (confirmed by reading it back)", ns, name)
                    return
                uncertain = True
                await self._once("DELETE", self.api_url + path, name=name, namespace=ns)
                logger.info("deleted endpoint %s/%s", ns, name)
                return

    async def pause(self, name: str, *, namespace: str | None = None) -> Endpoint:
        """Pause an endpoint: no billing, and only `resume` starts it again.

        Raises:
            NotFoundError: no such endpoint.
            APIError: another refusal or server error.
            APIConnectionError: the API could not be reached.
        """
        ns = await self._ns(namespace)
        raw = await self._call("POST", self._path(ns, name, "pause"), name=name, namespace=ns)
        return self._endpoint(raw, ns)

    async def resume(
        self, name: str, *, namespace: str | None = None, running_ok: bool = True
    ) -> Endpoint:
        """Resume a paused (or scaled-to-zero) endpoint.

        Args:
            name: the endpoint.
            namespace: its namespace (default: the client's).
            running_ok: when the API answers "already running", return the endpoint instead
                of raising.

        Raises:
            NotFoundError: no such endpoint.
            APIClientError: the API refused (e.g. already running with running_ok=False).
            APIError: a server error.
            APIConnectionError: the API could not be reached.
        """
        ns = await self._ns(namespace)
        try:
            raw = await self._call("POST", self._path(ns, name, "resume"), name=name, namespace=ns)
        except APIClientError as e:
            if running_ok and e.status in (400, 409) and "already running" in str(e).lower():
                return await self.get(name, namespace=ns)
            raise
        return self._endpoint(raw, ns)

    async def scale_to_zero(self, name: str, *, namespace: str | None = None) -> Endpoint:
        """Scale an endpoint to zero: no billing; the next request wakes it.

        Raises:
            NotFoundError: no such endpoint.
            APIError: another refusal or server error.
            APIConnectionError: the API could not be reached.
        """
        ns = await self._ns(namespace)
        raw = await self._call(
            "POST", self._path(ns, name, "scale-to-zero"), name=name, namespace=ns
        )
        return self._endpoint(raw, ns)

    async def hardware(
        self,
        *,
        vendor: str | None = None,
        accelerator: str | None = None,
        region: str | None = None,
        instance_type: str | None = None,
        namespace: str | None = None,
    ) -> builtins.list[Hardware]:
        """The hardware the namespace can deploy on, with prices (USD per replica-hour).

        Filters compare case-insensitively; None keeps everything.

        Raises:
            APIError: the API refused or failed.
            APIConnectionError: the API could not be reached.
        """
        ns = await self._ns(namespace)
        data = await self._call("GET", f"/provider/{quote(ns, safe='')}", namespace=ns)
        wanted = {
            "vendor": vendor,
            "accelerator": accelerator,
            "region": region,
            "instance_type": instance_type,
        }
        return [
            hw
            for hw in Hardware.list_from_provider(data)
            if all(
                value is None or str(getattr(hw, key)).lower() == value.lower()
                for key, value in wanted.items()
            )
        ]

    async def _healthy(self, endpoint: Endpoint) -> int | None:
        assert endpoint.url is not None
        if not endpoint.health_route:
            return 200
        url = f"{endpoint.url.rstrip('/')}/{endpoint.health_route.lstrip('/')}"
        return await probe(self._http, url, headers=self._auth(), timeout=min(self.timeout, 10.0))

    async def wait(
        self,
        name: str,
        *,
        namespace: str | None = None,
        timeout: float | None = None,
        refresh_every: float = 5.0,
        log_states: bool = True,
    ) -> Endpoint:
        """Wait until the endpoint runs and its URL answers its health route with 200.

        Never loops forever on a state that cannot become running by itself. Each state it
        goes through is logged once at INFO (every look at DEBUG).

        Args:
            name: the endpoint.
            namespace: its namespace (default: the client's).
            timeout: seconds in all; None waits as long as the endpoint is on its way up.
            refresh_every: seconds between two reads of its state.
            log_states: log the states and the ready line at INFO (False: the caller shows
                them, e.g. the run's waiting line; they go to DEBUG).

        Returns:
            The endpoint as read when it answered its health route.

        Raises:
            EndpointFailedError: it is `failed` or `updateFailed` (with the server's message).
            EndpointNotRunningError: it is `paused` or `scaledToZero`; the message says what to call.
            EndpointTimeoutError: not ready within `timeout` (also a `TimeoutError`).
            JobError: a negative timeout or a non-positive refresh_every.
            NotFoundError: no such endpoint.
            APIError: another refusal or server error.
            APIConnectionError: the API could not be reached.
        """
        if timeout is not None and timeout < 0:
            raise JobError(f"wait: timeout cannot be negative, got {timeout}")
        if refresh_every <= 0:
            raise JobError(f"wait: refresh_every must be positive, got {refresh_every}")
        ns = await self._ns(namespace)
        start = time.monotonic()
        last: Endpoint | None = None
        health: int | None = None
        said: str | None = None
        level = logging.INFO if log_states else logging.DEBUG
        try:
            async with asyncio.timeout(timeout):
                while True:
                    last = endpoint = await self.get(name, namespace=ns)
                    _raise_if_stuck(endpoint)
                    if endpoint.state is EndpointState.RUNNING and endpoint.url:
                        health = await self._healthy(endpoint)
                        if health == 200:
                            elapsed = time.monotonic() - start
                            logger.log(
                                level, "endpoint %s/%s is ready after %.1fs", ns, name, elapsed
                            )
                            return endpoint
                    if endpoint.state_text != said:  # a state once, not every look
                        said = endpoint.state_text
                        logger.log(level, "endpoint %s/%s is %s", ns, name, said)
                    logger.debug("endpoint %s/%s: next look in %gs", ns, name, refresh_every)
                    await asyncio.sleep(refresh_every)
        except TimeoutError as e:
            raise EndpointTimeoutError(_timeout_message(ns, name, timeout, last, health)) from e


def _raise_if_stuck(endpoint: Endpoint) -> None:
    where = f"endpoint {endpoint.namespace}/{endpoint.name}"
    state = endpoint.state
    if state in (EndpointState.FAILED, EndpointState.UPDATE_FAILED):
        what = "failed" if state is EndpointState.FAILED else "failed to update"
        reason = endpoint.message or "no message from the server"
        raise EndpointFailedError(f"{where} {what} ({endpoint.state_text}): {reason}")
    ns_flag = f" --namespace {endpoint.namespace}"
    if state is EndpointState.PAUSED:
        raise EndpointNotRunningError(
            f"{where} is paused and will not start by itself; resume it first: "
            f"`batchrun endpoints resume {endpoint.name}{ns_flag}` (Python: client.resume(...))"
        )
    if state is EndpointState.SCALED_TO_ZERO:
        raise EndpointNotRunningError(
            f"{where} is scaled to zero; it starts on the next request (send it with "
            f"X-Scale-Up-Timeout), or resume it: `batchrun endpoints resume {endpoint.name}"
            f"{ns_flag}` (Python: client.resume(...))"
        )


def _timeout_message(
    namespace: str, name: str, timeout: float | None, last: Endpoint | None, health: int | None
) -> str:
    text = f"endpoint {namespace}/{name} was not ready after {timeout:g}s"
    if last is None:
        return text + " (its state could not be read in time)"
    text += f"; last state {last.state_text}"
    if last.message:
        text += f" ({last.message})"
    if last.state is EndpointState.RUNNING and last.url:
        answer = "no answer" if health is None else f"HTTP {health}"
        text += f"; its health route {last.health_route} gave {answer}"
    return text
