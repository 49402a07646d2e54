"""The Ray executor (`[run] executor = "ray"`, extra `batchrun[ray]`): one Ray task per shard.

A task runs what a local worker runs for a shard (`arun_job` over a `ShardReader` against a
`UrlTarget` from the driver's lease); Ray schedules shards, never rows. A small control actor
holds the stop (reason and grace) and the shared Retry-After hold: each task reads it every
250 ms and tells it its own holds, so a stop or a hold reaches every shard. When the driver
dies its actor goes with it, and a task that cannot read the actor stops at once. A task
killed mid-shard is retried by Ray and resumes from its shard's own watermark.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from batchrun.errors import BatchrunError, JobError
from batchrun.io.readers import open_input
from batchrun.shards.plan import Shard, ShardReader
from batchrun.shards.worker import decode_job, shard_job
from batchrun.summary import RunSummary, one_line

__all__ = ["POLL_S", "RayCluster"]

POLL_S = 0.25
"""How often a task reads the control actor."""


class RayCluster:
    """A connection to Ray for one run: a local cluster of `workers + 1` CPUs on 127.0.0.1,
    or the cluster at `address`; the control actor and the shard task.

    Raises:
        JobError: Ray is not installed (`pip install 'batchrun[ray]'`).
    """

    def __init__(self, workers: int, address: str | None) -> None:
        try:
            import ray
        except ImportError as e:
            raise JobError('[run] executor = "ray" needs Ray: pip install "batchrun[ray]"') from e
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        self.ray: Any = ray
        # stdout carries the run's JSON summary only: whatever Ray prints goes to stderr
        sys.stdout.flush()
        self._stdout = os.dup(1)
        os.dup2(2, 1)
        try:
            _init(ray, workers, address)
        except BaseException:
            os.dup2(self._stdout, 1)
            os.close(self._stdout)
            raise
        remote: Any = ray.remote
        self.control: Any = remote(num_cpus=0)(_Control).remote()
        self.task: Any = remote(num_cpus=1, max_retries=3)(run_shard)

    def submit(self, job_text: str, url: str, headers: dict[str, str], shard: Shard) -> Any:
        return self.task.remote(job_text, url, headers, shard.to_json(), self.control)

    def stop(self, reason: str, grace: float) -> None:
        self.control.set_stop.remote(reason, grace)

    def close(self) -> None:
        try:
            self.ray.shutdown()
        finally:
            sys.stdout.flush()
            os.dup2(self._stdout, 1)
            os.close(self._stdout)


def _init(ray: Any, workers: int, address: str | None) -> None:
    """Join the cluster at `address`, or start a local one of `workers + 1` CPUs on 127.0.0.1.

    Raises:
        JobError: the cluster at `address` cannot be reached.
    """
    if address:
        local = address.split(":")[0] in ("127.0.0.1", "localhost")
        try:  # on loopback, the driver's node address too (Ray would pick the host's)
            ray.init(
                address=address,
                log_to_driver=False,
                _node_ip_address="127.0.0.1" if local else None,
            )
        except ConnectionError as e:
            raise JobError(f"cannot join the Ray cluster at {address}: {e}") from e
    else:
        ray.init(
            num_cpus=workers + 1,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
        )


class _Control:
    """The actor: the stop every shard obeys and the hold every shard waits for."""

    def __init__(self) -> None:
        self.stop: tuple[str, float] | None = None
        self.hold_until = 0.0

    def set_stop(self, reason: str, grace: float) -> None:
        if self.stop is None or grace < self.stop[1]:
            self.stop = (self.stop[0] if self.stop else reason, grace)

    def hold(self, until: float) -> None:
        self.hold_until = max(self.hold_until, until)

    def poll(self) -> tuple[tuple[str, float] | None, float]:
        return self.stop, self.hold_until


def run_shard(
    job_text: str, url: str, headers: dict[str, str], shard_json: dict[str, Any], control: Any
) -> dict[str, Any]:
    """The Ray task: run one shard; the same message a local worker sends for it."""
    return asyncio.run(_run_shard(job_text, url, headers, Shard.from_json(shard_json), control))


async def _run_shard(
    job_text: str, url: str, headers: dict[str, str], shard: Shard, control: Any
) -> dict[str, Any]:
    import ray

    from batchrun.runner import RunControl, arun_job
    from batchrun.targets import UrlTarget

    job = decode_job(job_text)
    run_control = RunControl()
    run_control.on_hold = lambda seconds: control.hold.remote(time.time() + seconds)

    async def poll() -> None:
        held = 0.0
        while True:
            try:
                stop, until = await control.poll.remote()
            except ray.exceptions.RayError:  # the actor is gone with its driver
                run_control.stop("stopped", grace=0)
                return
            if stop is not None:
                run_control.stop(stop[0], grace=stop[1])
            now = time.time()
            if until > held and until > now:
                held = until
                run_control.hold(until - now)
            await asyncio.sleep(POLL_S)

    poller = asyncio.ensure_future(poll())
    base = open_input(job.input, limit=job.run.limit, source=job.source)
    try:
        summary = await arun_job(
            shard_job(job, shard.index),
            progress=False,
            control=run_control,
            target=UrlTarget(url, headers),
            reader=ShardReader(base, shard),
        )
    except BatchrunError as e:
        part = e.summary if isinstance(e.summary, RunSummary) else None
        return {
            "failed": shard.index,
            "error": one_line(e),
            "exit_code": e.exit_code,
            "summary": part.to_json() if part is not None else None,
        }
    finally:
        poller.cancel()
    kind = "done" if summary.stop_reason is None else "stopped"
    return {kind: shard.index, "summary": summary.to_json()}
