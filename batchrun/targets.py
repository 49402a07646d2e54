"""Where a run's requests go: `Target`, its two kinds, the stop reasons, and `open_target`.

A `Target` is what the runner enters before the first request and leaves however the run
ends. Its whole interface is here, so the runner asks it, never probes it:

- `url` and `headers` for the data plane (set once `enter` returned);
- `stop_event`, set when the target wants dispatching to stop, with `stop_reason` and a
  one-line `stop_message`;
- `summary_fields()` for the run summary (`untouched_fields()` when the run never entered
  it: nothing to do, or refused first), `mark_idle()` when the last result is in,
  `cost_text()` for the progress bar, `watch_progress(progress)` to see the settled rows
  (the lease's deadline scaling);
- `enter()` (wake the endpoint and wait until it serves) and `leave(error)` (put it to rest).

`UrlTarget` (`provider = "url"`) fills the lifecycle with no-ops; for `hf` and `local`,
`open_target` wraps an `EndpointLease` (batchrun.lifecycle), which resumes or creates the
endpoint, meters its cost and puts it to rest on the way out.
"""

from __future__ import annotations

import asyncio
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING, Any

from batchrun.errors import JobError
from batchrun.job import Job, check_token

if TYPE_CHECKING:
    from batchrun.lifecycle.lease import EndpointLease

__all__ = ["StopReason", "Target", "UrlTarget", "open_target"]


class StopReason(StrEnum):
    """Why a run stopped before the end of its input; `exit_code` is the `batchrun run` exit."""

    BUDGET = "budget"
    DEADLINE = "deadline"
    SIGINT = "sigint"
    SIGTERM = "sigterm"
    ENDPOINT_FAILED = "endpoint_failed"
    OUTPUT_WRITE_FAILED = "output_write_failed"
    ENDPOINT_UNUSABLE = "endpoint_unusable"
    """Requests failed endpoint-wide (a bad token, unreachable, undecodable, a long outage)."""
    STALLED = "stalled"
    """Rows were pending with nothing in flight (a bug; exit 1)."""
    STOPPED = "stopped"
    """Stopped for a reason the target did not name."""

    @property
    def exit_code(self) -> int | None:
        """The exit code this stop gives (DESIGN.md, "Exit codes"); None: the rows decide."""
        return _EXIT_CODES.get(self)

    @classmethod
    def of(cls, reason: str | None) -> StopReason | None:
        """`reason` as a StopReason (an unknown one is `STOPPED`), None for None."""
        if reason is None:
            return None
        try:
            return cls(reason)
        except ValueError:
            return cls.STOPPED


_EXIT_CODES = {
    StopReason.BUDGET: 4,
    StopReason.DEADLINE: 4,
    StopReason.SIGINT: 130,
    StopReason.SIGTERM: 143,
    StopReason.ENDPOINT_FAILED: 5,
    StopReason.OUTPUT_WRITE_FAILED: 7,
    StopReason.ENDPOINT_UNUSABLE: 5,
    StopReason.STALLED: 1,
}


