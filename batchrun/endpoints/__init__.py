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
(SyncEndpointsClient), `auth` (token, API URL and namespace discovery), `payloads` (request
bodies), `http` (the one place HTTP answers become batchrun errors, and the retry policy).
"""

from __future__ import annotations

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
