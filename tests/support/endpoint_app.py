"""A small inference endpoint for tests and benchmarks, with fault knobs.

It speaks the data-plane routes batchrun sends to (DESIGN.md, "Data plane"):

- ``POST /``: Hugging Face's default container, ``{"inputs": str | [str], "parameters": {...}}``;
  the answer's shape follows the ``task`` knob (text-generation, text-classification,
  feature-extraction); a list of inputs gets a list of answers.
- ``POST /generate``: TGI, ``{"generated_text", "details"}``.
- ``POST /v1/chat/completions``, ``POST /v1/completions`` (``text`` is ``"echo: " + prompt``)
  and ``POST /v1/embeddings``: the OpenAI shapes, with ``usage``; every answer carries an
  ``x-request-id`` header (``req-<n>``).
- ``GET /health``, ``GET /info``.
- ``POST /_control`` (JSON knobs, plus ``"reset": true`` to zero the counters) and
  ``GET /_stats`` (``?inputs=1`` adds the per-input counts, ``?arrivals=1`` the arrival times,
  ``?tokens=1`` each answer's arrival time and ``usage.total_tokens``).

Answers are derived from the input so tests can check them row by row: ``generated_text`` and
chat ``content`` are ``"echo: " + text``; see `expected_generated_text`, `expected_embedding`,
`expected_labels`. Every data request is counted per input text (`received`), so an
exactly-once test can assert that only the rows in flight were sent twice.

Knobs (`Knobs`) are set at start and changed at runtime. Faults are checked in this order:
``hold_after`` (held until the test releases them), ``require_token`` (a 401 ``Invalid API
key`` for every request without that bearer token), ``outage_after`` (after N requests the
server stops listening and drops every connection for ``outage_s`` seconds, then listens
again on the same port), latency, drop the connection, hang,
429 + ``Retry-After``, ``fail_status`` (500 by default),
a 4xx for inputs containing ``reject_match``, a 200 that is not JSON, an answer quoting the
request's Authorization header (``echo_auth``), a huge 200 (``big_response_bytes``, streamed,
with or without Content-Length). After the latency, a capacity model (``capacity``, at most
that many in service at once for ``service_ms + per_item_ms × in service``, the rest queued,
a 429 past ``max_queue``) gives a fixed concurrency a knee. ``*_first`` knobs are
budgets: the next N data requests get that fault (so setting one mid-run makes a burst);
``*_rate`` knobs hit a deterministic pseudo-random fraction; ``fail_each_first`` fails the
first K requests *of every input*.

Three ways to run it:

- in-process, in a background thread: ``with EndpointApp(task="text-generation") as app:``
  (or the ``endpoint_app`` pytest fixture); knobs via ``app.configure(...)``;
- as a subprocess (kill -9 tests, benchmarks): ``with EndpointProcess(latency_ms=50) as app:``
  (or the ``endpoint_process`` fixture); the same ``url``/``configure``/``stats``/``received``;
- by hand: ``python -m tests.support.endpoint_app --port 0 --port-file F --latency-ms 50``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import email.utils
import hashlib
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

__all__ = [
    "EndpointApp",
    "EndpointProcess",
    "Knobs",
    "endpoint_app",
    "endpoint_process",
    "expected_embedding",
    "expected_generated_text",
    "expected_labels",
]

EMBEDDING_DIM = 4
_JSON = "application/json"


@dataclass(slots=True)
class Knobs:
    """What the endpoint does. Every field can be set at start and changed at runtime."""

    task: str = "text-generation"  # shape of POST / answers
    latency_ms: float = 0.0  # added to every data request
    jitter_ms: float = 0.0  # plus a uniform 0..jitter_ms
    slow_match: str = ""  # inputs containing this take slow_ms more ("" = none)
    slow_ms: float = 0.0
    drop_first: int = 0  # close the connection without answering
    drop_rate: float = 0.0
    hang_first: int = 0  # never answer (until hang_s or the client goes away)
    hang_rate: float = 0.0
    hang_s: float = 3600.0
    throttle_first: int = 0  # 429 with Retry-After
    throttle_rate: float = 0.0
    retry_after: str = "1"  # the Retry-After header ("" = none)
    retry_after_http_date: bool = False  # send Retry-After as an HTTP date, now + retry_after s
    fail_first: int = 0  # answer fail_status with {"error": fail_message}
    fail_rate: float = 0.0
    fail_each_first: int = 0  # the first K requests of every input fail
    fail_match: str = ""  # inputs containing this always fail
    fail_status: int = 500
    fail_message: str = "internal error (injected)"
    reject_match: str = ""  # inputs containing this get reject_status (a final 4xx)
    reject_status: int = 400
    bad_json_first: int = 0  # a 200 whose body is not JSON
    bad_json_rate: float = 0.0
    seed: int = 0
    echo_auth: str = ""  # "error": fail_status quoting the Authorization header; "html": a 200 page
    echo_auth_match: str = ""  # only inputs containing this ("" = every data request)
    big_response_bytes: int = 0  # a 200 answer this large (a text-generation answer, streamed)
    big_response_match: str = ""  # only inputs containing this ("" = every data request)
    big_response_chunked: bool = False  # sent chunked, without a Content-Length
    hold_after: int = -1  # requests after the Nth wait unanswered until it is -1 (or raised)
    require_token: str = ""  # a 401 for every data request without "Bearer <require_token>"
    outage_after: int = -1  # after the Nth request: refuse connections for outage_s, once
    outage_s: float = 3.0
    usage_chars_per_token: float = 0.0  # > 0: usage.prompt_tokens = ceil(prompt chars / this)
    usage_completion_tokens: int = -1  # >= 0: chat's completion_tokens (at most max_tokens)
    # a capacity model (a GPU's continuous batching, roughly): at most `capacity` requests in
    # service at once, each for service_ms + per_item_ms × (in service); the rest queue in
    # arrival order; past max_queue waiting, a 429 with Retry-After queue_retry_after
    capacity: int = 0  # 0: no capacity model
    service_ms: float = 50.0
    per_item_ms: float = 0.0
    max_queue: int = -1  # -1: the queue has no bound
    queue_retry_after: str = "1"

    def update(self, values: dict[str, Any]) -> None:
        """Set knobs from a dict; an unknown name or a wrong type raises ValueError."""
        names = {f.name: f for f in dataclasses.fields(self)}
        for key, value in values.items():
            if key not in names:
                raise ValueError(f"unknown knob {key!r}")
            current = getattr(self, key)
            if isinstance(current, bool):
                value = value if isinstance(value, bool) else str(value).lower() in ("1", "true")
            elif isinstance(current, int):
                value = int(value)
            elif isinstance(current, float):
                value = float(value)
            else:
                value = str(value)
            setattr(self, key, value)


def expected_generated_text(text: str) -> str:
    """What the endpoint generates for `text` (text-generation, /generate and chat)."""
    return "echo: " + text


def expected_embedding(text: str) -> list[float]:
    """The endpoint's embedding of `text`: EMBEDDING_DIM floats derived from its hash."""
    digest = hashlib.blake2b(text.encode(), digest_size=EMBEDDING_DIM).digest()
    return [round(b / 255.0, 6) for b in digest]


