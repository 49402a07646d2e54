"""The bounded async pool: C workers, one aiohttp session, one retry policy.

Each of the ``concurrency`` workers pulls a `Request` from the source only when it is free, so
at most ``concurrency`` requests are held at any time, however large the input. A request's
first attempt is a plain ``await``; only when it fails does the request enter the retry policy
(`InferenceRetryPolicy`, one tenacity object), which:

- retries connection errors, the per-attempt timeout, and HTTP 408, 425, 429, 500, 502, 503,
  504 with exponential backoff and jitter, capped at ``backoff_max``; any other status (a 4xx,
  a 501) and an unreadable 200 answer are final for that request's rows;
- honours ``Retry-After`` (seconds or an HTTP date, capped at ``retry_after_max``) by holding
  the *whole pool's* dispatch until then: a rate limit is shared by every worker;
- does not count a 503 (an endpoint scaled to zero answers 503 while a replica starts) against
  ``max_attempts`` until the row has seen 503s for ``scale_up_timeout`` seconds; every request
  carries ``X-Scale-Up-Timeout`` so a Hugging Face endpoint holds it while it wakes instead;
- logs ``retry n/max`` at WARNING, once per retry.

aiohttp's exceptions and HTTP error statuses become batchrun's `InferenceConnectionError` and
`InferenceStatusError` in one place (`Pool._attempt`); nothing outside this module sees an
aiohttp type. That place also keeps hostile answers out: every message built from what the
server said (an error's text, a connection error, the retry log line) has the request's token
replaced by ``***`` (a server may echo the Authorization header), and an answer is read at most
``max_response_bytes`` into memory; a larger one is the row's final `ResponseTooLargeError`. `Pool.stop` stops pulling and gives in-flight requests a grace period; those
still running after it are cancelled and *not* reported, so the caller leaves their rows
uncommitted and a resume sends them again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from batchrun.codecs import RequestCodec, request_url
from batchrun.errors import (
    BadResponseError,
    InferenceConnectionError,
    InferenceError,
    InferenceStatusError,
    ResponseTooLargeError,
)
from batchrun.net import (
    backoff,
    excerpt,
    parse_retry_after,
    retry_line,
    scrub_secrets,
    server_message,
)

__all__ = [
    "InferenceRetryPolicy",
    "Outcome",
    "Pool",
    "PoolStats",
    "Request",
    "secrets_of",
    "status_error",
]

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
"""HTTP statuses that are retried; any other error status is final for the request's rows."""

_WAKING_STATUS = 503


@dataclass(slots=True)
class Request:
    """One HTTP request carrying 1..batch_size rows.

    Attributes:
        key: opaque to the pool (the caller's row handles), handed back in the `Outcome`.
        body: the encoded body (`RequestCodec.encode`).
        n: how many rows it carries.
    """

    key: Any
    body: bytes
    n: int = 1


@dataclass(slots=True)
class Outcome:
    """How a request ended: results (one dict per row) or a final error.

    Attributes:
        request: the request.
        results: decoded per-row result fields on success (``len == request.n``), else None.
        error: the final failure on error (``.status`` such as ``http_400``, ``str(error)`` the
            server's message), else None.
        attempts: HTTP attempts made, retries included.
        latency_ms: from the first attempt's dispatch to the end, retries and waits included.
    """

    request: Request
    results: list[dict[str, Any]] | None
    error: InferenceError | None
    attempts: int
    latency_ms: float


@dataclass(slots=True, kw_only=True)
class PoolStats:
    """Counters of one `Pool.run`, readable while it runs."""

    sent: int = 0  # requests taken from the source and sent (first attempts)
    attempts: int = 0  # HTTP attempts, retries included
    succeeded: int = 0  # requests reported with results
    failed: int = 0  # requests reported with a final error
    retries: int = 0  # retries scheduled
    in_flight: int = 0  # requests sent and not yet reported
    cancelled: int = 0  # in-flight requests cancelled by stop() (not reported)
    throttled: int = 0  # 429 answers
    held_s: float = 0.0  # total time dispatch was held by Retry-After


