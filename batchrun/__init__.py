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
    from batchrun.budget import Budget, CostMeter
    from batchrun.endpoints.client import EndpointsClient
    from batchrun.endpoints.models import Endpoint
    from batchrun.errors import (
        APIConnectionError,
        BatchrunError,
        EndpointDriftError,
        EndpointError,
        EndpointFailedError,
        EndpointRestError,
        EndpointTimeoutError,
        InputError,
        JobError,
        OutputWriteError,
        RunLockedError,
        RunningLoopError,
        RunStateError,
    )
    from batchrun.job import Job, load_job
    from batchrun.lifecycle.lease import EndpointLease
    from batchrun.runner import RunControl, arun_job, run_job
    from batchrun.summary import RunSummary

__all__ = [
    "APIConnectionError",
    "BatchrunError",
    "Budget",
    "CostMeter",
    "Endpoint",
    "EndpointDriftError",
    "EndpointError",
    "EndpointFailedError",
    "EndpointLease",
    "EndpointRestError",
    "EndpointTimeoutError",
    "EndpointsClient",
    "InputError",
    "Job",
    "JobError",
    "OutputWriteError",
    "RunControl",
    "RunLockedError",
    "RunStateError",
    "RunSummary",
    "RunningLoopError",
    "__version__",
    "arun_job",
    "load_job",
    "run_job",
]

_HOMES = {
    "APIConnectionError": "batchrun.errors",
    "BatchrunError": "batchrun.errors",
    "Budget": "batchrun.budget",
    "CostMeter": "batchrun.budget",
    "Endpoint": "batchrun.endpoints.models",
    "EndpointDriftError": "batchrun.errors",
    "EndpointError": "batchrun.errors",
    "EndpointFailedError": "batchrun.errors",
    "EndpointLease": "batchrun.lifecycle.lease",
    "EndpointRestError": "batchrun.errors",
    "EndpointTimeoutError": "batchrun.errors",
    "EndpointsClient": "batchrun.endpoints.client",
    "InputError": "batchrun.errors",
    "Job": "batchrun.job",
    "JobError": "batchrun.errors",
    "OutputWriteError": "batchrun.errors",
    "RunControl": "batchrun.runner",
    "RunLockedError": "batchrun.errors",
    "RunStateError": "batchrun.errors",
    "RunSummary": "batchrun.summary",
    "RunningLoopError": "batchrun.errors",
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
