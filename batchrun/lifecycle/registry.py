"""The registry of live leases: which runs hold which endpoints, in `batchrun_home()/"leases"`.

Each lease is two files: `<id>.json` (what `batchrun status` and `batchrun reap` read: the
endpoint, its namespace and API, the runner's pid, `on_exit`, when it started, what the run
found) and `<id>.lock`, on which the runner holds an exclusive `flock` for as long as it lives.
The kernel drops that lock however the runner dies, so *a lease is live exactly while its lock
is held*; no pid can be reused into a false positive. A watchdog or `batchrun reap` that takes
the lock of a dead lease has claimed it: nobody else will apply its `on_exit` twice.

The registry's own lock (`.registry.lock`) serializes "register a lease" against "see no other
live lease on this endpoint, then put it to rest", so one run never pauses an endpoint that
another has just leased. The token never reaches these files.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from batchrun.home import batchrun_home

__all__ = ["HeldLease", "LeaseRecord", "LeaseRegistry"]

logger = logging.getLogger(__name__)


@dataclass(slots=True, kw_only=True)
class LeaseRecord:
    """What a lease file says. No token, ever.

    Attributes:
        id: the lease's id (its file names).
        endpoint: the endpoint's name.
        namespace: its namespace.
        api_url: the control plane it lives on.
        provider: "hf" or "local".
        pid: the runner's process id.
        on_exit: what to do with the endpoint when the run ends.
        started: when the lease was taken (ISO 8601, UTC).
        found_state: the state the run found the endpoint in ("missing" when it created it);
            `on_exit = "restore"` puts this back.
        output: the run's output path, if known.
        watchdog_pid: the watchdog's pid, when one watches this lease.
        meter: the cost meter's last reading (`cost_usd`, `billed_s`, `idle_billed_s`).
        own_scaling: the endpoint's own `min_replica` / `max_replica`, noted before the run
            first changed them (`[run] scale = "deadline"`); whoever puts the endpoint to rest
            puts them back first.
        scaled_to: the `min_replica` / `max_replica` the run last asked for (so a rerun
            after a kill knows them for the run's own, not drift).
    """

    id: str
    endpoint: str
    namespace: str
    api_url: str
    provider: str = "hf"
    pid: int = field(default_factory=os.getpid)
    on_exit: str = "pause"
    started: str = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    )
    found_state: str | None = None
    output: str | None = None
    watchdog_pid: int | None = None
    meter: dict[str, Any] = field(default_factory=dict)
    own_scaling: dict[str, int] | None = None
    scaled_to: dict[str, int] | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        """What identifies the endpoint across leases: (api_url, namespace, name)."""
        return (self.api_url.rstrip("/"), self.namespace, self.endpoint)

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-ready data."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LeaseRecord:
        """A record from a lease file's data; unknown keys (a newer batchrun) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class HeldLease:
    """A lease whose lock this process holds: a live run's, or a dead one's claimed by a reaper."""

    def __init__(self, registry: LeaseRegistry, record: LeaseRecord, lock_fd: int) -> None:
        self.registry = registry
        self.record = record
        self._lock_fd: int | None = lock_fd

    @property
    def held(self) -> bool:
        """Whether the lock is still held (False after `release`)."""
        return self._lock_fd is not None

    def update(self, **changes: Any) -> None:
        """Change fields of the record and rewrite its file atomically."""
        for key, value in changes.items():
            setattr(self.record, key, value)
        self.registry._write(self.record)

    def release(self) -> None:
        """Delete the lease's files, then drop the lock. Idempotent."""
        if self._lock_fd is None:
            return
        for path in (
            self.registry.json_path(self.record.id),
            self.registry.lock_path(self.record.id),
        ):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        os.close(self._lock_fd)
        self._lock_fd = None

    def abandon(self) -> None:
        """Drop the lock but keep the files: the lease is dead, and `batchrun reap` will find it."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __repr__(self) -> str:
        return f"HeldLease({self.record.id!r}, endpoint={self.record.endpoint!r})"


class LeaseRegistry:
    """The lease files under one directory (default `batchrun_home()/"leases"`)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else batchrun_home() / "leases"
        self.root.mkdir(parents=True, exist_ok=True)

    def json_path(self, lease_id: str) -> Path:
        return self.root / f"{lease_id}.json"

    def lock_path(self, lease_id: str) -> Path:
        return self.root / f"{lease_id}.lock"

    # -- the registry lock ------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the registry lock (blocking): register, or check-then-rest, atomically."""
        fd = self._lock_registry()
        try:
            yield
        finally:
            os.close(fd)  # closing drops the flock

    @contextlib.asynccontextmanager
    async def alocked(self) -> AsyncIterator[None]:
        """`locked()` for async code: waits for the lock in a thread, not in the event loop."""
        waiting = asyncio.ensure_future(asyncio.to_thread(self._lock_registry))
        try:
            fd = await asyncio.shield(waiting)
        except asyncio.CancelledError:
            # the thread still gets the lock; drop it as soon as it does
            waiting.add_done_callback(_close_when_locked)
            raise
        try:
            yield
        finally:
            os.close(fd)

    def _lock_registry(self) -> int:
        fd = os.open(self.root / ".registry.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    # -- leases -----------------------------------------------------------------------------

    def new_id(self, endpoint: str) -> str:
        """A fresh lease id naming the endpoint, e.g. `my-endpoint-4242-9f1c2a3b`."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in endpoint)[:60]
        return f"{safe}-{os.getpid()}-{secrets.token_hex(4)}"

    def register(self, record: LeaseRecord) -> HeldLease:
        """Create a lease and lock it for this process. Call it under `locked()`."""
        fd = os.open(self.lock_path(record.id), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._write(record)
        logger.debug("lease %s registered for %s/%s", record.id, record.namespace, record.endpoint)
        return HeldLease(self, record, fd)

    def records(self) -> list[LeaseRecord]:
        """Every lease on disk, live or dead, oldest first."""
        out: list[LeaseRecord] = []
        for path in sorted(self.root.glob("*.json")):
            record = self.read(path.stem)
            if record is not None:
                out.append(record)
        out.sort(key=lambda r: r.started)
        return out

    def read(self, lease_id: str) -> LeaseRecord | None:
        """One lease's record, or None if its file is gone or unreadable."""
        try:
            data = json.loads(self.json_path(lease_id).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            logger.warning("unreadable lease file %s: %s", self.json_path(lease_id), e)
            return None
        if not isinstance(data, dict):
            return None
        try:
            return LeaseRecord.from_json(data)
        except TypeError as e:
            logger.warning("lease file %s: %s", self.json_path(lease_id), e)
            return None

    def is_live(self, lease_id: str) -> bool:
        """Whether someone holds the lease's lock (its runner, or a reaper working on it)."""
        try:
            fd = os.open(self.lock_path(lease_id), os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def live_on(
        self, key: tuple[str, str, str], *, exclude: str | None = None
    ) -> list[LeaseRecord]:
        """The live leases on one endpoint, but `exclude`."""
        return [
            r for r in self.records() if r.key == key and r.id != exclude and self.is_live(r.id)
        ]

    def claim(self, lease_id: str) -> HeldLease | None:
        """Take the lock of a dead lease, to put its endpoint to rest; None if it is live or gone."""
        try:
            fd = os.open(self.lock_path(lease_id), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        record = self.read(lease_id)
        if record is None:  # someone finished with it in between
            with contextlib.suppress(FileNotFoundError):
                self.lock_path(lease_id).unlink()
            os.close(fd)
            return None
        return HeldLease(self, record, fd)

    def _write(self, record: LeaseRecord) -> None:
        path = self.json_path(record.id)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record.to_json(), indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)


def _close_when_locked(future: asyncio.Future[int]) -> None:
    if not future.cancelled() and future.exception() is None:
        os.close(future.result())