class _Tries:
    """Per-request retry bookkeeping (only created once the first attempt has failed)."""

    __slots__ = ("attempts", "counted", "pending", "wake_since", "waking")

    def __init__(self, first: InferenceError) -> None:
        self.pending: InferenceError | None = first  # replayed as tenacity's attempt 1
        self.attempts = 1
        self.counted = 0  # failed attempts that use up max_attempts
        self.wake_since: float | None = None
        self.waking = False


class _Hold:
    """What the retry policy needs of the pool: the Retry-After hold every worker waits for,
    the counters, and what to scrub from a logged message (tenacity gets this, not the pool)."""

    __slots__ = ("secrets", "stats", "until")

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self.until = 0.0  # time.monotonic() until which dispatch is held
        self.secrets = secrets
        self.stats = PoolStats()

    def remaining(self) -> float:
        """Seconds the hold still lasts (0 or less when none)."""
        return self.until - time.monotonic()


class InferenceRetryPolicy:
    """Which failures are retried, how long to wait, when to give up: one tenacity object.

    Args:
        max_attempts: attempts per request, the first included (503s while the endpoint wakes
            up excepted).
        backoff_max: cap of the exponential backoff between attempts, seconds.
        backoff_initial: the first backoff, seconds; it doubles per failed attempt.
        scale_up_timeout: how long 503s are taken for an endpoint waking up, per request.
    """

    def __init__(
        self,
        *,
        max_attempts: int,
        backoff_max: float = 30.0,
        backoff_initial: float = 0.5,
        scale_up_timeout: float = 600.0,
    ) -> None:
        self.max_attempts = max_attempts
        self.backoff_max = backoff_max
        self.backoff_initial = min(backoff_initial, backoff_max)
        self.scale_up_timeout = scale_up_timeout
        self.retrying = AsyncRetrying(
            retry=retry_if_exception(self.retryable),
            stop=self._stop,
            wait=self._wait,
            before_sleep=self._log_retry,
            reraise=True,
        )

    @staticmethod
    def retryable(error: BaseException) -> bool:
        """True for failures worth another attempt."""
        if isinstance(error, InferenceStatusError):
            return error.http_status in RETRY_STATUSES
        return isinstance(error, InferenceConnectionError)

    def note(self, tries: _Tries, error: InferenceError) -> None:
        """Count a failed attempt; a 503 inside the wake-up window does not count."""
        if isinstance(error, InferenceStatusError) and error.http_status == _WAKING_STATUS:
            now = time.monotonic()
            if tries.wake_since is None:
                tries.wake_since = now
            if now - tries.wake_since < self.scale_up_timeout:
                tries.waking = True
                return
        tries.waking = False
        tries.counted += 1

    def _stop(self, state: RetryCallState) -> bool:
        tries: _Tries = state.args[0]
        return not tries.waking and tries.counted >= self.max_attempts

    def backoff(self, failures: int) -> float:
        """Seconds to wait after `failures` failed attempts: exponential, half of it jitter."""
        return backoff(failures, initial=self.backoff_initial, cap=self.backoff_max)

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, InferenceStatusError) and error.retry_after is not None:
            return 0.0  # the pool holds dispatch until Retry-After; no backoff on top
        return self.backoff(state.attempt_number)

    def _log_retry(self, state: RetryCallState) -> None:
        tries: _Tries = state.args[0]
        hold: _Hold = state.args[2]
        hold.stats.retries += 1
        error = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        wait = max(wait, hold.remaining())  # a Retry-After hold is part of the wait
        message = scrub_secrets(str(error), hold.secrets)
        if tries.waking and tries.wake_since is not None:
            log.warning(
                "retry (endpoint waking up, %.0fs of %.0fs) in %.1fs: %s %s",
                time.monotonic() - tries.wake_since,
                self.scale_up_timeout,
                wait,
                getattr(error, "status", "error"),
                message,
            )
        else:
            log.warning(
                "%s: %s %s",
                retry_line(tries.counted, self.max_attempts - 1, wait),
                getattr(error, "status", "error"),
                message,
            )