class Target(ABC):
    """Where requests go, and a way for the target to stop the run; see the module docstring.

    Use it as an async context manager (`enter` / `leave`), or call them. Subclasses set
    `url` and `headers` by the end of `enter`, and call `stop` to stop the run (then
    `stop_reason` and `stop_message` say why).

    Attributes:
        url: the endpoint's base URL for data-plane requests.
        headers: sent with every request (the Authorization header); never logged.
        stop_event: set when dispatching must stop.
    """

    def __init__(self, url: str = "", headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.headers = dict(headers or {})
        self.stop_event = asyncio.Event()
        self._stop_reason: StopReason | None = None
        self._stop_message: str | None = None

    @property
    def stop_reason(self) -> StopReason | None:
        """Why dispatching must stop, once `stop_event` is set."""
        return self._stop_reason

    @property
    def stop_message(self) -> str | None:
        """The stop in one line, if the target gave one."""
        return self._stop_message

    def __repr__(self) -> str:  # the headers may carry a token
        return f"{type(self).__name__}(url={self.url!r})"

    @abstractmethod
    async def enter(self) -> None:
        """Make the target ready to take requests (it may wait a long time)."""

    @abstractmethod
    async def leave(self, error: BaseException | None) -> None:
        """Release the target however the run ended (`error`: why, if it failed)."""

    def stop(self, reason: StopReason | str, message: str | None = None) -> None:
        """Ask the runner to stop dispatching; the first reason given wins."""
        if self._stop_reason is None:
            self._stop_reason = StopReason.of(reason)
            self._stop_message = message
        self.stop_event.set()

    def summary_fields(self) -> dict[str, Any]:
        """Fields copied into the `RunSummary` once the target was left (none by default)."""
        return {}

    def untouched_fields(self) -> dict[str, Any]:
        """Fields for the `RunSummary` of a run that never entered the target (nothing to do,
        or refused before): what it is, and that it cost nothing (none by default)."""
        return {}

    def mark_idle(self) -> None:
        """The runner has its last result: from here on, billed time is idle (a no-op here)."""
        return None

    def cost_text(self) -> str | None:
        """The cost so far for the progress bar, e.g. "$0.0123"; None: nothing is metered."""
        return None

    def watch_progress(self, progress: Callable[[], tuple[int, int | None]]) -> None:
        """The runner's counts, for a target that scales to them: `progress()` gives (rows
        settled by this run, rows left or None). A no-op here."""
        return None

    async def __aenter__(self) -> Target:
        await self.enter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.leave(exc)


class UrlTarget(Target):
    """The target for `provider = "url"`: a fixed URL, an optional Bearer token, no lifecycle."""

    async def enter(self) -> None:
        return None

    async def leave(self, error: BaseException | None) -> None:
        return None


class _LeaseTarget(Target):
    """An `EndpointLease` seen as a `Target` (the lifecycle sits below this layer)."""

    def __init__(self, lease: EndpointLease) -> None:
        super().__init__()
        self.lease = lease
        self.stop_event = lease.stop_event  # the lease's watchers set it

    def __repr__(self) -> str:
        return repr(self.lease)

    @property
    def stop_reason(self) -> StopReason | None:
        return StopReason.of(self.lease.stop_reason)

    @property
    def stop_message(self) -> str | None:
        return self.lease.stop_message

    def stop(self, reason: StopReason | str, message: str | None = None) -> None:
        self.lease.stop(str(reason), message or str(reason))

    async def enter(self) -> None:
        await self.lease.__aenter__()
        self.url = self.lease.url
        self.headers = self.lease.headers

    async def leave(self, error: BaseException | None) -> None:
        await self.lease.__aexit__(type(error) if error else None, error, None)

    def summary_fields(self) -> dict[str, Any]:
        return self.lease.summary_fields()

    def untouched_fields(self) -> dict[str, Any]:
        spec = self.lease.job.endpoint
        return {
            "endpoint": f"{spec.namespace}/{spec.name}" if spec.namespace else spec.name,
            "on_exit": spec.on_exit,
            "endpoint_state_at_exit": None,  # not even read: the run left it as it was
            "cost_usd": 0.0,
            "billed_s": 0.0,
            "idle_billed_s": 0.0,
        }

    def mark_idle(self) -> None:
        self.lease.mark_idle()

    def watch_progress(self, progress: Callable[[], tuple[int, int | None]]) -> None:
        self.lease.watch_progress(progress)

    def cost_text(self) -> str | None:
        cost = self.lease.meter.cost_usd()
        return "$?" if cost is None else f"${cost:.4f}"


def open_target(job: Job, *, progress: bool = False) -> Target:
    """The target for the job's `[endpoint]`.

    For `hf` and `local`: an `EndpointLease` guarded by a `LeaseGuard` (the lease file and the
    watchdog), showing its wait for the endpoint on a `progress.WaitingLine` when `progress`.

    Raises:
        JobError: `token_env` names an unset variable, or the token (`token_env`'s, or for `hf`
            the one `resolve_token` finds) is not one line.
    """
    ep = job.endpoint
    if ep.provider == "url":
        assert ep.url is not None  # Job.validate
        headers: dict[str, str] = {}
        if ep.token_env:
            token = os.environ.get(ep.token_env, "").strip()
            if not token:
                raise JobError(
                    f"{job.source}: [endpoint] token_env = {ep.token_env!r}, "
                    "but that environment variable is not set"
                )
            check_token(token, f"{job.source}: the token in ${ep.token_env}")
            headers["Authorization"] = f"Bearer {token}"
        return UrlTarget(ep.url, headers)
    from batchrun.endpoints.auth import resolve_token
    from batchrun.lifecycle.guard import LeaseGuard  # the control plane: hf / local only
    from batchrun.lifecycle.lease import EndpointLease
    from batchrun.progress import WaitingLine

    if ep.provider == "hf":
        try:  # a token that cannot be sent is refused before the run state is written
            resolve_token()
        except JobError as e:
            raise JobError(f"{job.source}: {e}") from e
    guard = LeaseGuard(watchdog=ep.watchdog)
    return _LeaseTarget(
        EndpointLease(job, guard=guard, waiting=WaitingLine() if progress else None)
    )