def expected_labels(text: str) -> list[dict[str, Any]]:
    """The endpoint's text-classification of `text`: both labels, best first."""
    positive = round((len(text) % 10) / 10 + 0.05, 6)
    labels = [
        {"label": "POSITIVE", "score": positive},
        {"label": "NEGATIVE", "score": round(1.0 - positive, 6)},
    ]
    labels.sort(key=lambda item: -float(item["score"]))
    return labels


@dataclass(slots=True)
class _Stats:
    requests: int = 0  # data requests seen
    ok: int = 0  # data requests answered 200 with a valid answer
    in_flight: int = 0
    max_in_flight: int = 0
    max_in_service: int = 0  # the capacity model's
    max_queued: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    routes: Counter[str] = field(default_factory=Counter)
    received: Counter[str] = field(default_factory=Counter)  # per input text
    answered: Counter[str] = field(default_factory=Counter)  # per input text, 200 answers
    arrivals: deque[float] = field(default_factory=lambda: deque(maxlen=200_000))
    tokens: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=200_000))
    last_headers: dict[str, str] = field(default_factory=dict)

    def to_json(
        self, *, inputs: bool = False, arrivals: bool = False, tokens: bool = False
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "requests": self.requests,
            "ok": self.ok,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "max_in_service": self.max_in_service,
            "max_queued": self.max_queued,
            "statuses": dict(self.statuses),
            "routes": dict(self.routes),
            "distinct_inputs": len(self.received),
            "last_headers": dict(self.last_headers),
        }
        if inputs:
            out["received"] = dict(self.received)
            out["answered"] = dict(self.answered)
        if arrivals:
            out["arrivals"] = list(self.arrivals)
        if tokens:
            out["tokens"] = [list(item) for item in self.tokens]
        return out


