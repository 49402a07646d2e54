"""Provider → control plane: the API URL, the token and the client for a job's `[endpoint]`.

| provider | API URL (without `[endpoint] api_url`)            | token (without an explicit one)          |
| -------- | ------------------------------------------------- | ---------------------------------------- |
| `hf`     | Hugging Face's, `https://api.endpoints.huggingface.cloud/v2` | `resolve_token()`: HF_TOKEN, … |
| `local`  | `HOME_SERVICE`: this home's service, found through `$BATCHRUN_HOME/local/service.json`, started on a free port when none runs | the home's service's own, else `resolve_token()` |

`HOME_SERVICE` (the word "local") stands for "this home's service" wherever an API URL is kept
for later (lease files): it is resolved again through `service.json` when it is used, so a
service restarted on another port breaks nothing. A job's API URL is its `[endpoint] api_url`
or the provider's default; `BATCHRUN_ENDPOINTS_API` is read by `batchrun endpoints` and
`EndpointsClient()` only, never by a job. This is the one module outside the CLI's `serve`
command that imports `batchrun.local`: only its `service` module (where the service listens,
its token, starting it), never the service itself.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx

from batchrun.endpoints.auth import DEFAULT_API_URL, normalize_api_url, resolve_token
from batchrun.endpoints.client import EndpointsClient
from batchrun.endpoints.http import ControlRetryPolicy
from batchrun.endpoints.models import Hardware
from batchrun.errors import BatchrunError
from batchrun.job import EndpointSpec
from batchrun.local.service import default_state_dir, ensure_service, service_status

__all__ = [
    "HF_API_URL",
    "HOME_SERVICE",
    "api_url_for",
    "control_plane",
    "control_token",
    "home_service_url",
    "home_token_file",
    "is_home_service",
    "local_price_list",
    "local_token",
    "open_client",
    "state_poll_s",
]

logger = logging.getLogger(__name__)

HF_API_URL = DEFAULT_API_URL
"""Hugging Face's Inference Endpoints API."""

HOME_SERVICE = "local"
"""The API URL of "this home's local service", resolved through its `service.json` when used."""


def api_url_for(spec: EndpointSpec) -> str:
    """The control-plane base URL of `[endpoint]`: `api_url` (with /v2 added when it has no
    path), else Hugging Face's for provider "hf", else `HOME_SERVICE` for provider "local"."""
    if spec.api_url:
        return normalize_api_url(spec.api_url)
    return HF_API_URL if spec.provider == "hf" else HOME_SERVICE


def state_poll_s(spec: EndpointSpec, api_url: str) -> float:
    """Seconds between two reads of an endpoint's state: 0.25 s for a local API (its states
    change in a second), 5 s for a remote one (a cold start takes minutes)."""
    local = spec.provider == "local" or any(
        host in api_url for host in ("://127.0.0.1", "://localhost")
    )
    return 0.25 if local else 5.0


def home_token_file() -> Path:
    """Where this home's local service keeps its token."""
    return default_state_dir() / "token"


def local_token() -> str | None:
    """This home's local service's token, read from its state dir (nothing is started)."""
    try:
        return home_token_file().read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def home_service_url() -> str | None:
    """The API URL of this home's running local service, or None (nothing is started)."""
    status = service_status(default_state_dir())
    return str(status["api_url"]) if status else None


def is_home_service(api_url: str) -> bool:
    """Whether `api_url` is `HOME_SERVICE` or where this home's running service listens."""
    if api_url == HOME_SERVICE:
        return True
    if not api_url.startswith(("http://127.0.0.1", "http://localhost", "http://[::1]")):
        return False
    current = home_service_url()
    return current is not None and current.rstrip("/") == api_url.rstrip("/")


def local_price_list() -> list[Hardware]:
    """The local service's hardware and (simulated) prices, without asking the service."""
    from batchrun.local.schema import hardware_catalogue

    return Hardware.list_from_provider(hardware_catalogue())


async def control_plane(
    provider: str, api_url: str, explicit: str | None = None, *, tolerant: bool = False
) -> tuple[str, str | None]:
    """The API URL to call and the token to send for `api_url` of `provider`.

    For provider "local", `HOME_SERVICE` becomes this home's service (started when none runs)
    and its token; an explicit local URL is the service answering there (started when none
    does), with the home's token only if it is this home's service.

    Args:
        provider: "hf" or "local".
        api_url: the API's base URL, or `HOME_SERVICE`.
        explicit: a token given by the caller; it wins.
        tolerant: a local service that cannot be started is logged, and `resolve_token()` used
            (for `batchrun reap`, which goes on to the next lease); `HOME_SERVICE` then stays
            unresolved, so calls to it fail with a clear error.

    Raises:
        APIConnectionError: the local service could not be started (unless `tolerant`).
    """
    if provider != "local" and api_url != HOME_SERVICE:
        return api_url, explicit or resolve_token()
    try:
        info = await asyncio.to_thread(
            ensure_service, api_url=None if api_url == HOME_SERVICE else api_url
        )
    except BatchrunError as e:
        if not tolerant:
            raise
        where = "this home's" if api_url == HOME_SERVICE else api_url
        logger.warning("local service (%s): %s", where, e)
        return api_url, explicit or resolve_token()
    return info.api_url, explicit or info.token or resolve_token()


async def control_token(
    provider: str, api_url: str, explicit: str | None = None, *, tolerant: bool = False
) -> str | None:
    """The control-plane token of `control_plane` (the local service is started if needed)."""
    return (await control_plane(provider, api_url, explicit, tolerant=tolerant))[1]


async def open_client(
    provider: str,
    api_url: str,
    explicit: str | None = None,
    *,
    namespace: str | None = None,
    retry: ControlRetryPolicy | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> tuple[EndpointsClient, str | None]:
    """A client of `control_plane(provider, api_url, explicit)`, and the token it sends.

    Args:
        provider: "hf" or "local".
        api_url: the API's base URL, or `HOME_SERVICE`.
        explicit: a token given by the caller; it wins.
        namespace: the client's default namespace (None: asked once, `whoami-v2`).
        retry: the client's retry policy (default: `EndpointsClient`'s).
        transport: an httpx transport (tests).

    Raises:
        APIConnectionError: the local service could not be started.
    """
    url, token = await control_plane(provider, api_url, explicit)
    client = EndpointsClient(
        api_url=url, token=token, namespace=namespace, transport=transport, retry=retry
    )
    return client, token