@dataclass(slots=True)
class _Slot:
    """One worker's state, so stop() knows what to cancel (and when)."""

    task: asyncio.Task[None] | None = None
    busy: bool = False  # a request is in flight (else: pulling from the source)
    reporting: bool = False  # in on_outcome: never cancelled by stop()
    cancel_at: asyncio.TimerHandle | None = None  # stop()'s cancellation, once scheduled
    stopped: bool = False  # cancelled by stop(), not by the caller


class _End(Exception):
    """The source is exhausted."""


_EXHAUSTED: Any = object()


class _Source:
    """Where the workers take requests from (see `Pool.run`)."""

    def take(self) -> Request | None:
        """The next request if it can be had without waiting, else None (then `take_later`).

        Raises:
            _End: the source is exhausted, or the pool is stopping.
        """
        raise NotImplementedError

    async def take_later(self) -> Request:
        """The next request, waiting for it.

        Raises:
            _End: the source is exhausted, or the pool is stopping.
        """
        raise NotImplementedError


class _SyncSource(_Source):
    """A plain iterator: taken without a coroutine; a None from it waits for `paused()`."""

    def __init__(
        self,
        pool: Pool,
        it: Iterator[Request | None],
        paused: Callable[[], Awaitable[None]] | None,
    ) -> None:
        self.pool = pool
        self.it = it
        self.paused = paused

    def take(self) -> Request | None:
        pool = self.pool
        if pool._stopping:
            raise _End
        request = next(self.it, _EXHAUSTED)
        if request is _EXHAUSTED:
            pool._stopping = True
            raise _End
        return request

    async def take_later(self) -> Request:
        if self.paused is None:
            raise ValueError("the requests paused (None) and Pool.run has no `paused`")
        while True:
            await self.paused()
            request = self.take()
            if request is not None:
                return request


class _AsyncSource(_Source):
    """An async iterator: one worker at a time in it (it may not be re-entered)."""

    def __init__(self, pool: Pool, it: AsyncIterator[Request]) -> None:
        self.pool = pool
        self.it = it
        self.lock = asyncio.Lock()

    def take(self) -> Request | None:
        return None

    async def take_later(self) -> Request:
        async with self.lock:
            if self.pool._stopping:
                raise _End
            try:
                return await anext(self.it)
            except StopAsyncIteration:
                self.pool._stopping = True
                raise _End from None


