"""batchrun: cost-limited batch inference jobs against inference endpoints."""

from __future__ import annotations

__version__ = "0.1.0"

from batchrun.endpoints import Endpoint, EndpointsClient
from batchrun.errors import BatchrunError, EndpointError, EndpointRestError, JobError
from batchrun.job import Job, load_job
from batchrun.runner import RunSummary, arun_job, run_job

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
