"""Provider → control plane: the API URL, the token and the client for a job's `[endpoint]`.

| provider | API URL (without `[endpoint] api_url`)            | token (without an explicit one)          |
| -------- | ------------------------------------------------- | ---------------------------------------- |
| `hf`     | Hugging Face's, `https://api.endpoints.huggingface.cloud/v2` | `resolve_token()`: HF_TOKEN, … |
| `local`  | the local service's, `http://127.0.0.1:8765/v2`   | the local service's own, else `resolve_token()` |

A job's API URL is its `[endpoint] api_url` or the provider's default; `BATCHRUN_ENDPOINTS_API`
is read by `resolve_api_url` for `batchrun endpoints` and `EndpointsClient()` only. This is the
one module outside the CLI's `serve` command that imports `batchrun.local`: only its `service`
module (where the service listens, its token, starting it), never the service itself.
"""

from __future__ import annotations

import asyncio
import logging

from batchrun.endpoints.auth import DEFAULT_API_URL, resolve_token
from batchrun.endpoints.models import Hardware
from batchrun.errors import BatchrunError
from batchrun.job import EndpointSpec
from batchrun.local.service import DEFAULT_API_URL as LOCAL_API_URL
from batchrun.local.service import default_state_dir, ensure_service

__all__ = [
    "HF_API_URL",
    "LOCAL_API_URL",
    "api_url_for",
    "control_token",
    "local_price_list",
    "local_token",
]

logger = logging.getLogger(__name__)

HF_API_URL = DEFAULT_API_URL
"""Hugging Face's Inference Endpoints API."""


def api_url_for(spec: EndpointSpec) -> str:
    """The control-plane base URL of `[endpoint]`: `api_url`, else the provider's default."""
    if spec.api_url:
        return spec.api_url.rstrip("/")
    return HF_API_URL if spec.provider == "hf" else LOCAL_API_URL


def local_token() -> str | None:
    """The default local service's token, read from its state dir (nothing is started)."""
    try:
        return (default_state_dir() / "token").read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def local_price_list() -> list[Hardware]:
    """The local service's hardware and (simulated) prices, without asking the service."""
    from batchrun.local.schema import hardware_catalogue

    return Hardware.list_from_provider(hardware_catalogue())


async def control_token(
    provider: str, api_url: str, explicit: str | None = None, *, tolerant: bool = False
) -> str | None:
    """The control-plane token: `explicit`, else the local service's (started if none answers
    at `api_url`) for provider "local", else `resolve_token()`.

    Args:
        provider: "hf" or "local".
        api_url: the API's base URL.
        explicit: a token given by the caller.
        tolerant: a local service that cannot be started is logged, and `resolve_token()` used
            (for `batchrun reap`, which goes on to the next lease).

    Raises:
        APIConnectionError: the local service could not be started (unless `tolerant`).
    """
    if explicit:
        return explicit
    if provider == "local":
        try:
            info = await asyncio.to_thread(ensure_service, api_url=api_url)
        except BatchrunError as e:
            if not tolerant:
                raise
            logger.warning("local service at %s: %s", api_url, e)
        else:
            if info.token:
                return info.token
    return resolve_token()
