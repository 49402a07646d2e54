"""The local service's control plane: Hugging Face's Inference Endpoints REST API over HTTP.

Routes (JSON as Hugging Face shapes it; errors as `{"error": "..."}` with its status codes):

| route | |
| --- | --- |
| `GET /api/whoami-v2` | the user (namespace) the service acts as |
| `GET/POST /v2/endpoint/{ns}` | list (`{"items": [...]}`), create |
| `GET/PUT/DELETE /v2/endpoint/{ns}/{name}` | get, update (only the keys given), delete |
| `POST /v2/endpoint/{ns}/{name}/pause` · `/resume` · `/scale-to-zero` | lifecycle |
| `GET /v2/provider/{ns}` | hardware with list prices, marked simulated |
| `GET /batchrun/status` | the service itself (no token needed): pid, version, workers |

With a token, every route but `/batchrun/status` needs `Authorization: Bearer TOKEN` (401
otherwise). `run_service` runs it in the foreground until SIGTERM/SIGINT or, with
`idle_exit`, until nothing happened for that long.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hmac
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from batchrun._version import __version__
from batchrun.errors import APIError, BatchrunError, UnprocessableError
from batchrun.local.schema import hardware_catalogue, render
from batchrun.local.store import EndpointStore, utc_now
from batchrun.local.supervisor import Supervisor

__all__ = ["ControlPlane", "run_service"]

logger = logging.getLogger(__name__)

LOCAL_USER = "local"
_JSON = "application/json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type=_JSON)


class ControlPlane:
    """The aiohttp application over a `Supervisor`."""

    def __init__(
        self,
        supervisor: Supervisor,
        *,
        token: str | None,
        state_dir: Path,
        api_url: str = "",
    ) -> None:
        self.supervisor = supervisor
        self.token = token
        self.state_dir = state_dir
        self.api_url = api_url
        self.last_activity = time.monotonic()
        self.started_at = utc_now()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.last_activity = time.monotonic()
        if self.token is not None and request.path != "/batchrun/status":
            auth = request.headers.get("Authorization", "")
            if not auth:
                return _json({"error": "Authorization header with a Bearer token is required"}, 401)
            if not hmac.compare_digest(auth.encode(), f"Bearer {self.token}".encode()):
                return _json({"error": "Invalid credentials in Authorization header"}, 401)
        try:
            return await handler(request)
        except APIError as e:
            return _json({"error": e.message}, e.status)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            return _json({"error": e.reason}, e.status)

    @staticmethod
    async def _body(request: web.Request) -> Any:
        raw = await request.read()
        try:
            return orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError as e:
            raise UnprocessableError(f"Invalid body: not valid JSON ({e})", status=422) from e

    def _out(self, rec: Any) -> web.Response:
        return _json(render(rec, user=LOCAL_USER, replicas=self.supervisor.replicas(rec)))

    # -- handlers ----------------------------------------------------------------------

    async def whoami(self, request: web.Request) -> web.Response:
        return _json(
            {
                "type": "user",
                "id": LOCAL_USER,
                "name": LOCAL_USER,
                "fullname": "batchrun local service",
                "email": None,
                "emailVerified": False,
                "canPay": False,
                "isPro": False,
                "orgs": [],
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": "batchrun serve", "role": "write"},
                },
            }
        )

    async def status(self, request: web.Request) -> web.Response:
        return _json(
            {
                "service": "batchrun-local",
                "version": __version__,
                "pid": os.getpid(),
                "api_url": self.api_url,
                "state_dir": str(self.state_dir),
                "started_at": self.started_at,
                "endpoints": len(self.supervisor.store.list()),
                "active_endpoints": self.supervisor.active_count(),
                "worker_pids": self.supervisor.worker_pids(),
            }
        )

    async def list_endpoints(self, request: web.Request) -> web.Response:
        ns = request.match_info["namespace"]
        items = [
            render(r, user=LOCAL_USER, replicas=self.supervisor.replicas(r))
            for r in self.supervisor.store.list(ns)
        ]
        return _json({"items": items})

    async def create(self, request: web.Request) -> web.Response:
        ns = request.match_info["namespace"]
        return self._out(await self.supervisor.create(ns, await self._body(request)))

    async def get(self, request: web.Request) -> web.Response:
        info = request.match_info
        return self._out(self.supervisor.get(info["namespace"], info["name"]))

    async def update(self, request: web.Request) -> web.Response:
        info = request.match_info
        body = await self._body(request)
        return self._out(await self.supervisor.update(info["namespace"], info["name"], body))

    async def delete(self, request: web.Request) -> web.Response:
        info = request.match_info
        await self.supervisor.delete(info["namespace"], info["name"])
        return _json({})

    async def pause(self, request: web.Request) -> web.Response:
        info = request.match_info
        return self._out(await self.supervisor.pause(info["namespace"], info["name"]))

    async def resume(self, request: web.Request) -> web.Response:
        info = request.match_info
        return self._out(await self.supervisor.resume(info["namespace"], info["name"]))

    async def scale_to_zero(self, request: web.Request) -> web.Response:
        info = request.match_info
        return self._out(await self.supervisor.scale_to_zero(info["namespace"], info["name"]))

    async def provider(self, request: web.Request) -> web.Response:
        return _json(hardware_catalogue())

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        r = app.router
        r.add_get("/api/whoami-v2", self.whoami)
        r.add_get("/batchrun/status", self.status)
        r.add_get("/v2/endpoint/{namespace}", self.list_endpoints)
        r.add_post("/v2/endpoint/{namespace}", self.create)
        r.add_get("/v2/endpoint/{namespace}/{name}", self.get)
        r.add_put("/v2/endpoint/{namespace}/{name}", self.update)
        r.add_delete("/v2/endpoint/{namespace}/{name}", self.delete)
        r.add_post("/v2/endpoint/{namespace}/{name}/pause", self.pause)
        r.add_post("/v2/endpoint/{namespace}/{name}/resume", self.resume)
        r.add_post("/v2/endpoint/{namespace}/{name}/scale-to-zero", self.scale_to_zero)
        r.add_get("/v2/provider/{namespace}", self.provider)
        return app


def _lock_state_dir(state_dir: Path) -> int:
    """Hold the state dir's service lock for this process's life; one service per state dir.

    Raises:
        BatchrunError: another service holds it.
    """
    fd = os.open(state_dir / "service.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
        os.close(fd)
        raise BatchrunError(
            f"another batchrun service already runs with state dir {state_dir} "
            "(see `batchrun serve --status --state-dir ...`)"
        ) from e
    return fd


def _write_address(state_dir: Path, info: dict[str, Any]) -> None:
    tmp = state_dir / "service.json.tmp"
    tmp.write_bytes(orjson.dumps(info, option=orjson.OPT_INDENT_2))
    os.replace(tmp, state_dir / "service.json")


async def _serve(
    *,
    host: str,
    port: int,
    state_dir: Path,
    token: str | None,
    minute: float,
    idle_exit: float,
    on_ready: Callable[[str], None] | None,
) -> None:
    store = EndpointStore(state_dir / "service.db")
    supervisor = Supervisor(store, token=token, minute=minute, models_dir=state_dir / "models")
    plane = ControlPlane(supervisor, token=token, state_dir=state_dir)
    runner = web.AppRunner(plane.app(), access_log=None, handle_signals=False)
    await runner.setup()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        await runner.cleanup()
        store.close()
        raise BatchrunError(f"cannot listen on {host}:{port}: {e.strerror}") from e
    site = web.SockSite(runner, sock, backlog=256)
    await site.start()
    bound = sock.getsockname()[1]
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
    plane.api_url = f"http://{shown}:{bound}/v2"
    address = {
        "api_url": plane.api_url,
        "host": host,
        "port": bound,
        "pid": os.getpid(),
        "version": __version__,
        "started_at": plane.started_at,
        "state_dir": str(state_dir),
    }
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await supervisor.recover()
        _write_address(state_dir, address)
        logger.info("batchrun local service on %s (state in %s)", plane.api_url, state_dir)
        if on_ready is not None:
            on_ready(plane.api_url)
        idle_task = (
            loop.create_task(_exit_when_idle(plane, idle_exit, stop)) if idle_exit > 0 else None
        )
        await stop.wait()
        if idle_task is not None:
            idle_task.cancel()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await supervisor.shutdown()
        await runner.cleanup()
        store.close()
        with contextlib.suppress(FileNotFoundError, ValueError, OSError):
            current = orjson.loads((state_dir / "service.json").read_bytes())
            if current.get("pid") == os.getpid():
                (state_dir / "service.json").unlink()


async def _exit_when_idle(plane: ControlPlane, idle_exit: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await asyncio.sleep(min(max(idle_exit / 10, 0.1), 30.0))
        quiet = time.monotonic() - plane.last_activity
        if quiet > idle_exit and plane.supervisor.active_count() == 0:
            logger.info("no activity for %.0f s and no running endpoint: exiting", quiet)
            stop.set()


def run_service(
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    state_dir: Path,
    token: str | None = None,
    minute: float = 60.0,
    idle_exit: float = 0.0,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run the local service in the foreground until SIGTERM/SIGINT (or `idle_exit` seconds idle).

    Writes `service.json` (address and pid) to `state_dir` once it listens, and removes it on
    exit; workers are stopped on the way out, their endpoints' states kept for the next start.

    Args:
        host: interface to listen on.
        port: TCP port; 0 picks a free one (read it from `service.json` or `on_ready`).
        state_dir: SQLite state, address file, lock; created if missing.
        token: the service token, or None for no authentication.
        minute: seconds in a service "minute" (`scaleToZeroTimeout`), so tests need not wait.
        idle_exit: exit after this many seconds without a control-plane call while no endpoint
            is active; 0 never.
        on_ready: called with the API URL once the service listens.

    Raises:
        BatchrunError: another service owns `state_dir`, or the port cannot be bound.
    """
    if minute <= 0:
        raise BatchrunError(f"--minute must be positive, got {minute}")
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = _lock_state_dir(state_dir)
    try:
        asyncio.run(
            _serve(
                host=host,
                port=port,
                state_dir=state_dir,
                token=token,
                minute=minute,
                idle_exit=idle_exit,
                on_ready=on_ready,
            )
        )
    finally:
        os.close(fd)
