"""One endpoint's worker process: the data plane on its own 127.0.0.1 port.

Started by the service as `python -m batchrun.local.worker`. It reads its configuration as
the first JSON line on stdin, binds its port, then talks to the service over the pipes:
commands in on stdin (`{"cmd": "load" | "unload", "seq": n}`), events out on stdout
(`listening`, `loading`, `ready`, `failed`, `unloaded`, each carrying the last command `seq`
seen). When stdin closes (the service died, however it died) the worker exits at once, so
workers never outlive their service.

Routes: `POST /` (the default container's `{"inputs", "parameters"}`, per task; a list of
inputs gives a list of per-input outputs), `POST /generate` (TGI), `POST /v1/chat/completions`,
`POST /v1/completions` and `POST /v1/embeddings` (OpenAI shapes, with `usage`), `POST /embed` (TEI), `GET /health`,
`GET /info`. Errors are `{"error", "error_type"}`.

An endpoint runs one worker per replica; all of them bind the endpoint's port with
`SO_REUSEPORT`, so the kernel spreads new *connections* among them. A client keeps its
connections alive, so each worker closes a connection (`Connection: close` on the answer)
once it is `BATCHRUN_RECYCLE_S` seconds old (`model.env`, default 2) or has carried
`RECYCLE_REQUESTS` requests: the client's next connection may land on another replica, so a
new replica gets requests within seconds. (Chosen over a balancing proxy in front, which
would add a hop and its CPU to every request: see tests/perf/bench_local_capacity.py.)
`{"cmd": "drain"}` removes a replica: it stops accepting, finishes the requests in flight,
closes its connections and exits (event `drained`).

While no model is loaded (scaled to zero, or still loading) a data request answers 503 and
wakes the model; with `X-Scale-Up-Timeout: <seconds>` it is held until the model is ready.
The request path is kept tiny (orjson, no per-request allocations beyond the body) so the
worker is never what limits a benchmark.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import os
import socket
import sys
import time
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from batchrun._version import __version__
from batchrun.errors import BatchrunError
from batchrun.local.backends import (
    CLASSIFICATION_TASKS,
    ECHO_REPOSITORY,
    EMBEDDING_TASKS,
    GENERATION_TASKS,
    Backend,
    EchoFaults,
    load_backend,
    recycle_s,
)

__all__ = ["WorkerApp", "main"]

logger = logging.getLogger(__name__)

_JSON = "application/json"
RECYCLE_REQUESTS = 1000  # a kept-alive connection is closed after this many answers
DRAIN_TIMEOUT_S = 60.0  # a draining replica gives its requests in flight this long
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, error_type: str, **headers: str) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"error": message, "error_type": error_type}),
        content_type=_JSON,
        headers=headers or None,
    )


class _BadInput(Exception):
    """A request body the model cannot take (400)."""


class _Unloaded(Exception):
    """The model was released (scale to zero) while the request was being admitted (503)."""


class MicroBatcher:
    """Gathers concurrent calls into batches of up to `max_batch` rows, run in one thread.

    While a batch computes, new requests queue; the next batch takes what queued. Under load
    that fills batches without adding any wait when idle.
    """

    def __init__(
        self,
        fn: Callable[[list[str]], list[Any]],
        max_batch: int,
        executor: concurrent.futures.Executor,
    ) -> None:
        self.fn = fn
        self.max_batch = max_batch
        self.executor = executor
        self.queue: asyncio.Queue[tuple[list[str], asyncio.Future[list[Any]]]] = asyncio.Queue()
        self.batches = 0
        self.rows = 0
        self.task: asyncio.Task[None] | None = None

    async def submit(self, texts: list[str]) -> list[Any]:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        await self.queue.put((texts, fut))
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            n = len(items[0][0])
            while n < self.max_batch and not self.queue.empty():
                item = self.queue.get_nowait()
                items.append(item)
                n += len(item[0])
            texts = [t for chunk, _ in items for t in chunk]
            try:
                results = await loop.run_in_executor(self.executor, self.fn, texts)
            except Exception as e:
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self.batches += 1
            self.rows += len(texts)
            pos = 0
            for chunk, fut in items:
                if not fut.done():
                    fut.set_result(results[pos : pos + len(chunk)])
                pos += len(chunk)


class CapacityGate:
    """The echo model's capacity model in one worker (see `EchoFaults`): slots, a queue, 429s.

    `enter` takes a slot (waiting in FIFO order when all `max_batch` are taken), sleeps the
    service time for the batch it joined and gives the slot on; it answers False, at once,
    when the queue is already full. Counters (and their high-water marks) show in `/info`.
    """

    def __init__(self, faults: EchoFaults) -> None:
        assert faults.max_batch is not None
        self.faults = faults
        self.max_batch = faults.max_batch
        self.max_queue = faults.max_queue
        self.in_service = 0
        self.in_service_max = 0
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.queued_max = 0
        self.served = 0
        self.rejected = 0

    async def serve(self) -> bool:
        """Hold the request for its service time; False when it is refused (queue full)."""
        if self.in_service >= self.max_batch or self.waiters:
            if self.max_queue is not None and len(self.waiters) >= self.max_queue:
                self.rejected += 1
                return False
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.waiters.append(fut)
            self.queued_max = max(self.queued_max, len(self.waiters))
            try:
                await fut  # the slot is handed over by `_release` (in_service already counted)
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._release()
                else:
                    with contextlib.suppress(ValueError):
                        self.waiters.remove(fut)
                raise
        else:
            self.in_service += 1
        try:
            self.in_service_max = max(self.in_service_max, self.in_service)
            await asyncio.sleep(self.faults.service_s(self.in_service))
            self.served += 1
        finally:
            self._release()
        return True

    def _release(self) -> None:
        self.in_service -= 1
        while self.waiters and self.in_service < self.max_batch:
            fut = self.waiters.popleft()
            if not fut.done():
                self.in_service += 1
                fut.set_result(None)

    def stats(self) -> dict[str, Any]:
        return {
            "max_batch": self.max_batch,
            "max_queue": self.max_queue,
            "in_service": self.in_service,
            "in_service_max": self.in_service_max,
            "queued": len(self.waiters),
            "queued_max": self.queued_max,
            "served": self.served,
            "rejected": self.rejected,
        }


def _texts(value: Any, what: str) -> tuple[list[str], bool]:
    """(texts, single) from a str or a list of str."""
    if isinstance(value, str):
        return [value], True
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value, False
    raise _BadInput(f"'{what}' must be a string or a non-empty list of strings")


def _words(text: str) -> int:
    return len(text.split())


class WorkerApp:
    """The worker's state and its aiohttp application."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.repository: str = config["repository"]
        self.task: str = config["task"]
        self.env: dict[str, str] = dict(config.get("env") or {})
        token = config.get("token")
        self.bearer = f"Bearer {token}" if token and config.get("type") != "public" else None
        self.idle_s: float | None = config.get("idle_s")
        self.models_dir = Path(config["models_dir"]) if config.get("models_dir") else None
        self.echo = self.repository == ECHO_REPOSITORY
        try:
            self.faults = EchoFaults.from_env(self.env) if self.echo else EchoFaults()
        except BatchrunError:
            self.faults = EchoFaults()  # load_backend reports the bad value as the failure
        self.draws = self.faults.any_draw
        self.latency = self.faults.latency_s
        self.crash_after = self.faults.crash_after
        self.capacity = CapacityGate(self.faults) if self.faults.max_batch else None
        self.pid = str(os.getpid())
        self.connections: weakref.WeakKeyDictionary[Any, list[float]] = weakref.WeakKeyDictionary()
        try:
            self.recycle_s = recycle_s(self.env)
        except BatchrunError:
            self.recycle_s = 0.0  # load_backend reports the bad value as the failure
        self.draining = False
        self.drain_task: asyncio.Task[None] | None = None
        self.runner: web.AppRunner | None = None
        self.backend: Backend | None = None
        self.loading = False
        self.unload_after_load = False
        self.ready = asyncio.Event()
        self.seq = 0
        self.served = 0
        self.last_request = time.monotonic()
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self.batchers: dict[str, MicroBatcher] = {}

    # -- the service link ---------------------------------------------------------------

    def emit(self, event: str, **fields: Any) -> None:
        sys.stdout.buffer.write(orjson.dumps({"event": event, "seq": self.seq, **fields}) + b"\n")
        sys.stdout.buffer.flush()

    def start_load(self) -> None:
        """Load the model in the background, unless loaded or loading."""
        self.unload_after_load = False
        if self.backend is not None or self.loading:
            return
        self.loading = True
        self.emit("loading")
        asyncio.get_running_loop().create_task(self._load())

    async def _load(self) -> None:
        try:
            if self.faults.start_delay_s:
                await asyncio.sleep(self.faults.start_delay_s)
            backend = await asyncio.get_running_loop().run_in_executor(
                self.executor, load_backend, self.repository, self.task, self.env, self.models_dir
            )
        except BatchrunError as e:
            self.emit("failed", message=str(e))
            os._exit(2)
        except Exception as e:
            self.emit("failed", message=f"cannot load {self.repository!r}: {e}")
            os._exit(2)
        self.loading = False
        if self.unload_after_load:
            self.unload_after_load = False
            self.emit("unloaded", reason="requested")
            return
        self.backend = backend
        self.batchers = {}
        if backend.heavy:
            if "embed" in backend.kinds:
                self.batchers["embed"] = MicroBatcher(
                    backend.embed, backend.max_batch, self.executor
                )
            if "classify" in backend.kinds:
                self.batchers["classify"] = MicroBatcher(
                    backend.classify, backend.max_batch, self.executor
                )
        self.last_request = time.monotonic()
        self.ready.set()
        self.emit("ready")

    def unload(self, reason: str) -> None:
        if self.loading:
            self.unload_after_load = True
            return
        self.ready.clear()
        self.backend = None
        self.batchers = {}
        self.emit("unloaded", reason=reason)

    async def read_commands(self, already_read: bytes = b"") -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        if already_read:
            reader.feed_data(already_read)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = await reader.readline()
            if not line:
                os._exit(0)  # the service is gone: never outlive it
            try:
                cmd = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            self.seq = int(cmd.get("seq", self.seq))
            if cmd.get("cmd") == "load":
                self.start_load()
            elif cmd.get("cmd") == "unload":
                self.unload("requested")
            elif cmd.get("cmd") == "drain" and not self.draining:
                self.drain_task = loop.create_task(self.drain())
            elif cmd.get("cmd") == "stop":
                os._exit(0)

    async def watch_idle(self) -> None:
        idle = self.idle_s
        if not idle:
            return
        while True:
            await asyncio.sleep(min(max(idle / 4, 0.05), 5.0))
            if self.backend is not None and time.monotonic() - self.last_request > idle:
                self.unload("idle")

    # -- request admission (the hot path) -------------------------------------------------

    async def admit(self, request: web.Request) -> web.Response | None:
        """None when the request may be served; else the response to send instead."""
        if self.bearer is not None:
            auth = request.headers.get("Authorization")
            if auth != self.bearer:
                if not auth:
                    return _error(
                        401, "Authorization header with a Bearer token is required", "unauthorized"
                    )
                return _error(403, "this token may not call this endpoint", "forbidden")
        if self.backend is None:
            waited = await self._wake(request)
            if waited is not None:
                return waited
        self.last_request = time.monotonic()
        self.served += 1
        if self.crash_after is not None and self.served > self.crash_after:
            sys.stderr.write(
                f"batchrun worker: crashing after {self.crash_after} requests "
                "(BATCHRUN_ECHO_CRASH_AFTER)\n"
            )
            os._exit(3)
        if self.draws:
            fate = self.faults.draw()
            if fate == "error":
                return _error(500, "simulated server error (BATCHRUN_ECHO_ERROR_RATE)", "simulated")
            if fate == "rate_limit":
                return _error(
                    429,
                    "simulated rate limit (BATCHRUN_ECHO_RATE_LIMIT_RATE)",
                    "rate_limit",
                    **{"Retry-After": "1"},
                )
            if fate == "hang":
                await asyncio.sleep(24 * 3600)
        if self.latency:
            await asyncio.sleep(self.latency)
        if self.capacity is not None and not await self.capacity.serve():
            return _error(
                429,
                "the endpoint is overloaded: its queue is full (BATCHRUN_ECHO_MAX_QUEUE)",
                "overloaded",
                **{"Retry-After": "1"},
            )
        return None

    async def _wake(self, request: web.Request) -> web.Response | None:
        if not self.loading:
            self.start_load()
        header = request.headers.get("X-Scale-Up-Timeout")
        if header:
            try:
                timeout = float(header)
            except ValueError:
                return _error(400, "X-Scale-Up-Timeout must be a number of seconds", "validation")
            try:
                await asyncio.wait_for(self.ready.wait(), timeout)
            except TimeoutError:
                pass
            if self.backend is not None:
                return None
        return _error(
            503,
            "the endpoint is scaled to zero or initializing; it is starting, retry shortly "
            "or send X-Scale-Up-Timeout to wait",
            "unavailable",
            **{"Retry-After": "1"},
        )

    async def _call(self, kind: str, texts: list[str], parameters: dict[str, Any]) -> list[Any]:
        backend = self.backend
        if backend is None:
            raise _Unloaded
        if kind not in backend.kinds:
            raise _BadInput(f"model {self.repository!r} does not support {kind}")
        if not backend.heavy:
            if kind == "generate":
                return backend.generate(texts, parameters)
            if kind == "embed":
                return backend.embed(texts)
            return backend.classify(texts)
        batcher = self.batchers.get(kind)
        if batcher is not None:
            return await batcher.submit(texts)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, backend.generate, texts, parameters)

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        try:
            data = orjson.loads(await request.read())
        except orjson.JSONDecodeError as e:
            raise _BadInput(f"the body is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise _BadInput("the body must be a JSON object")
        return data

    def _route(self, fn: Callable[[web.Request], Awaitable[Any]]) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            response = await self._answer(fn, request)
            response.headers["X-Batchrun-Replica"] = self.pid  # which replica answered
            if self.draining or self._recycle(request):
                response.force_close()
            return response

        return handler

    def _recycle(self, request: web.Request) -> bool:
        """True when this answer should close its kept-alive connection (see the module doc)."""
        transport = request.transport
        if transport is None or not self.recycle_s:
            return False
        now = time.monotonic()
        try:
            seen = self.connections.get(transport)
            if seen is None:
                self.connections[transport] = [now, 1.0]
                return False
        except TypeError:  # a transport without weak references (some event loops)
            return self.served % RECYCLE_REQUESTS == 0
        seen[1] += 1
        return now - seen[0] >= self.recycle_s or seen[1] >= RECYCLE_REQUESTS

    async def drain(self) -> None:
        """Leave the endpoint: stop accepting, finish what is in flight, then exit."""
        self.draining = True
        if self.runner is not None:
            await self.runner.cleanup()  # the answers in flight go out with Connection: close
        self.emit("drained")
        os._exit(0)

    async def _answer(
        self, fn: Callable[[web.Request], Awaitable[Any]], request: web.Request
    ) -> web.Response:
        refused = await self.admit(request)
        if refused is not None:
            return refused
        try:
            result = await fn(request)
        except _BadInput as e:
            return _error(400, str(e), "validation")
        except _Unloaded:
            self.start_load()  # as Hugging Face does: a request wakes the endpoint
            return _error(
                503,
                "the endpoint scaled to zero while this request waited; it is starting again",
                "unavailable",
                **{"Retry-After": "1"},
            )
        except Exception as e:
            logger.exception("request failed")
            return _error(500, f"{type(e).__name__}: {e}", "model")
        return web.Response(body=orjson.dumps(result), content_type=_JSON)

    # -- routes ------------------------------------------------------------------------

    async def root(self, request: web.Request) -> Any:
        data = await self._body(request)
        texts, single = _texts(data.get("inputs"), "inputs")
        params = data.get("parameters") or {}
        if not isinstance(params, dict):
            raise _BadInput("'parameters' must be an object")
        task = self.task
        if task in GENERATION_TASKS:
            outs: list[Any] = [
                [{"generated_text": g}] for g in await self._call("generate", texts, params)
            ]
        elif task in EMBEDDING_TASKS:
            outs = await self._call("embed", texts, params)
        elif task in CLASSIFICATION_TASKS:
            outs = await self._call("classify", texts, params)
        else:
            raise _BadInput(f"task {task!r} is not served by the local service")
        return outs[0] if single else outs

    async def generate(self, request: web.Request) -> Any:
        data = await self._body(request)
        texts, single = _texts(data.get("inputs"), "inputs")
        if not single:
            raise _BadInput("'inputs' must be a string for /generate")
        params = data.get("parameters") or {}
        text = (await self._call("generate", texts, params))[0]
        details: dict[str, Any] = {
            "finish_reason": "length",
            "generated_tokens": _words(text),
            "seed": params.get("seed"),
            "prefill": [],
            "tokens": [],
        }
        return {"generated_text": text, "details": details}

    async def chat(self, request: web.Request) -> Any:
        data = await self._body(request)
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadInput("'messages' must be a non-empty list")
        prompt_words = 0
        last_user = ""
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("content"), str):
                raise _BadInput("each message needs a string 'content'")
            prompt_words += _words(m["content"])
            if m.get("role") == "user":
                last_user = m["content"]
        params: dict[str, Any] = {}
        if isinstance(data.get("max_tokens"), int):
            params["max_new_tokens"] = data["max_tokens"]
        text = (await self._call("generate", [last_user], params))[0]
        completion = _words(text)
        return {
            "id": f"chatcmpl-{self.served}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": data.get("model") or self.repository,
            "system_fingerprint": f"batchrun-{__version__}",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_words,
                "completion_tokens": completion,
                "total_tokens": prompt_words + completion,
            },
        }

    async def completions(self, request: web.Request) -> Any:
        """OpenAI ``/v1/completions``: one string ``prompt``, ``choices[0].text``."""
        data = await self._body(request)
        prompt = data.get("prompt")
        if not isinstance(prompt, str):
            raise _BadInput("'prompt' must be a string")
        params: dict[str, Any] = {}
        if isinstance(data.get("max_tokens"), int):
            params["max_new_tokens"] = data["max_tokens"]
        text = (await self._call("generate", [prompt], params))[0]
        prompt_words, completion = _words(prompt), _words(text)
        return {
            "id": f"cmpl-{self.served}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": data.get("model") or self.repository,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": prompt_words,
                "completion_tokens": completion,
                "total_tokens": prompt_words + completion,
            },
        }

    async def embeddings(self, request: web.Request) -> Any:
        data = await self._body(request)
        texts, _ = _texts(data.get("input"), "input")
        vectors = await self._call("embed", texts, {})
        tokens = sum(_words(t) for t in texts)
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)
            ],
            "model": data.get("model") or self.repository,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    async def embed(self, request: web.Request) -> Any:
        data = await self._body(request)
        texts, _ = _texts(data.get("inputs"), "inputs")
        return await self._call("embed", texts, {})

    async def health(self, request: web.Request) -> web.Response:
        if self.backend is None:
            return _error(503, "model not loaded", "unavailable")
        return web.Response(body=b"", status=200)

    async def info(self, request: web.Request) -> web.Response:
        backend = self.backend
        batchers = {
            kind: {"batches": b.batches, "rows": b.rows} for kind, b in self.batchers.items()
        }
        return web.Response(
            body=orjson.dumps(
                {
                    "model_id": self.repository,
                    "model_sha": self.config.get("revision"),
                    "model_dtype": "float32",
                    "model_device_type": "cpu",
                    "task": self.task,
                    "backend": backend.name if backend else None,
                    "loaded": backend is not None,
                    "dimension": backend.dimension if backend else None,
                    "max_batch_size": backend.max_batch if backend else None,
                    "requests": self.served,
                    "pid": os.getpid(),
                    "capacity": self.capacity.stats() if self.capacity else None,
                    "batches": batchers,
                    "version": __version__,
                    "router": "batchrun-local",
                }
            ),
            content_type=_JSON,
        )

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/", self._route(self.root))
        app.router.add_post("/generate", self._route(self.generate))
        app.router.add_post("/v1/chat/completions", self._route(self.chat))
        app.router.add_post("/v1/completions", self._route(self.completions))
        app.router.add_post("/v1/embeddings", self._route(self.embeddings))
        app.router.add_post("/embed", self._route(self.embed))
        app.router.add_get("/health", self.health)
        app.router.add_get("/info", self.info)
        health = self.config.get("health_route") or "/health"
        if health not in ("/health", "/info", "/"):
            app.router.add_get(health, self.health)
        return app


