"""The endpoints of the local service and their worker processes: the state machine.

Every operation (create, update, delete, pause, resume, scale to zero) runs under the
endpoint's lock, writes the new state to the store, and starts, commands or stops the
endpoint's worker. Workers report back over their stdout (see `batchrun.local.worker`);
their events move the state on:

```
create ─> pending ─(loading)─> initializing ─(ready)─> running ─(idle/scale-to-zero)─> scaledToZero
                                    └─(failed)─> failed              ▲       └─(request)─> initializing
update ─> updating ─(ready)─> running | (failed)─> updateFailed     │
pause ─> paused (worker stopped) ─ resume ─> pending ─> …          └─ a worker that exits unasked ─> failed
```
A command carries a sequence number and the worker echoes the last one it saw, so an event
sent before the latest command cannot undo it.

Replicas: a running endpoint has `max(minReplica, 1)` worker processes, its replicas, all
serving its one URL (they share the port with `SO_REUSEPORT`; see `batchrun.local.worker`
for how requests reach every replica). The count comes from `compute.scaling.minReplica`
only: the local service does no load-driven autoscaling, so `maxReplica` is stored and
shown but never acted on. `readyReplica` counts the replicas with the model loaded,
`targetReplica` the replicas the endpoint should have. An `update` that changes only
`minReplica`/`maxReplica` is applied live: the endpoint stays `running` on the replicas it
has while new ones load (readyReplica then catches up with targetReplica), and replicas no
longer wanted are drained (they finish their requests in flight, then exit). Any other
update restarts every replica (`updating`). Scaled to zero, an endpoint keeps one unloaded
worker listening on its URL; waking it loads that one and starts the others. A replica that
exits unasked, or fails to load, fails the whole endpoint (its other replicas are stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

import orjson

from batchrun.errors import APIClientError, ConflictError, NotFoundError
from batchrun.local.schema import config_from_create, config_from_update
from batchrun.local.store import EndpointRecord, EndpointStore, utc_now

__all__ = ["Supervisor", "WorkerHandle"]

logger = logging.getLogger(__name__)

_ACTIVE = frozenset({"pending", "initializing", "running", "updating"})
_STOP_TIMEOUT = 5.0
_DRAIN_TIMEOUT = 90.0  # past the worker's own DRAIN_TIMEOUT_S


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class WorkerHandle:
    """One worker process and the link to it."""

    def __init__(
        self, key: tuple[str, str], proc: asyncio.subprocess.Process, *, updating: bool
    ) -> None:
        self.key = key
        self.proc = proc
        self.updating = updating
        self.seq = 0
        self.expected_exit = False
        self.loaded = False
        self.draining = False
        self.listening = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and not self.expected_exit

    async def command(self, cmd: str) -> None:
        self.seq += 1
        stdin = self.proc.stdin
        if stdin is None or stdin.is_closing():
            return
        stdin.write(orjson.dumps({"cmd": cmd, "seq": self.seq}) + b"\n")
        with contextlib.suppress(ConnectionError):
            await stdin.drain()

    async def stop(self) -> None:
        """Stop the process and wait for it (SIGTERM, then SIGKILL)."""
        self.expected_exit = True
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), _STOP_TIMEOUT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


class Supervisor:
    """Endpoints, their states and their replicas' workers, for one state directory.

    Args:
        store: where endpoints live.
        token: the service token; workers of non-public endpoints require it.
        minute: seconds in a service "minute" (`scaleToZeroTimeout` is in minutes).
        models_dir: where local model directories are looked for by repository name.
    """

    def __init__(
        self, store: EndpointStore, *, token: str | None, minute: float, models_dir: Path
    ) -> None:
        self.store = store
        self.token = token
        self.minute = minute
        self.models_dir = models_dir
        self.workers: dict[tuple[str, str], list[WorkerHandle]] = {}
        self.draining: set[WorkerHandle] = set()
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def lock(self, key: tuple[str, str]) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    # -- reading ----------------------------------------------------------------------

    def get(self, namespace: str, name: str) -> EndpointRecord:
        """Raises: NotFoundError: no such endpoint."""
        rec = self.store.get(namespace, name)
        if rec is None:
            raise NotFoundError(
                f"Endpoint '{name}' not found in namespace '{namespace}'", status=404
            )
        return rec

    def active_count(self) -> int:
        return sum(1 for r in self.store.list() if r.state in _ACTIVE)

    def worker_pids(self) -> list[int]:
        handles = [h for group in self.workers.values() for h in group] + list(self.draining)
        return [h.pid for h in handles if h.proc.returncode is None]

    def replicas(self, rec: EndpointRecord) -> tuple[int, int]:
        """(readyReplica, targetReplica) as the API shows them."""
        group = self.workers.get(rec.key, [])
        ready = sum(1 for h in group if h.loaded and h.alive)
        target = _wanted(rec) if rec.state in _ACTIVE else 0
        return (ready if rec.state in ("running", "updating", "initializing") else 0), target

    # -- operations --------------------------------------------------------------------

    async def create(self, namespace: str, body: Any) -> EndpointRecord:
        """Raises: UnprocessableError: a bad body. ConflictError: the name is taken."""
        config = config_from_create(body)
        now = utc_now()
        rec = EndpointRecord(
            namespace=namespace,
            name=config["name"],
            config=config,
            state="pending",
            message="Endpoint is pending",
            port=_free_port(),
            created_at=now,
            updated_at=now,
        )
        async with self.lock(rec.key):
            if not self.store.insert(rec):
                raise ConflictError(
                    f"Endpoint '{rec.name}' already exists in namespace '{namespace}'", status=409
                )
            await self._spawn(rec, load=True)
        return rec

    async def update(self, namespace: str, name: str, body: Any) -> EndpointRecord:
        """Raises: NotFoundError, UnprocessableError."""
        async with self.lock((namespace, name)):
            rec = self.get(namespace, name)
            old = rec.config
            rec.config = config_from_update(rec.config, body)
            if rec.state in ("running", "initializing") and self._only_replicas_changed(
                old, rec.config
            ):
                self.store.save(rec)
                await self._rescale(rec)
                return rec
            await self._stop_worker(rec.key)
            if rec.state == "paused":
                self.store.save(rec)  # takes effect at the next resume
            else:
                self._set(rec, "updating", "Endpoint is updating")
                await self._spawn(rec, load=True, updating=True)
            return rec

    async def delete(self, namespace: str, name: str) -> None:
        """Raises: NotFoundError."""
        async with self.lock((namespace, name)):
            self.get(namespace, name)
            await self._stop_worker((namespace, name))
            self.store.delete(namespace, name)

    async def pause(self, namespace: str, name: str) -> EndpointRecord:
        """Raises: NotFoundError."""
        async with self.lock((namespace, name)):
            rec = self.get(namespace, name)
            await self._stop_worker(rec.key)
            self._set(rec, "paused", "Endpoint is paused")
            return rec

    async def resume(self, namespace: str, name: str) -> EndpointRecord:
        """Raises: NotFoundError. APIClientError: 400, the endpoint is already running."""
        async with self.lock((namespace, name)):
            rec = self.get(namespace, name)
            if rec.state == "running":
                raise APIClientError(f"Endpoint '{name}' is already running", status=400)
            if rec.state in ("pending", "initializing", "updating"):
                return rec
            group = self._live(rec.key)
            if rec.state == "scaledToZero" and len(group) == 1:
                await group[0].command("load")
                self._set(rec, "initializing", "Endpoint is initializing")
                await self._rescale(rec)
                return rec
            await self._stop_worker(rec.key)
            self._set(rec, "pending", "Endpoint is pending")
            await self._spawn(rec, load=True)
            return rec

    async def scale_to_zero(self, namespace: str, name: str) -> EndpointRecord:
        """Raises: NotFoundError."""
        async with self.lock((namespace, name)):
            rec = self.get(namespace, name)
            group = self._live(rec.key)
            if group:
                for extra in group[1:]:
                    await self._drain(rec.key, extra)
                await group[0].command("unload")
                group[0].updating = False
                self._set(rec, "scaledToZero", "Endpoint is scaled to zero")
            else:
                await self._stop_worker(rec.key)
                self._set(rec, "scaledToZero", "Endpoint is scaled to zero")
                await self._spawn(rec, load=False)
            return rec

    async def recover(self) -> None:
        """After a (re)start: bring back the workers the stored states say should exist."""
        for rec in self.store.list():
            async with self.lock(rec.key):
                if rec.state in ("pending", "initializing", "running"):
                    self._set(rec, "pending", "Endpoint is pending (the service restarted)")
                    await self._spawn(rec, load=True)
                elif rec.state == "updating":
                    await self._spawn(rec, load=True, updating=True)
                elif rec.state == "scaledToZero":
                    await self._spawn(rec, load=False)

    async def shutdown(self) -> None:
        """Stop every worker; stored states stay as they are, for the next start."""
        handles = [h for group in self.workers.values() for h in group] + list(self.draining)
        await asyncio.gather(*(h.stop() for h in handles))
        self.workers.clear()
        self.draining.clear()
        for task in list(self._tasks):
            task.cancel()

    # -- replicas ----------------------------------------------------------------------

    @staticmethod
    def _only_replicas_changed(old: dict[str, Any], new: dict[str, Any]) -> bool:
        """True when the workers would run the same: only the replica count (or other scaling
        settings the local service does not act on) changed."""

        def rest(cfg: dict[str, Any]) -> dict[str, Any]:
            out = copy.deepcopy(cfg)
            scaling = out["compute"]["scaling"]
            idle = scaling.get("scaleToZeroTimeout") if scaling.get("minReplica") == 0 else None
            out["compute"]["scaling"] = {"scaleToZeroTimeout": idle}
            return out

        return rest(old) == rest(new)

    def _live(self, key: tuple[str, str]) -> list[WorkerHandle]:
        return [h for h in self.workers.get(key, []) if h.alive]

    async def _rescale(self, rec: EndpointRecord) -> None:
        """Start or drain replicas until the endpoint has the count its scaling asks for."""
        group = self._live(rec.key)
        wanted = _wanted(rec)
        if len(group) < wanted:
            logger.info(
                "endpoint %s/%s: %d -> %d replicas", rec.namespace, rec.name, len(group), wanted
            )
            for _ in range(wanted - len(group)):
                await self._spawn_one(rec, load=True, replica=len(self.workers.get(rec.key, [])))
        elif len(group) > wanted:
            logger.info(
                "endpoint %s/%s: %d -> %d replicas", rec.namespace, rec.name, len(group), wanted
            )
            # the ones still loading go first, then the newest
            victims = sorted(group, key=lambda h: (h.loaded, -group.index(h)))[
                : len(group) - wanted
            ]
            for handle in victims:
                await self._drain(rec.key, handle)

    async def _drain(self, key: tuple[str, str], handle: WorkerHandle) -> None:
        group = self.workers.get(key, [])
        if handle in group:
            group.remove(handle)
        handle.expected_exit = True
        handle.draining = True
        self.draining.add(handle)
        await handle.command("drain")
        task = asyncio.get_running_loop().create_task(self._reap_drained(handle))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reap_drained(self, handle: WorkerHandle) -> None:
        try:
            await asyncio.wait_for(handle.proc.wait(), _DRAIN_TIMEOUT)
        except TimeoutError:
            logger.warning(
                "worker %d did not drain in %gs: stopping it", handle.pid, _DRAIN_TIMEOUT
            )
        await handle.stop()
        self.draining.discard(handle)

    def _fail_others(self, handle: WorkerHandle) -> None:
        """One replica failed: the endpoint failed, stop its other replicas."""
        others = [h for h in self.workers.get(handle.key, []) if h is not handle]
        self.workers[handle.key] = [handle] if handle.proc.returncode is None else []
        for other in others:
            other.expected_exit = True
            task = asyncio.get_running_loop().create_task(other.stop())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # -- workers -----------------------------------------------------------------------

    def _set(self, rec: EndpointRecord, state: str, message: str) -> None:
        if rec.state != state:
            logger.info("endpoint %s/%s: %s -> %s", rec.namespace, rec.name, rec.state, state)
        rec.state = state
        rec.message = message
        self.store.save(rec)

    async def _stop_worker(self, key: tuple[str, str]) -> None:
        group = self.workers.pop(key, [])
        if group:
            await asyncio.gather(*(h.stop() for h in group))

    def _worker_config(self, rec: EndpointRecord, *, load: bool) -> dict[str, Any]:
        cfg = rec.config
        model = cfg["model"]
        env: dict[str, str] = {}
        for variant in model.get("image", {}).values():
            if isinstance(variant, dict) and isinstance(variant.get("env"), dict):
                env.update({str(k): str(v) for k, v in variant["env"].items()})
        env.update(model.get("env") or {})
        scaling = cfg["compute"]["scaling"]
        idle_s = None
        if scaling.get("minReplica") == 0 and scaling.get("scaleToZeroTimeout"):
            idle_s = float(scaling["scaleToZeroTimeout"]) * self.minute
        return {
            "namespace": rec.namespace,
            "name": rec.name,
            "repository": model["repository"],
            "task": model["task"],
            "revision": model.get("revision"),
            "env": env,
            "type": cfg["type"],
            "token": self.token,
            "port": rec.port,
            "health_route": cfg.get("healthRoute", "/health"),
            "idle_s": idle_s,
            "load": load,
            "models_dir": str(self.models_dir),
        }

    async def _spawn(self, rec: EndpointRecord, *, load: bool, updating: bool = False) -> None:
        """Start the endpoint's replicas (one, unloaded, when `load` is False)."""
        if rec.port is None or not _port_free(rec.port):
            rec.port = _free_port()  # a fresh group takes its port back only when it is free
            self.store.save(rec)
        count = _wanted(rec) if load else 1
        for replica in range(count):
            await self._spawn_one(rec, load=load, updating=updating, replica=replica)
        handle = self.workers[rec.key][0]
        if not load:
            # A scaled-to-zero endpoint shows its URL at once: have something answer there first.
            assert handle.task is not None
            listening = asyncio.ensure_future(handle.listening.wait())
            await asyncio.wait(
                {listening, handle.task}, timeout=30, return_when=asyncio.FIRST_COMPLETED
            )
            listening.cancel()

    async def _spawn_one(
        self, rec: EndpointRecord, *, load: bool, replica: int, updating: bool = False
    ) -> WorkerHandle:
        env = {k: v for k, v in os.environ.items() if k != "BATCHRUN_SERVE_TOKEN"}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "batchrun.local.worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        assert proc.stdin is not None
        config = self._worker_config(rec, load=load)
        config["replica"] = replica
        proc.stdin.write(orjson.dumps(config) + b"\n")
        await proc.stdin.drain()
        handle = WorkerHandle(rec.key, proc, updating=updating)
        self.workers.setdefault(rec.key, []).append(handle)
        handle.task = asyncio.get_running_loop().create_task(self._pump(handle))
        logger.info(
            "endpoint %s/%s: replica %d worker pid %d", rec.namespace, rec.name, replica, proc.pid
        )
        return handle

    async def _pump(self, handle: WorkerHandle) -> None:
        stdout = handle.proc.stdout
        assert stdout is not None
        while True:
            line = await stdout.readline()
            if not line:
                break
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                logger.warning("worker %d: unreadable event %r", handle.pid, line[:200])
                continue
            self._on_event(handle, event)
        code = await handle.proc.wait()
        handle.listening.set()
        self._on_exit(handle, code)

    def _current(self, handle: WorkerHandle) -> EndpointRecord | None:
        if handle not in self.workers.get(handle.key, []):
            return None
        return self.store.get(*handle.key)

    def _on_event(self, handle: WorkerHandle, event: dict[str, Any]) -> None:
        rec = self._current(handle)
        if rec is None:
            return
        kind = event.get("event")
        stale = int(event.get("seq", 0)) < handle.seq
        if kind == "listening":
            handle.listening.set()
            port = int(event["port"])
            if port != rec.port:
                rec.port = port
                self.store.save(rec)
        elif kind == "failed":
            handle.expected_exit = True
            state = "updateFailed" if handle.updating else "failed"
            self._set(rec, state, str(event.get("message") or "the model failed to load"))
            self._fail_others(handle)
        elif stale:
            return
        elif kind == "loading":
            if rec.state not in ("updating", "initializing", "running"):
                self._set(rec, "initializing", "Endpoint is initializing")
        elif kind == "ready":
            handle.updating = False
            handle.loaded = True
            if rec.state != "running":
                self._set(rec, "running", "Endpoint is ready")
        elif kind == "unloaded":
            handle.loaded = False
            if any(h.loaded for h in self._live(rec.key)):
                return
            if event.get("reason") == "idle":
                minutes = rec.config["compute"]["scaling"].get("scaleToZeroTimeout")
                message = f"Endpoint scaled to zero after {minutes} minutes without requests"
            else:
                message = "Endpoint is scaled to zero"
            self._set(rec, "scaledToZero", message)

    def _on_exit(self, handle: WorkerHandle, code: int) -> None:
        rec = self._current(handle)
        if rec is None:
            return
        group = self.workers.get(handle.key, [])
        group.remove(handle)
        if not group:
            self.workers.pop(handle.key, None)
        if not handle.expected_exit:
            logger.warning(
                "endpoint %s/%s: worker %d exited with code %d",
                rec.namespace,
                rec.name,
                handle.pid,
                code,
            )
            self._set(
                rec,
                "failed",
                f"The endpoint's worker process exited unexpectedly (exit code {code})",
            )
            self._fail_others(handle)


def _wanted(rec: EndpointRecord) -> int:
    """The replicas an endpoint runs: `max(minReplica, 1)` (no load-driven autoscaling)."""
    return max(int(rec.config["compute"]["scaling"].get("minReplica") or 0), 1)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