_RECORDED_HEADERS = ("Authorization", "X-Scale-Up-Timeout", "Content-Type", "User-Agent")


class _Fault(Exception):
    def __init__(self, response: web.StreamResponse | None) -> None:
        self.response = response


class _Server:
    """The aiohttp.web application and its state; runs on whatever loop starts it."""

    def __init__(self, knobs: Knobs) -> None:
        self.knobs = knobs
        self.runner: web.AppRunner | None = None  # set once serving (for outage_after)
        self.address: tuple[str, int] = ("127.0.0.1", 0)
        self.outages = 0  # outages that ended (the server listens again)
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats = _Stats()
        self._rng = random.Random(knobs.seed)
        self._queue: deque[asyncio.Future[None]] = deque()  # the capacity model's waiting line
        self.in_service = 0  # the capacity model's requests in service
        self.app = web.Application(client_max_size=64 * 1024**2)
        self.app.router.add_post("/", self._default_container)
        self.app.router.add_post("/generate", self._generate)
        self.app.router.add_post("/v1/chat/completions", self._chat)
        self.app.router.add_post("/v1/completions", self._completions)
        self.app.router.add_post("/v1/embeddings", self._embeddings)
        self.app.router.add_get("/health", self._health)
        self.app.router.add_get("/info", self._info)
        self.app.router.add_post("/_control", self._control)
        self.app.router.add_get("/_stats", self._stats)

    def reset(self) -> None:
        self.stats = _Stats()
        self._rng = random.Random(self.knobs.seed)

    # --- faults -------------------------------------------------------------------------

    def _take(self, first: str, rate: str) -> bool:
        """True when the `first` budget has some left (and uses one), or the dice say so."""
        left = getattr(self.knobs, first)
        if left > 0:
            setattr(self.knobs, first, left - 1)
            return True
        p = getattr(self.knobs, rate)
        return p > 0 and self._rng.random() < p

    async def _faults(self, request: web.Request, texts: list[str], number: int = 0) -> None:
        """Apply the knobs to one data request; raises _Fault with the answer to send instead.

        `number` is the request's place in arrival order (1 for the first), for `hold_after`.
        """
        k = self.knobs
        if 0 <= k.hold_after < number:
            self.stats.statuses["held"] += 1  # every request that was held, released or not
            while 0 <= k.hold_after < number:
                await asyncio.sleep(0.005)
        if k.require_token and request.headers.get("Authorization") != f"Bearer {k.require_token}":
            raise _Fault(_error(401, "Invalid API key"))
        if 0 <= k.outage_after < number and self.runner is not None:
            k.outage_after = -1
            self.stats.statuses["outage"] += 1
            task = asyncio.get_running_loop().create_task(self._outage(k.outage_s))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            transport = request.transport
            if transport is not None:
                transport.abort()
            raise _Fault(None)
        if k.latency_ms or k.jitter_ms:
            await asyncio.sleep((k.latency_ms + self._rng.random() * k.jitter_ms) / 1000.0)
        if k.slow_match and k.slow_ms and any(k.slow_match in t for t in texts):
            await asyncio.sleep(k.slow_ms / 1000.0)
        if k.capacity > 0:
            await self._serve_capacity()
        if self._take("drop_first", "drop_rate"):
            self.stats.statuses["dropped"] += 1
            transport = request.transport
            if transport is not None:
                transport.abort()
            raise _Fault(None)
        if self._take("hang_first", "hang_rate"):
            self.stats.statuses["hung"] += 1
            await asyncio.sleep(k.hang_s)
        if self._take("throttle_first", "throttle_rate"):
            headers = {}
            if k.retry_after:
                if k.retry_after_http_date:
                    when = time.time() + float(k.retry_after)
                    headers["Retry-After"] = email.utils.formatdate(when, usegmt=True)
                else:
                    headers["Retry-After"] = k.retry_after
            raise _Fault(_error(429, "rate limit reached (injected)", headers))
        if (
            self._take("fail_first", "fail_rate")
            or (k.fail_match and any(k.fail_match in t for t in texts))
            or (
                k.fail_each_first
                and any(self.stats.received[t] <= k.fail_each_first for t in texts)
            )
        ):
            raise _Fault(_error(k.fail_status, k.fail_message))
        if k.reject_match and any(k.reject_match in t for t in texts):
            raise _Fault(_error(k.reject_status, f"input rejected: contains {k.reject_match!r}"))
        if self._take("bad_json_first", "bad_json_rate"):
            raise _Fault(
                web.Response(body=b"<html>upstream hiccup</html>", content_type="text/html")
            )
        if k.echo_auth and (not k.echo_auth_match or any(k.echo_auth_match in t for t in texts)):
            auth = request.headers.get("Authorization", "")
            if k.echo_auth == "html":
                page = f"<html><body><h1>Sign in</h1><p>you sent Authorization: {auth}</p></body>"
                raise _Fault(web.Response(text=page, content_type="text/html"))
            raise _Fault(_error(k.fail_status, f"bad token (you sent Authorization: {auth})"))
        if k.big_response_bytes and (
            not k.big_response_match or any(k.big_response_match in t for t in texts)
        ):
            raise _Fault(await _big_answer(request, k.big_response_bytes, k.big_response_chunked))

    async def _serve_capacity(self) -> None:
        """The capacity model: wait for a place in service (or a 429), then the service time."""
        k = self.knobs
        st = self.stats
        if self.in_service >= k.capacity or self._queue:
            if 0 <= k.max_queue <= len(self._queue):
                headers = {"Retry-After": k.queue_retry_after} if k.queue_retry_after else {}
                raise _Fault(_error(429, "overloaded: the queue is full", headers))
            place: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._queue.append(place)
            st.max_queued = max(st.max_queued, len(self._queue))
            try:
                await place  # given the place of a request that left service
            except asyncio.CancelledError:
                if place.done() and not place.cancelled():
                    self._leave_service()
                else:
                    self._queue.remove(place)
                raise
        else:
            self.in_service += 1
        st.max_in_service = max(st.max_in_service, self.in_service)
        try:
            await asyncio.sleep((k.service_ms + k.per_item_ms * self.in_service) / 1000.0)
        finally:
            self._leave_service()

    def _leave_service(self) -> None:
        self.in_service -= 1
        while self._queue and self.in_service < max(1, self.knobs.capacity):
            place = self._queue.popleft()
            if not place.done():
                self.in_service += 1
                place.set_result(None)

    async def _serve(self, request: web.Request, route: str, answer: Any) -> web.StreamResponse:
        """Count the request, parse its JSON, apply faults, answer with `answer(body)`."""
        st = self.stats
        st.requests += 1
        number = st.requests
        st.routes[route] += 1
        arrived = time.time()
        st.arrivals.append(arrived)
        st.in_flight += 1
        st.max_in_flight = max(st.max_in_flight, st.in_flight)
        for name in _RECORDED_HEADERS:
            value = request.headers.get(name)
            if value is not None:
                st.last_headers[name] = value
        try:
            raw = await request.read()
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = raw.decode("utf-8", "replace")
            texts = _texts(route, body)
            for t in texts:
                st.received[t] += 1
            try:
                await self._faults(request, texts, number)
                payload = answer(body)
            except _Fault as fault:
                if fault.response is None:
                    return web.Response(status=499)  # the connection is gone already
                st.statuses[str(fault.response.status)] += 1
                return fault.response
            except _BadRequest as e:
                st.statuses["422"] += 1
                return _error(422, str(e))
            usage = payload.get("usage") if isinstance(payload, dict) else None
            if isinstance(usage, dict):
                self._count_tokens(body, usage)
                st.tokens.append((arrived, int(usage["total_tokens"])))
            st.ok += 1
            st.statuses["200"] += 1
            for t in texts:
                st.answered[t] += 1
            return web.Response(
                body=orjson.dumps(payload),
                content_type=_JSON,
                headers={"x-request-id": f"req-{number}"},
            )
        finally:
            st.in_flight -= 1

    def _count_tokens(self, body: Any, usage: dict[str, Any]) -> None:
        """Recount an answer's usage the way the ``usage_*`` knobs say."""
        k = self.knobs
        if k.usage_chars_per_token > 0:
            chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", ()))
            for key in ("input", "prompt"):
                value = body.get(key, "")
                chars += sum(len(t) for t in ([value] if isinstance(value, str) else value))
            usage["prompt_tokens"] = math.ceil(chars / k.usage_chars_per_token)
        if k.usage_completion_tokens >= 0 and "completion_tokens" in usage:
            cap = body.get("max_tokens")
            limit = cap if isinstance(cap, int) else k.usage_completion_tokens
            usage["completion_tokens"] = min(k.usage_completion_tokens, limit)
        usage["total_tokens"] = usage["prompt_tokens"] + usage.get("completion_tokens", 0)

    async def _outage(self, seconds: float) -> None:
        """Stop listening, drop every connection, and listen again on the same port later."""
        runner = self.runner
        assert runner is not None
        for site in list(runner.sites):
            await site.stop()
        server = runner.server
        for conn in list(server.connections if server is not None else ()):
            transport = conn.transport
            if transport is not None:
                transport.abort()
        await asyncio.sleep(seconds)  # the outage itself (the server's, not a test's wait)
        host, port = self.address
        await web.TCPSite(runner, host, port, backlog=1024).start()
        self.outages += 1

    # --- routes -------------------------------------------------------------------------

    async def _default_container(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "/", self._answer_default)

    def _answer_default(self, body: Any) -> Any:
        if not isinstance(body, dict) or "inputs" not in body:
            raise _BadRequest('expected a JSON object with "inputs"')
        inputs = body["inputs"]
        task = self.knobs.task
        one = _one_answer(task)
        if isinstance(inputs, str):
            answer = one(inputs)
            return [answer] if task != "feature-extraction" else answer
        if isinstance(inputs, list) and all(isinstance(t, str) for t in inputs):
            return [one(t) for t in inputs]
        raise _BadRequest('"inputs" must be a string or a list of strings')

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "/generate", _answer_generate)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "/v1/chat/completions", _answer_chat)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "/v1/completions", _answer_completions)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "/v1/embeddings", _answer_embeddings)

    async def _health(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="")

    async def _info(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"model_id": "tests/endpoint_app", "task": self.knobs.task})

    async def _control(self, request: web.Request) -> web.StreamResponse:
        try:
            values = orjson.loads(await request.read())
            if not isinstance(values, dict):
                raise ValueError("expected a JSON object of knobs")
            if values.pop("reset", False):
                self.reset()
            self.knobs.update(values)
        except (ValueError, TypeError) as e:
            return _error(400, str(e))
        return web.json_response(dataclasses.asdict(self.knobs))

    async def _stats(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        data = self.stats.to_json(
            inputs=q.get("inputs") == "1",
            arrivals=q.get("arrivals") == "1",
            tokens=q.get("tokens") == "1",
        )
        data["knobs"] = dataclasses.asdict(self.knobs)
        return web.Response(body=orjson.dumps(data), content_type=_JSON)


class _BadRequest(Exception):
    pass


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"error": message, "error_type": "injected"}),
        content_type=_JSON,
        headers=headers,
    )


