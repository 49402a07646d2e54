"""The Inference Endpoints API, as huggingface_hub's guide drives it, with its traps fixed.

```python
from batchrun.endpoints import EndpointsClient

async with EndpointsClient(api_url="http://127.0.0.1:8765/v2") as client:
    endpoint = await client.create("my-endpoint", repository="batchrun/echo", task="text-generation")
    endpoint = await client.wait("my-endpoint", timeout=120)
    ...
    await client.pause("my-endpoint")
```

Modules: `models` (Endpoint, EndpointState, Hardware), `client` (EndpointsClient), `sync`
(SyncEndpointsClient), `auth` (token, API URL and namespace discovery), `payloads` (CreateSpec,
the request bodies), `http` (the one place HTTP answers become batchrun errors, and
ControlRetryPolicy), `connect` (a job's provider → API URL and token; the only importer of
`batchrun.local`). Names load lazily, on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batchrun.endpoints.auth import resolve_api_url, resolve_hub_url, resolve_token
    from batchrun.endpoints.client import EndpointsClient
    from batchrun.endpoints.http import ControlRetryPolicy
    from batchrun.endpoints.models import Endpoint, EndpointState, Hardware
    from batchrun.endpoints.sync import SyncEndpointsClient

__all__ = [
    "ControlRetryPolicy",
    "Endpoint",
    "EndpointState",
    "EndpointsClient",
    "Hardware",
    "SyncEndpointsClient",
    "resolve_api_url",
    "resolve_hub_url",
    "resolve_token",
]

_HOMES = {
    "ControlRetryPolicy": "http",
    "Endpoint": "models",
    "EndpointState": "models",
    "EndpointsClient": "client",
    "Hardware": "models",
    "SyncEndpointsClient": "sync",
    "resolve_api_url": "auth",
    "resolve_hub_url": "auth",
    "resolve_token": "auth",
}


def __getattr__(name: str) -> Any:
    """Load each name from its module on first use (PEP 562): a module that needs only the
    models (the cost meter) does not load httpx and the client."""
    module = _HOMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
