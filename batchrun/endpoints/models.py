"""What the Inference Endpoints API returns, as dataclasses: `Endpoint`, `EndpointState`, `Hardware`.

Parsing is lenient: the local service and older API versions leave out fields Hugging Face
sends, so every field but the name is optional and the server's JSON is kept whole in `raw`.
An `Endpoint` remembers the token it was fetched with (never shown in its repr) so that
`Endpoint.client` / `Endpoint.async_client` can call the deployed model.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import httpx

from batchrun.errors import EndpointNotDeployedError

__all__ = ["Endpoint", "EndpointState", "Hardware"]

logger = logging.getLogger(__name__)


class EndpointState(StrEnum):
    """The eight states of an Inference Endpoint, spelled as the API spells them."""

    PENDING = "pending"
    INITIALIZING = "initializing"
    UPDATING = "updating"
    UPDATE_FAILED = "updateFailed"
    RUNNING = "running"
    PAUSED = "paused"
    FAILED = "failed"
    SCALED_TO_ZERO = "scaledToZero"

    @property
    def bills(self) -> bool:
        """Whether Hugging Face bills an endpoint in this state (a replica is up or starting)."""
        return self in _BILLED

    @classmethod
    def parse(cls, value: Any) -> EndpointState:
        """The state for an API value; an unknown value counts as PENDING (still changing).

        Args:
            value: the ``status.state`` string from the API.
        """
        try:
            return cls(value)
        except ValueError:
            logger.warning("unknown endpoint state %r, treating it as pending", value)
            return cls.PENDING


_BILLED = frozenset(
    {
        EndpointState.PENDING,
        EndpointState.INITIALIZING,
        EndpointState.UPDATING,
        EndpointState.RUNNING,
    }
)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass(slots=True, kw_only=True, repr=False)
class Endpoint:
    """One Inference Endpoint as the API described it at `updated_at`.

    Attributes:
        name: the endpoint's name, unique in its namespace.
        namespace: the user or organization it belongs to.
        state: its state; `raw["status"]["state"]` keeps the server's exact spelling.
        url: where the deployed model answers, or None while it has no URL.
        type: "public", "authenticated" (the seed's "protected") or "private".
        health_route: the route `wait` probes on `url`, e.g. "/health".
        message: the server's status message (the reason, when failed).
        raw: the server's JSON, whole.
    """

    name: str
    namespace: str
    repository: str | None = None
    task: str | None = None
    framework: str | None = None
    revision: str | None = None
    state: EndpointState = EndpointState.PENDING
    url: str | None = None
    type: str | None = None
    health_route: str | None = None
    vendor: str | None = None
    region: str | None = None
    accelerator: str | None = None
    instance_type: str | None = None
    instance_size: str | None = None
    min_replica: int | None = None
    max_replica: int | None = None
    scale_to_zero_timeout: int | None = None
    ready_replica: int | None = None
    target_replica: int | None = None
    message: str | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _token: str | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_raw(cls, raw: dict[str, Any], namespace: str, *, token: str | None = None) -> Endpoint:
        """Build an Endpoint from the API's JSON for one endpoint.

        Args:
            raw: one endpoint as `GET /endpoint/{namespace}/{name}` returns it.
            namespace: the namespace it was read from (the JSON does not carry it).
            token: the token `client` / `async_client` send; kept out of every repr.
        """
        model = _dict(raw.get("model"))
        status = _dict(raw.get("status"))
        provider = _dict(raw.get("provider"))
        compute = _dict(raw.get("compute"))
        scaling = _dict(compute.get("scaling"))
        return cls(
            name=str(raw.get("name", "")),
            namespace=namespace,
            repository=_str(model.get("repository")),
            task=_str(model.get("task")),
            framework=_str(model.get("framework")),
            revision=_str(model.get("revision")),
            state=EndpointState.parse(status.get("state")),
            url=_str(status.get("url")) or None,
            type=_str(raw.get("type")),
            health_route=_str(raw.get("healthRoute")) or _custom_health_route(model),
            vendor=_str(provider.get("vendor")),
            region=_str(provider.get("region")),
            accelerator=_str(compute.get("accelerator")),
            instance_type=_str(compute.get("instanceType")),
            instance_size=_str(compute.get("instanceSize")),
            min_replica=_int(scaling.get("minReplica")),
            max_replica=_int(scaling.get("maxReplica")),
            scale_to_zero_timeout=_int(scaling.get("scaleToZeroTimeout")),
            ready_replica=_int(status.get("readyReplica")),
            target_replica=_int(status.get("targetReplica")),
            message=_str(status.get("message")),
            created_at=_time(status.get("createdAt")),
            updated_at=_time(status.get("updatedAt")),
            raw=raw,
            _token=token,
        )

    def __repr__(self) -> str:
        return (
            f"Endpoint(name={self.name!r}, namespace={self.namespace!r}, "
            f"repository={self.repository!r}, state={self.state_text!r}, url={self.url!r})"
        )

    @property
    def state_text(self) -> str:
        """The state exactly as the server spelled it (also for states this version does not know)."""
        return _str(_dict(self.raw.get("status")).get("state")) or self.state.value

    def _client_args(self) -> dict[str, Any]:
        if not self.url:
            raise EndpointNotDeployedError(
                f"endpoint {self.namespace}/{self.name} has no URL yet (state {self.state_text});"
                " wait for it to run first: `batchrun endpoints wait "
                f"{self.name} --namespace {self.namespace}` or `await client.wait(...)`"
            )
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        return {"base_url": self.url, "headers": headers, "timeout": httpx.Timeout(60.0)}

    @property
    def client(self) -> httpx.Client:
        """A new httpx client for ad-hoc calls to the deployed model (base URL and auth set).

        The caller closes it (`with endpoint.client as c: c.post("/", json=...)`).

        Raises:
            EndpointNotDeployedError: the endpoint has no URL yet.
        """
        return httpx.Client(**self._client_args())

    @property
    def async_client(self) -> httpx.AsyncClient:
        """A new async httpx client for ad-hoc calls to the deployed model (base URL and auth set).

        Raises:
            EndpointNotDeployedError: the endpoint has no URL yet.
        """
        return httpx.AsyncClient(**self._client_args())


def _custom_health_route(model: dict[str, Any]) -> str | None:
    custom = _dict(_dict(model.get("image")).get("custom"))
    return _str(custom.get("healthRoute")) or _str(custom.get("health_route"))


@dataclass(slots=True, kw_only=True)
class Hardware:
    """One compute option from `GET /provider/{namespace}`, with its price.

    `vendor`, `region`, `accelerator`, `instance_type` and `instance_size` are exactly what
    `EndpointsClient.create` takes. `price_per_hour` is USD per replica-hour.
    """

    vendor: str
    region: str
    accelerator: str
    instance_type: str
    instance_size: str
    price_per_hour: float
    id: str | None = None
    architecture: str | None = None
    num_accelerators: int | None = None
    num_gpus: int = 0
    num_cpus: int | None = None
    memory_gb: float | None = None
    gpu_memory_gb: float | None = None
    status: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_raw(cls, raw: dict[str, Any], *, vendor: str, region: str) -> Hardware:
        """Build a Hardware from one `computes[]` item nested under a vendor and a region.

        Args:
            raw: the compute's JSON.
            vendor: the enclosing vendor's name.
            region: the enclosing region's name.
        """
        accelerator = str(raw.get("accelerator", ""))
        num_accelerators = _int(raw.get("numAccelerators"))
        memory = raw.get("memoryGb")
        gpu_memory = raw.get("gpuMemoryGb")
        price = raw.get("pricePerHour")
        return cls(
            vendor=vendor,
            region=region,
            accelerator=accelerator,
            instance_type=str(raw.get("instanceType", "")),
            instance_size=str(raw.get("instanceSize", "")),
            price_per_hour=float(price) if isinstance(price, int | float) else 0.0,
            id=_str(raw.get("id")),
            architecture=_str(raw.get("architecture")),
            num_accelerators=num_accelerators,
            num_gpus=(num_accelerators or 0) if accelerator == "gpu" else 0,
            num_cpus=_int(raw.get("numCpus")),
            memory_gb=float(memory) if isinstance(memory, int | float) else None,
            gpu_memory_gb=float(gpu_memory) if isinstance(gpu_memory, int | float) else None,
            status=_str(raw.get("status")),
            raw=raw,
        )

    @classmethod
    def list_from_provider(cls, payload: Any) -> list[Hardware]:
        """Every compute of a `GET /provider/{namespace}` answer, flattened.

        Args:
            payload: the decoded JSON: ``{"vendors": [{"name", "regions": [{"name", "computes"}]}]}``.
        """
        out: list[Hardware] = []
        for vendor in _dict(payload).get("vendors") or []:
            vendor = _dict(vendor)
            for region in vendor.get("regions") or []:
                region = _dict(region)
                for compute in region.get("computes") or []:
                    out.append(
                        cls.from_raw(
                            _dict(compute),
                            vendor=str(vendor.get("name", "")),
                            region=str(region.get("name", "")),
                        )
                    )
        return out