async def _big_answer(request: web.Request, size: int, chunked: bool) -> web.StreamResponse:
    """A 200 text-generation answer of `size` bytes, written 64 KiB at a time."""
    head, tail = b'[{"generated_text": "', b'"}]'
    pad = max(size - len(head) - len(tail), 0)
    response = web.StreamResponse(headers={"Content-Type": _JSON})
    if chunked:
        response.enable_chunked_encoding()
    else:
        response.content_length = len(head) + pad + len(tail)
    await response.prepare(request)
    block = b"x" * 65536
    with contextlib.suppress(ConnectionError):  # the client may stop reading early
        await response.write(head)
        for start in range(0, pad, len(block)):
            await response.write(block[: min(len(block), pad - start)])
        await response.write(tail)
        await response.write_eof()
    return response


def _texts(route: str, body: Any) -> list[str]:
    """The input texts of a request body, as counted in `received`."""
    if isinstance(body, dict):
        if route == "/v1/chat/completions":
            messages = body.get("messages")
            if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
                return [str(messages[-1].get("content"))]
            return []
        if route == "/v1/completions":
            return [str(body.get("prompt"))]
        value = body.get("input") if route == "/v1/embeddings" else body.get("inputs")
        if isinstance(value, str):
            return [value]
        if isinstance(value, list):
            return [v if isinstance(v, str) else orjson.dumps(v).decode() for v in value]
        return [orjson.dumps(body).decode()]
    if isinstance(body, str):
        return [body]
    return [orjson.dumps(body).decode()]