class Pool:
    """C workers sending requests to one endpoint URL, with retries; see the module docstring.

    Args:
        url: the endpoint's base URL; the codec's path is appended (`request_url`).
        codec: decodes answers into per-row result fields.
        concurrency: workers, and the connection limit of the session.
        request_timeout: seconds per attempt (connect, send, wait, read).
        max_attempts: attempts per request, the first included.
        headers: sent with every request (e.g. Authorization); never logged, and the
            Authorization value and its bare token are scrubbed from every message.
        max_requests_per_minute: pace attempts to at most this many a minute; 0: no limit.
        backoff_max: cap of the backoff between attempts, seconds.
        retry_after_max: cap of a Retry-After hold, seconds.
        scale_up_timeout: how long a waking endpoint's 503s do not use up attempts, seconds;
            also sent as ``X-Scale-Up-Timeout`` (at most the request timeout).
        backoff_initial: the first backoff, seconds.
        max_response_bytes: the largest answer read, in bytes; a larger one is the request's
            final `ResponseTooLargeError`.
    """

    def __init__(
        self,
        *,
        url: str,
        codec: RequestCodec,
        concurrency: int,
        request_timeout: float,
        max_attempts: int,
        headers: Mapping[str, str] | None = None,
        max_requests_per_minute: int = 0,
        backoff_max: float = 30.0,
        retry_after_max: float = 120.0,
        scale_up_timeout: float = 600.0,
        backoff_initial: float = 0.5,
        max_response_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        if concurrency < 1 or max_attempts < 1 or request_timeout <= 0 or max_response_bytes < 1:
            raise ValueError(
                "concurrency, max_attempts and max_response_bytes must be >= 1, request_timeout > 0"
            )
        self.url = request_url(url, codec.path)
        self.codec = codec
        self.concurrency = concurrency
        self.request_timeout = request_timeout
        self.retry_after_max = retry_after_max
        self.max_response_bytes = max_response_bytes
        self.policy = InferenceRetryPolicy(
            max_attempts=max_attempts,
            backoff_max=backoff_max,
            backoff_initial=backoff_initial,
            scale_up_timeout=scale_up_timeout,
        )
        hold = max(1, int(min(scale_up_timeout, request_timeout * 0.9)))
        self._headers = {
            "Content-Type": codec.content_type,
            "Accept": "application/json",
            "X-Scale-Up-Timeout": str(hold),
            **(headers or {}),
        }
        self._secrets = secrets_of(self._headers)
        self._secret_bytes = tuple(secret.encode("utf-8") for secret in self._secrets)
        self._interval = 60.0 / max_requests_per_minute if max_requests_per_minute > 0 else 0.0
        self._shared = _Hold(self._secrets)
        self._stopping = False
        self._slots: list[_Slot] = []
        self._next_slot = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"Pool(url={self.url!r}, concurrency={self.concurrency})"

    @property
    def stats(self) -> PoolStats:
        """The counters of the current (or last) `run`."""
        return self._shared.stats

    # --- running -------------------------------------------------------------------------

    async def run(
        self,
        requests: AsyncIterable[Request] | Iterable[Request | None],
        on_outcome: Callable[[Outcome], Awaitable[None] | None],
        *,
        paused: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Send every request from `requests`; call `on_outcome` once per request as each ends.

        Requests are pulled only when a worker is free. Returns when the source is exhausted
        and every request was reported, or after `stop` once the in-flight requests finished
        or were cancelled. An exception from the source or from `on_outcome` cancels the
        in-flight requests (unreported) and propagates.

        Args:
            requests: the requests, an iterable or an async iterable. An iterable may yield
                None to say that it cannot go on yet: the worker awaits `paused()` before it
                pulls again (a plain iterator with such pauses costs less than an async one).
            on_outcome: called with each request's `Outcome`.
            paused: what a worker awaits when the iterable yields None.
        """
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._shared.stats = PoolStats()
        source: _Source = (
            _AsyncSource(self, aiter(requests))
            if isinstance(requests, AsyncIterable)
            else _SyncSource(self, iter(requests), paused)
        )
        self._slots = [_Slot() for _ in range(self.concurrency)]
        connector = aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=0)
        timeout = aiohttp.ClientTimeout(total=self.request_timeout)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers=self._headers
        ) as session:
            self._session = session
            workers = []
            for i, slot in enumerate(self._slots):
                slot.task = asyncio.create_task(
                    self._work(slot, source, on_outcome), name=f"batchrun-pool-{i}"
                )
                workers.append(slot.task)
            try:
                done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
                failed = [t for t in done if not t.cancelled() and t.exception() is not None]
                if failed:
                    error = failed[0].exception()
                    assert error is not None
                    raise error
            finally:
                self._stopping = True
                for slot in self._slots:
                    if slot.cancel_at is not None:
                        slot.cancel_at.cancel()
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                self._session = None
                self._slots = []
                self._stopping = False  # the pool can run another source

    def stop(self, *, grace: float = 10.0) -> None:
        """Stop pulling requests; cancel those still in flight after `grace` seconds.

        Cancelled requests are not reported: their rows stay uncommitted. ``grace=0`` cancels
        at once; calling again with a shorter grace shortens it. Call from the loop's thread.
        """
        self._stopping = True
        loop = self._loop
        if loop is None:
            return
        now = loop.time()
        for slot in self._slots:
            if slot.stopped or slot.reporting or slot.task is None or slot.task.done():
                continue  # a reporting worker sees _stopping when it is done
            when = now + grace if slot.busy else now
            if slot.cancel_at is not None:
                if slot.cancel_at.when() <= when:
                    continue
                slot.cancel_at.cancel()
                slot.cancel_at = None
            if when <= now:
                self._cancel(slot)
            else:
                slot.cancel_at = loop.call_at(when, self._cancel, slot)

    def _cancel(self, slot: _Slot) -> None:
        """stop()'s cancellation of one worker (its request, if any, is not reported)."""
        slot.cancel_at = None
        if slot.reporting or slot.task is None or slot.task.done():
            return
        slot.stopped = True
        slot.task.cancel()

    # --- one worker ------------------------------------------------------------------------

    async def _work(
        self,
        slot: _Slot,
        source: _Source,
        on_outcome: Callable[[Outcome], Awaitable[None] | None],
    ) -> None:
        stats = self.stats
        shared = self._shared
        clock = time.monotonic
        take = source.take
        while not self._stopping:
            slot.busy = False
            try:
                request = take()
                if request is None:
                    request = await source.take_later()
                slot.busy = True
                stats.in_flight += 1
                stats.sent += 1
                start = clock()
                if shared.until > start or self._interval:
                    await self._gate()
                try:  # the first attempt is a plain await; only a failure meets tenacity
                    results = await self._attempt(request)
                except InferenceError as error:
                    outcome = await self._retry(request, error, start)
                else:
                    outcome = Outcome(request, results, None, 1, (clock() - start) * 1000.0)
            except _End:
                return
            except asyncio.CancelledError:
                if not slot.stopped:
                    raise
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                if slot.busy:  # cancelled by stop(): not reported
                    stats.in_flight -= 1
                    stats.cancelled += 1
                return
            stats.in_flight -= 1
            if outcome.error is None:
                stats.succeeded += 1
            else:
                stats.failed += 1
            slot.reporting = True
            try:
                result = on_outcome(outcome)
                if result is not None:
                    await result
            finally:
                slot.reporting = False

    async def _retry(self, request: Request, first: InferenceError, start: float) -> Outcome:
        """The slow path: the first attempt failed; tenacity decides what happens next."""
        tries = _Tries(first)
        self._failed(tries, first)
        try:
            results: list[dict[str, Any]] = await self.policy.retrying.copy()(
                self._again, tries, request, self._shared
            )
        except InferenceError as error:
            outcome = Outcome(request, None, error, tries.attempts, 0.0)
        else:
            outcome = Outcome(request, results, None, tries.attempts, 0.0)
        outcome.latency_ms = (time.monotonic() - start) * 1000.0
        return outcome

    async def _again(self, tries: _Tries, request: Request, hold: _Hold) -> list[dict[str, Any]]:
        """One attempt under tenacity; attempt 1 replays the fast path's failure."""
        if tries.pending is not None:
            error, tries.pending = tries.pending, None
            raise error
        await self._gate()
        tries.attempts += 1
        try:
            return await self._attempt(request)
        except InferenceError as error:
            self._failed(tries, error)
            raise

    def _failed(self, tries: _Tries, error: InferenceError) -> None:
        self.policy.note(tries, error)
        if isinstance(error, InferenceStatusError):
            if error.http_status == 429:
                self.stats.throttled += 1
            if error.retry_after is not None:
                self._hold(error.retry_after, error.http_status)

    # --- dispatch gate: Retry-After holds and the rate limit -------------------------------

    def _hold(self, seconds: float, status: int) -> None:
        """Hold every worker's next dispatch for `seconds` (capped at retry_after_max)."""
        now = time.monotonic()
        until = now + min(max(seconds, 0.0), self.retry_after_max)
        hold = self._shared
        if until <= hold.until:
            return
        if hold.until <= now:
            log.warning(
                "endpoint answered %d with Retry-After %.1fs: holding all dispatch until then",
                status,
                until - now,
            )
        self.stats.held_s += until - max(hold.until, now)
        hold.until = until

    async def _gate(self) -> None:
        while True:
            wait = self._shared.until - time.monotonic()
            if wait <= 0:
                break
            await asyncio.sleep(wait)
        if self._interval:
            now = time.monotonic()
            slot = max(now, self._next_slot)
            self._next_slot = slot + self._interval
            if slot > now:
                await asyncio.sleep(slot - now)

    # --- one attempt: the one place aiohttp meets batchrun's errors -------------------------

    async def _attempt(self, request: Request) -> list[dict[str, Any]]:
        """One HTTP attempt; the answer decoded into per-row result fields.

        Raises:
            InferenceStatusError: the endpoint answered an error status (its message inside).
            InferenceConnectionError: no answer: refused, dropped, or the per-attempt timeout.
            BadResponseError: a 200 batchrun cannot read for this task.
        """
        session = self._session
        assert session is not None
        self._shared.stats.attempts += 1
        try:
            async with session.post(self.url, data=request.body) as response:
                length = response.content_length
                if (
                    length is not None
                    and length <= self.max_response_bytes
                    and "Content-Encoding" not in response.headers
                ):
                    body = await response.read()  # the length bounds the read
                else:
                    body = await self._read(response, length)
                status = response.status
                if status >= 300:
                    raise status_error(
                        status, body, response.headers.get("Retry-After"), secrets=self._secrets
                    )
        except aiohttp.ClientError as e:
            text = f"{type(e).__name__}: {e}".rstrip(": ")
            raise InferenceConnectionError(scrub_secrets(text, self._secrets)) from e
        except TimeoutError as e:
            raise InferenceConnectionError(
                f"no answer within request_timeout = {self.request_timeout:g}s"
            ) from e
        try:
            return self.codec.decode_body(body, request.n)
        except BadResponseError as e:
            raise self._scrubbed(e, body, request.n) from None

    async def _read(self, response: aiohttp.ClientResponse, length: int | None) -> bytes:
        """The answer's body (of Content-Length `length`, if it says), never more than
        ``max_response_bytes`` of it in memory. `_attempt` reads a plain answer of a length
        under the cap itself.

        Raises:
            ResponseTooLargeError: its Content-Length, or what was read, is over the cap.
        """
        cap = self.max_response_bytes
        if length is not None and length > cap:
            raise _too_large(cap, f"Content-Length {length:,}")
        if length is not None and "Content-Encoding" not in response.headers:
            return await response.read()  # the length bounds the read
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_any():  # chunked, or decompressed
            size += len(chunk)
            if size > cap:
                raise _too_large(cap, f"stopped reading at {size:,} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _scrubbed(self, error: BadResponseError, body: bytes, n: int) -> BadResponseError:
        """`error` without the token: its message quotes the answer, which may echo it."""
        if any(secret in body for secret in self._secret_bytes):
            clean = body
            for secret in self._secret_bytes:
                clean = clean.replace(secret, b"***")
            try:  # the same message, built from the body without the token before it is cut
                self.codec.decode_body(clean, n)
            except BadResponseError as again:
                error = again
        message = scrub_secrets(str(error), self._secrets)
        return error if message == str(error) else BadResponseError(message)


def secrets_of(headers: Mapping[str, str]) -> tuple[str, ...]:
    """What must never be shown from `headers`: the Authorization value and its bare token."""
    found: list[str] = []
    for name, value in headers.items():
        if name.lower() != "authorization":
            continue
        value = value.strip()
        token = value.partition(" ")[2].strip()  # "Bearer <token>" -> "<token>"
        found += [value, token]
    return tuple(sorted({s for s in found if s}, key=len, reverse=True))


def _too_large(cap: int, seen: str) -> ResponseTooLargeError:
    return ResponseTooLargeError(
        f"the answer is larger than [run] max_response_bytes = {cap:,} bytes ({seen})"
    )


def status_error(
    status: int, body: bytes, retry_after: str | None, *, secrets: Sequence[str] = ()
) -> InferenceStatusError:
    """An `InferenceStatusError` carrying the server's own message (its ``error`` field).

    Args:
        status: the HTTP status.
        body: the answer's body.
        retry_after: its Retry-After header, if any.
        secrets: replaced by ``***`` in the message (the request's token, see `secrets_of`).
    """
    message = _server_message(body, secrets) or f"HTTP {status}"
    return InferenceStatusError(
        message, http_status=status, retry_after=parse_retry_after(retry_after)
    )


def _server_message(body: bytes, secrets: Sequence[str]) -> str:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return excerpt(body, secrets=secrets)
    return server_message(payload, secrets=secrets) or excerpt(body, secrets=secrets)
