"""`LeaseGuard`: a run's mark in batchrun's home, and the watchdog that outlives a kill -9.

The guard does three things for an `EndpointLease`, at the points the lease calls it:

- `register` the lease in the home's registry (`registry`) once the endpoint's namespace is
  known, so `batchrun status` and `batchrun reap` see the run;
- `arm` before the endpoint is touched: note the state the run found, start the watchdog
  (`watchdog`), which applies `on_exit` if this process dies without saying "released";
- `leaving`: under the registry's lock, say whether another live lease holds the endpoint
  (then it stays up: the hand-over); then `release` (the endpoint is at rest or handed over:
  lease file and watchdog go) or `abandon` (`on_exit` failed: the file stays for
  `batchrun reap`, and the watchdog tries again at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from batchrun.errors import BatchrunError
from batchrun.job import Job
from batchrun.lifecycle.registry import HeldLease, LeaseRecord, LeaseRegistry
from batchrun.lifecycle.watchdog import Watchdog, WatchdogOrders

__all__ = ["LeaseGuard"]

logger = logging.getLogger(__name__)


class LeaseGuard:
    """Registers one lease, starts its watchdog, and releases (or abandons) both.

    Args:
        watchdog: start the kill -9 watchdog in `arm`.
        registry: the lease registry (default: the one in batchrun's home).

    Attributes:
        held: the registered lease, once `register` returned (None before).
    """

    def __init__(self, *, watchdog: bool = True, registry: LeaseRegistry | None = None) -> None:
        self.watchdog_wanted = watchdog
        self.registry = registry or LeaseRegistry()
        self.held: HeldLease | None = None
        self._watchdog: Watchdog | None = None

    def __repr__(self) -> str:
        return f"LeaseGuard({self.held!r}, watchdog={self._watchdog is not None})"

    async def register(self, job: Job, *, namespace: str, api_url: str) -> None:
        """Write this run's lease file (under the registry's lock) and hold its lock.

        Args:
            job: the job (its endpoint, provider, `on_exit` and output go in the file).
            namespace: the endpoint's namespace.
            api_url: the control plane as the job names it (`local` stays that word, so
                whoever reaps the lease finds this home's service again).
        """
        spec = job.endpoint
        assert spec.name is not None
        async with self.registry.alocked():
            self.held = self.registry.register(
                LeaseRecord(
                    id=self.registry.new_id(spec.name),
                    endpoint=spec.name,
                    namespace=namespace,
                    api_url=api_url,
                    provider=spec.provider,
                    on_exit=spec.on_exit,
                    output=job.output.path,
                )
            )

    async def arm(self, *, found_state: str, api_url: str, token: str | None) -> None:
        """Before the endpoint is touched: note what the run found, start the watchdog.

        A watchdog that does not start is a warning: `batchrun reap` still finds the lease.
        """
        held = self._held()
        held.update(found_state=found_state)
        if not self.watchdog_wanted:
            return
        record = held.record
        orders = WatchdogOrders(
            lease_id=record.id,
            registry_root=str(self.registry.root),
            api_url=api_url,
            namespace=record.namespace,
            name=record.endpoint,
            on_exit=record.on_exit,
            found_state=found_state,
            token=token,
        )
        try:
            self._watchdog = await asyncio.to_thread(Watchdog.start, orders)
        except BatchrunError as e:
            logger.warning("%s; `batchrun reap` still finds this run's lease if it dies", e)
            return
        held.update(watchdog_pid=self._watchdog.pid)

    @contextlib.asynccontextmanager
    async def leaving(self) -> AsyncIterator[bool]:
        """Hold the registry's lock while the endpoint is put to rest; yields whether this is
        the last live lease on it (False: another run holds it, so it stays up)."""
        held = self._held()
        async with self.registry.alocked():
            others = self.registry.live_on(held.record.key, exclude=held.record.id)
            if others:
                record = held.record
                logger.info(
                    "%s/%s stays up: still leased by pid %s",
                    record.namespace,
                    record.endpoint,
                    ", ".join(str(r.pid) for r in others),
                )
            yield not others

    async def release(self) -> None:
        """The endpoint is at rest or handed over: delete the lease, let the watchdog go."""
        if self.held is not None:
            self.held.release()
        if self._watchdog is not None:
            await asyncio.to_thread(self._watchdog.release)
            self._watchdog = None

    def abandon(self) -> bool:
        """`on_exit` failed: keep the lease file for `batchrun reap` and tell the watchdog to
        try again at once; whether a watchdog keeps trying."""
        if self.held is not None:
            self.held.abandon()
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is None:
            return False
        watchdog.abandon()
        return True

    def close(self) -> None:
        """However leaving went: a lease still held is released (its files deleted)."""
        if self.held is not None and self.held.held:
            self.held.release()

    def _held(self) -> HeldLease:
        if self.held is None:
            raise RuntimeError("LeaseGuard: register first")
        return self.held