def _one_answer(task: str) -> Any:
    if task == "text-classification":
        return expected_labels
    if task in ("feature-extraction", "sentence-embeddings", "sentence-similarity"):
        return expected_embedding
    return lambda text: {"generated_text": expected_generated_text(text)}


def _answer_generate(body: Any) -> Any:
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), str):
        raise _BadRequest('expected {"inputs": "..."}')
    return {"generated_text": expected_generated_text(body["inputs"]), "details": None}


def _answer_chat(body: Any) -> Any:
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        raise _BadRequest('expected {"messages": [...]}')
    messages = body["messages"]
    if not messages or not all(isinstance(m, dict) and "content" in m for m in messages):
        raise _BadRequest("every message needs a role and a content")
    content = expected_generated_text(str(messages[-1]["content"]))
    prompt_tokens = sum(len(str(m["content"]).split()) for m in messages)
    completion_tokens = len(content.split())
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or "tgi",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _answer_completions(body: Any) -> Any:
    if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
        raise _BadRequest('expected {"prompt": "..."}')
    text = expected_generated_text(body["prompt"])
    prompt_tokens, completion_tokens = len(body["prompt"].split()), len(text.split())
    return {
        "id": "cmpl-test",
        "object": "text_completion",
        "created": int(time.time()),
        "model": body.get("model") or "vllm",
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _answer_embeddings(body: Any) -> Any:
    if not isinstance(body, dict) or "input" not in body:
        raise _BadRequest('expected {"input": ...}')
    value = body["input"]
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise _BadRequest('"input" must be a string or a list of strings')
    tokens = sum(len(t.split()) for t in texts)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": expected_embedding(t)}
            for i, t in enumerate(texts)
        ],
        "model": body.get("model") or "tei",
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


