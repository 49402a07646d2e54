"""batchrun: cost-limited batch inference jobs against inference endpoints.

The public API is re-exported here and loaded lazily (PEP 562): `import batchrun` loads
nothing but this module and `batchrun._version`, so that a helper process (the watchdog, a
local worker) does not import the runner and aiohttp it never uses. Each name loads its module
on first use, e.g. `batchrun.run_job` loads `batchrun.runner`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from batchrun._version import __version__

if TYPE_CHECKING:
    from batchrun.endpoints.client import EndpointsClient
    from batchrun.endpoints.models import Endpoint
    from batchrun.errors import BatchrunError, EndpointError, EndpointRestError, JobError
    from batchrun.job import Job, load_job
    from batchrun.runner import arun_job, run_job
    from batchrun.summary import RunSummary

__all__ = [
    "BatchrunError",
    "Endpoint",
    "EndpointError",
    "EndpointRestError",
    "EndpointsClient",
    "Job",
    "JobError",
    "RunSummary",
    "__version__",
    "arun_job",
    "load_job",
    "run_job",
]

_HOMES = {
    "BatchrunError": "batchrun.errors",
    "Endpoint": "batchrun.endpoints.models",
    "EndpointError": "batchrun.errors",
    "EndpointRestError": "batchrun.errors",
    "EndpointsClient": "batchrun.endpoints.client",
    "Job": "batchrun.job",
    "JobError": "batchrun.errors",
    "RunSummary": "batchrun.summary",
    "arun_job": "batchrun.runner",
    "load_job": "batchrun.job",
    "run_job": "batchrun.runner",
}


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