async def _serve(config: dict[str, Any], rest: bytes) -> None:
    worker = WorkerApp(config)
    runner = web.AppRunner(
        worker.app(), access_log=None, handle_signals=False, shutdown_timeout=DRAIN_TIMEOUT_S
    )
    await runner.setup()
    worker.runner = runner
    port = int(config.get("port") or 0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # the endpoint's other replicas
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as e:
        if config.get("replica", 0):  # a replica must share its endpoint's port
            worker.emit("failed", message=f"cannot bind the endpoint's port {port}: {e}")
            os._exit(2)
        sock.bind(("127.0.0.1", 0))  # the old port was taken meanwhile: take a new one
    site = web.SockSite(runner, sock, backlog=1024)
    await site.start()
    worker.emit("listening", port=sock.getsockname()[1])
    if config.get("load", True):
        worker.start_load()
    else:
        worker.emit("unloaded", reason="requested")
    idle_task = asyncio.get_running_loop().create_task(worker.watch_idle())
    try:
        await worker.read_commands(rest)
    finally:
        idle_task.cancel()


def _first_line() -> tuple[bytes, bytes]:
    """The first line on stdin and what was read past it, unbuffered (the rest are commands)."""
    data = b""
    while b"\n" not in data:
        chunk = os.read(0, 65536)
        if not chunk:
            break
        data += chunk
    line, _, rest = data.partition(b"\n")
    return line, rest


def main() -> None:
    """Entry point: the configuration is the first line on stdin."""
    line, rest = _first_line()
    if not line:
        return
    config = orjson.loads(line)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:  # optional: uvloop cuts the worker's CPU per request
        import uvloop
    except ImportError:
        asyncio.run(_serve(config, rest))
    else:
        uvloop.run(_serve(config, rest))


if __name__ == "__main__":
    main()