# --- in-process: a background thread with its own event loop ---------------------------------


class EndpointApp:
    """The endpoint served from a background thread on 127.0.0.1, a free port.

    Use as a context manager (or `start()`/`stop()`). ``url`` has no trailing slash.
    """

    def __init__(self, **knobs: Any) -> None:
        self.knobs = Knobs()
        self.knobs.update(knobs)
        self._server = _Server(self.knobs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> EndpointApp:
        ready = threading.Event()
        errors: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._runner = loop.run_until_complete(_start_runner(self._server.app, 0))
                self.port = _bound_port(self._runner)
                self._server.runner = self._runner
                self._server.address = ("127.0.0.1", self.port)
            except BaseException as e:  # handed to the starting thread
                errors.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._runner.cleanup())
                loop.close()

        self._thread = threading.Thread(target=serve, name="endpoint-app", daemon=True)
        self._thread.start()
        ready.wait(30)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            self._thread = None

    def __enter__(self) -> EndpointApp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def configure(self, **knobs: Any) -> None:
        """Change knobs; ``reset=True`` also zeroes the counters."""
        if knobs.pop("reset", False):
            self._server.reset()
        self.knobs.update(knobs)

    def stats(self, *, inputs: bool = False, arrivals: bool = False) -> dict[str, Any]:
        """Counters as `GET /_stats` returns them."""
        return self._server.stats.to_json(inputs=inputs, arrivals=arrivals)

    @property
    def outages(self) -> int:
        """Outages (`outage_after`) that ended: the server listens again."""
        return self._server.outages

    def received(self) -> dict[str, int]:
        """Data requests seen per input text."""
        return dict(self._server.stats.received)

    def open_connections(self) -> int:
        """Client connections the server still holds. After a client process dies this drops to
        0 only once the server has read everything it sent (the EOF comes after the data), so
        the counts above are then final for that client."""
        return len(self._runner.server.connections) if self._runner and self._runner.server else 0

    def answered(self) -> dict[str, int]:
        """200 answers sent per input text."""
        return dict(self._server.stats.answered)

    def arrivals(self) -> list[float]:
        """Wall-clock arrival time of every data request (time.time())."""
        return list(self._server.stats.arrivals)

    def tokens(self) -> list[tuple[float, int]]:
        """(arrival time, usage.total_tokens) of every 200 answer with a usage."""
        return list(self._server.stats.tokens)


