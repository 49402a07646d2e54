"""The local Inference Endpoints service (`batchrun serve`): the embedded default.

It speaks Hugging Face's Inference Endpoints REST API under `/v2` and runs each endpoint as
`max(minReplica, 1)` worker processes, its replicas, on one 127.0.0.1 port
(`batchrun.local.worker`; no load-driven autoscaling), with the echo model, MiniLM,
or a local transformers model directory (`batchrun.local.backends`). State lives in SQLite in
the state directory (`batchrun.local.store`); the state machine is `batchrun.local.supervisor`,
the HTTP API `batchrun.local.app`, and `ensure_service` (`batchrun.local.service`) finds or
starts the service a `provider = "local"` job talks to: its home's own, found through
its `service.json`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batchrun.local.app import run_service
    from batchrun.local.service import (
        DEFAULT_API_URL,
        LocalServiceInfo,
        default_state_dir,
        ensure_service,
        port_owner,
        service_status,
        stop_service,
    )

__all__ = [
    "DEFAULT_API_URL",
    "LocalServiceInfo",
    "default_state_dir",
    "ensure_service",
    "port_owner",
    "run_service",
    "service_status",
    "stop_service",
]

_HOMES = {
    "DEFAULT_API_URL": "service",
    "LocalServiceInfo": "service",
    "default_state_dir": "service",
    "ensure_service": "service",
    "port_owner": "service",
    "run_service": "app",
    "service_status": "service",
    "stop_service": "service",
}


def __getattr__(name: str) -> Any:
    """Load each name from its module on first use: a worker or a client of the service
    imports only the modules it needs (PEP 562)."""
    module = _HOMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
