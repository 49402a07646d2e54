"""`SyncEndpointsClient`: `EndpointsClient` for scripts, each method blocking.

It runs the async client on a private event loop, so the namespace cache and the connection
pool live as long as the sync client does.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

import httpx

from batchrun.endpoints.client import EndpointsClient
from batchrun.endpoints.http import ControlRetryPolicy
from batchrun.endpoints.models import Endpoint, Hardware

__all__ = ["SyncEndpointsClient"]

T = TypeVar("T")


class SyncEndpointsClient:
    """`EndpointsClient` for scripts: the same methods, blocking.

    Runs a private event loop; do not use it from inside a running event loop (use
    `EndpointsClient` there). Close it, or use it as a context manager.

    Args: as `EndpointsClient`.
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
        self._loop = asyncio.new_event_loop()
        self.aio = EndpointsClient(
            api_url=api_url,
            token=token,
            namespace=namespace,
            hub_url=hub_url,
            timeout=timeout,
            transport=transport,
            retry=retry,
        )

    def __repr__(self) -> str:
        return f"Sync{self.aio!r}"

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._loop.run_until_complete(coro)
        coro.close()
        raise RuntimeError(
            "SyncEndpointsClient blocks; inside a running event loop use EndpointsClient "
            "(await client.get(...)) instead"
        )

    def __enter__(self) -> SyncEndpointsClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connections and the private event loop."""
        if not self._loop.is_closed():
            self._run(self.aio.aclose())
            self._loop.close()

    @property
    def api_url(self) -> str:
        """The API base URL in use."""
        return self.aio.api_url

    def whoami(self) -> dict[str, Any]:
        """See `EndpointsClient.whoami`."""
        return self._run(self.aio.whoami())

    def namespace(self) -> str:
        """See `EndpointsClient.namespace`."""
        return self._run(self.aio.namespace())

    def list(self, namespace: str | None = None) -> builtins.list[Endpoint]:
        """See `EndpointsClient.list`."""
        return self._run(self.aio.list(namespace))

    def get(self, name: str, *, namespace: str | None = None) -> Endpoint:
        """See `EndpointsClient.get`."""
        return self._run(self.aio.get(name, namespace=namespace))

    def create(self, name: str, **kwargs: Any) -> Endpoint:
        """See `EndpointsClient.create` (same keyword arguments)."""
        return self._run(self.aio.create(name, **kwargs))

    def update(self, name: str, **kwargs: Any) -> Endpoint:
        """See `EndpointsClient.update` (same keyword arguments)."""
        return self._run(self.aio.update(name, **kwargs))

    def delete(self, name: str, *, namespace: str | None = None) -> None:
        """See `EndpointsClient.delete`."""
        self._run(self.aio.delete(name, namespace=namespace))

    def pause(self, name: str, *, namespace: str | None = None) -> Endpoint:
        """See `EndpointsClient.pause`."""
        return self._run(self.aio.pause(name, namespace=namespace))

    def resume(
        self, name: str, *, namespace: str | None = None, running_ok: bool = True
    ) -> Endpoint:
        """See `EndpointsClient.resume`."""
        return self._run(self.aio.resume(name, namespace=namespace, running_ok=running_ok))

    def scale_to_zero(self, name: str, *, namespace: str | None = None) -> Endpoint:
        """See `EndpointsClient.scale_to_zero`."""
        return self._run(self.aio.scale_to_zero(name, namespace=namespace))

    def wait(
        self,
        name: str,
        *,
        namespace: str | None = None,
        timeout: float | None = None,
        refresh_every: float = 5.0,
    ) -> Endpoint:
        """See `EndpointsClient.wait`."""
        return self._run(
            self.aio.wait(name, namespace=namespace, timeout=timeout, refresh_every=refresh_every)
        )

    def hardware(self, **filters: Any) -> builtins.list[Hardware]:
        """See `EndpointsClient.hardware` (same keyword arguments)."""
        return self._run(self.aio.hardware(**filters))