async def _start_runner(app: web.Application, port: int, host: str = "127.0.0.1") -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    return runner


def _bound_port(runner: web.AppRunner) -> int:
    address = runner.addresses[0]
    return int(address[1])


# --- as a subprocess -------------------------------------------------------------------------


class EndpointProcess:
    """The endpoint in its own process (`python -m tests.support.endpoint_app`), on a free port.

    Same surface as `EndpointApp`: ``url``, ``configure``, ``stats``, ``received``, ``answered``,
    ``arrivals``; plus ``pid``, ``kill()``. Stopping kills the process group it started.
    """

    def __init__(self, *, python: str | None = None, **knobs: Any) -> None:
        Knobs().update(knobs)  # fail early on a bad knob
        self._knobs = knobs
        self._python = python or sys.executable
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self, timeout: float = 30.0) -> EndpointProcess:
        self._tmp = tempfile.TemporaryDirectory(prefix="endpoint-app-")
        port_file = Path(self._tmp.name) / "port"
        args = [
            self._python,
            "-m",
            "tests.support.endpoint_app",
            "--port",
            "0",
            "--port-file",
            str(port_file),
        ]
        for key, value in self._knobs.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        self._proc = subprocess.Popen(args, cwd=root, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if port_file.exists():
                self.port = int(port_file.read_text())
                return self
            if self._proc.poll() is not None:
                raise RuntimeError(f"endpoint app exited with {self._proc.returncode}")
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("endpoint app did not write its port in time")

    def stop(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(10)
            self._proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    kill = stop

    def __enter__(self) -> EndpointProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = orjson.dumps(body) if body is not None else None
        request = urllib.request.Request(
            self.url + path, data=data, method="POST" if data else "GET"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            result: dict[str, Any] = orjson.loads(response.read())
            return result

    def configure(self, **knobs: Any) -> None:
        self._call("/_control", knobs)

    def stats(self, *, inputs: bool = False, arrivals: bool = False) -> dict[str, Any]:
        query = f"?inputs={int(inputs)}&arrivals={int(arrivals)}"
        return self._call("/_stats" + query)

    def received(self) -> dict[str, int]:
        counts: dict[str, int] = self.stats(inputs=True)["received"]
        return counts

    def answered(self) -> dict[str, int]:
        counts: dict[str, int] = self.stats(inputs=True)["answered"]
        return counts

    def arrivals(self) -> list[float]:
        times: list[float] = self.stats(arrivals=True)["arrivals"]
        return times

    def tokens(self) -> list[tuple[float, int]]:
        query = "?tokens=1"
        return [(t, n) for t, n in self._call("/_stats" + query)["tokens"]]


# --- pytest fixtures ---------------------------------------------------------------------


@pytest.fixture
def endpoint_app() -> Iterator[EndpointApp]:
    """An `EndpointApp` in a background thread (text-generation, no faults), stopped after."""
    with EndpointApp() as app:
        yield app


@pytest.fixture
def endpoint_process() -> Iterator[EndpointProcess]:
    """An `EndpointProcess` (text-generation, no faults), killed after the test."""
    with EndpointProcess() as app:
        yield app


# --- command line ------------------------------------------------------------------------


def _write_port_file(path: str, port: int) -> None:
    tmp = path + ".tmp"
    Path(tmp).write_text(str(port))
    os.replace(tmp, path)  # atomic: a reader never sees a half-written port


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.endpoint_app", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", help="write the bound port here once listening")
    for f in dataclasses.fields(Knobs):
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None)
    ns = parser.parse_args(argv)
    knobs = Knobs()
    knobs.update(
        {
            f.name: getattr(ns, f.name)
            for f in dataclasses.fields(Knobs)
            if getattr(ns, f.name) is not None
        }
    )
    server = _Server(knobs)

    async def serve() -> None:
        runner = await _start_runner(server.app, ns.port, ns.host)
        port = _bound_port(runner)
        server.runner = runner
        server.address = (ns.host, port)
        if ns.port_file:
            _write_port_file(ns.port_file, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
