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
- logs the first retry of each status at WARNING with its rows (`RetryLog`), then one line per
  ``retry_log_period`` (30 s) counting the retries by status, on the ``batchrun.pool.retries``
  logger (the CLI's ``-q`` silences it).

Failures that are the endpoint's rather than a row's (`batchrun.health`): every attempt feeds
the route's `RouteHealth` (a request with a route of its own, `Request.route`, feeds that
route's, and a verdict names that route's URL); when it trips (two distinct requests failing the same endpoint-wide
way before any success, or the last ``breaker_window`` all failing the same way after one), the
pool stops at once and sets `Pool.verdict`. Final failures of a class under suspicion are held
back, not reported, until the suspicion clears (then they are reported) or the breaker trips
(then they never are: their rows stay pending). An *outage* (connection errors, 502, 504, a 503
without Retry-After once the endpoint has served) that hits most requests in flight holds the
whole pool's dispatch; one request at a time probes at a backoff, attempts during the hold do
not use up ``max_attempts``, and past ``outage_timeout`` the pool stops with an ``outage``
verdict. ``max_requests_per_minute`` paces attempts on a fixed schedule, and
``max_tokens_per_minute`` through a pool-wide token bucket (`batchrun.ratelimit`) that each
200 answer's ``usage`` corrects. A run where nothing is in flight, no hold is active and every worker waits for the
caller's window for 2 × ``request_timeout`` stops with a ``stalled`` verdict, naming the
requests that left without an outcome (`Pool.lost`).

With ``concurrency = "auto"`` (`batchrun.adaptive`) the pool has ``max_concurrency`` workers
and a permit gate: each worker takes a permit before it pulls a request and gives it back at
the request's outcome, and the controller sets how many permits there are, from the latency of
first attempts and the overloads (429, 503 with Retry-After, timeouts) `_failed` sees. With a
fixed concurrency there is no gate and no controller.

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
import contextlib
import logging
import time
from collections import Counter
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

from batchrun.adaptive import AdaptiveLimit, Permits
from batchrun.codecs import RequestCodec, request_url
from batchrun.errors import (
    BadResponseError,
    InferenceConnectionError,
    InferenceError,
    InferenceStatusError,
    ResponseTooLargeError,
)
from batchrun.health import (
    RouteHealth,
    Trouble,
    Verdict,
    endpoint_wide_class,
    trouble_of,
)
from batchrun.health import breaker_window as window_for
from batchrun.net import (
    backoff,
    excerpt,
    parse_retry_after,
    retry_line,
    scrub_secrets,
    server_message,
)
from batchrun.ratelimit import Charge, TokenBucket

__all__ = [
    "InferenceRetryPolicy",
    "Outcome",
    "Pool",
    "PoolStats",
    "Request",
    "RetryLog",
    "secrets_of",
    "status_error",
]

log = logging.getLogger(__name__)
retry_log = logging.getLogger(__name__ + ".retries")
"""The retry lines' logger (`RetryLog`): the CLI's ``-q`` raises its level to ERROR."""

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
        route: a path of its own, joined to the endpoint's base URL (`request_url`) instead of
            the codec's (an OpenAI batch line's ``url``); None: the codec's path.
    """

    key: Any
    body: bytes
    n: int = 1
    route: str | None = None


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
    tokens: int = 0  # tokens counted by max_tokens_per_minute (the answers' usage, or estimates)
    token_waits: int = 0  # dispatches that waited for the token bucket
    withheld: int = 0  # final failures held back while suspected endpoint-wide (not reported)
    outages: int = 0  # outage holds begun
    outage_s: float = 0.0  # total time dispatch was held by outages
    probes: int = 0  # attempts sent as an outage's probe


class _Tries:
    """Per-request retry bookkeeping (only created once the first attempt has failed)."""

    __slots__ = (
        "attempts",
        "counted",
        "epoch",
        "outage_counted",
        "pending",
        "wake_since",
        "waking",
    )

    def __init__(self, first: InferenceError) -> None:
        self.pending: InferenceError | None = first  # replayed as tenacity's attempt 1
        self.attempts = 1
        self.counted = 0  # failed attempts that use up max_attempts
        self.outage_counted = 0  # of them, outage failures (refunded once a hold comes)
        self.epoch = 0  # the pool's outage epoch when last counted
        self.wake_since: float | None = None
        self.waking = False


class RetryLog:
    """The retry lines: the first retry of each status at WARNING naming its rows, then one
    line per `period` seconds counting the rest (``retries in the last 30 s: 412 × http_503``).

    Args:
        period: seconds between roll-up lines.
        describe: names a request's rows from its key (e.g. ``row id 'a'``), or None.
    """

    __slots__ = ("counts", "describe", "period", "seen", "since")

    def __init__(self, period: float = 30.0, describe: Callable[[Any], str] | None = None) -> None:
        self.period = period
        self.describe = describe
        self.seen: set[str] = set()
        self.counts: Counter[str] = Counter()
        self.since = time.monotonic()

    def retry(self, status: str, key: Any, text: str) -> None:
        """Log (or count) one retry of a request with key `key`; `text` is the full line."""
        now = time.monotonic()
        if status in self.seen:
            self.counts[status] += 1
        else:
            self.seen.add(status)
            rows = self.describe(key) if self.describe is not None else ""
            retry_log.warning(
                "%s%s (further retries: one line every %gs)",
                f"{rows}: " if rows else "",
                text,
                self.period,
            )
        if now - self.since >= self.period:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Log the retries counted since the last line, if any."""
        now = time.monotonic() if now is None else now
        if self.counts:
            retry_log.warning(
                "retries in the last %.0f s: %s",
                now - self.since,
                ", ".join(f"{n:,} × {status}" for status, n in self.counts.most_common()),
            )
            self.counts.clear()
        self.since = now


class _Hold:
    """What the retry policy needs of the pool: the Retry-After hold every worker waits for,
    the outage hold, the counters, the retry log, and what to scrub from a logged message
    (tenacity gets this, not the pool)."""

    __slots__ = (
        "changed",
        "epoch",
        "hits",
        "next_probe",
        "outage_message",
        "outage_since",
        "outage_waking",
        "probe_failures",
        "probing",
        "retry_log",
        "secrets",
        "stats",
        "until",
    )

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self.until = 0.0  # time.monotonic() until which dispatch is held
        self.secrets = secrets
        self.stats = PoolStats()
        self.retry_log = RetryLog()
        # the outage hold
        self.outage_since: float | None = None  # when it began; None: no hold
        self.outage_message = ""
        self.outage_waking = False  # the last outage failure was a 503 (maybe a wake-up)
        self.epoch = 0  # holds begun (a request's earlier outage failures are refunded)
        self.hits: set[int] = set()  # requests failing with an outage since the last success
        self.probing: Request | None = None  # the request sent as the probe, if one is out
        self.next_probe = 0.0
        self.probe_failures = 0
        self.changed = asyncio.Event()  # set (and replaced) when the hold changes

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
        request: Request = state.args[1]
        hold: _Hold = state.args[2]
        hold.stats.retries += 1
        error = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        wait = max(wait, hold.remaining())  # a Retry-After hold is part of the wait
        message = scrub_secrets(str(error), hold.secrets)
        status = getattr(error, "status", "error")
        if hold.outage_since is not None:
            text = f"retry (outage hold) in {wait:.1f}s: {status} {message}"
        elif tries.waking and tries.wake_since is not None:
            text = (
                f"retry (endpoint waking up, {time.monotonic() - tries.wake_since:.0f}s of "
                f"{self.scale_up_timeout:.0f}s) in {wait:.1f}s: {status} {message}"
            )
        else:
            text = f"{retry_line(tries.counted, self.max_attempts - 1, wait)}: {status} {message}"
        hold.retry_log.retry(status, request.key, text)


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
        pool = self.pool
        while True:
            pool._paused += 1  # the stall watch counts the workers waiting for the caller
            try:
                await self.paused()
            finally:
                pool._paused -= 1
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
        max_tokens_per_minute: pace attempts to at most this many estimated tokens a minute,
            corrected by the answers' usage (`batchrun.ratelimit.TokenBucket`); 0: no limit.
        token_bucket: the bucket to draw from instead of a new one (a run's pools share one,
            so a second pool does not start with a second full minute's worth).
        backoff_max: cap of the backoff between attempts, seconds.
        retry_after_max: cap of a Retry-After hold, seconds.
        scale_up_timeout: how long a waking endpoint's 503s do not use up attempts, seconds;
            also sent as ``X-Scale-Up-Timeout`` (at most the request timeout).
        backoff_initial: the first backoff, seconds.
        max_response_bytes: the largest answer read, in bytes; a larger one is the request's
            final `ResponseTooLargeError`.
        breaker_window: settled requests that must all fail the same endpoint-wide way, once
            one has succeeded, to stop the pool; 0: max(8, concurrency / 4).
        outage_timeout: how long an outage holds dispatch before the pool stops, seconds.
        retry_log_period: seconds between the retry log's roll-up lines.
        describe: names a request's rows from its key, for log lines and the stall's message.
        adaptive: ``concurrency = "auto"``: the controller whose limit caps the requests in
            flight (`batchrun.adaptive`); `concurrency` is then the most workers, and each takes
            a permit before it sends. None: `concurrency` fixed.

    Attributes:
        verdict: why the pool stopped on its own (endpoint-wide failure, outage, stall), or
            None; set by the end of `run`.
        lost: requests that left a worker without an outcome (a worker cancelled from
            outside): their rows have no outcome and make the run a stalled one.
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
        breaker_window: int = 0,
        outage_timeout: float = 300.0,
        retry_log_period: float = 30.0,
        describe: Callable[[Any], str] | None = None,
        max_tokens_per_minute: int = 0,
        token_bucket: TokenBucket | None = None,
        adaptive: AdaptiveLimit | None = None,
    ) -> None:
        if concurrency < 1 or max_attempts < 1 or request_timeout <= 0 or max_response_bytes < 1:
            raise ValueError(
                "concurrency, max_attempts and max_response_bytes must be >= 1, request_timeout > 0"
            )
        self.url = request_url(url, codec.path)
        self.base_url = url
        self._route_urls: dict[str, str] = {}
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
        self.tokens = token_bucket or (
            TokenBucket(max_tokens_per_minute) if max_tokens_per_minute > 0 else None
        )
        self._charges: dict[int, Charge] = {}  # id(request) -> its attempt's token charge
        self._no_usage_said = False
        self.breaker_window = window_for(breaker_window, concurrency)
        self.outage_timeout = outage_timeout
        self.retry_log_period = retry_log_period
        self.describe = describe
        self.adaptive = adaptive
        self.permits: Permits | None = None  # with `adaptive`, during a run
        self.stall_after = 2.0 * request_timeout
        self.verdict: Verdict | None = None
        self.lost: list[Request] = []
        self.on_hold: Callable[[float], None] | None = None
        """Called with the seconds of each Retry-After hold this pool begins or extends (a
        shard passes it on, so every shard of a run holds)."""
        self._health = RouteHealth(self.breaker_window)
        self._routes: dict[str, RouteHealth] = {}  # the breakers of requests' own routes
        self._trouble = True  # a suspicion or hold may need clearing on the next success
        self._held: list[tuple[str, Outcome]] = []
        self._release_due = False
        self._halted = False  # stop() was called
        self._paused = 0  # workers waiting in the source's `paused()`
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
        or were cancelled, or when the pool stopped on its own (`verdict` says why: the
        requests it did not report are left for a later run). An exception from the source or
        from `on_outcome` cancels the in-flight requests (unreported) and propagates.

        Args:
            requests: the requests, an iterable or an async iterable. An iterable may yield
                None to say that it cannot go on yet: the worker awaits `paused()` before it
                pulls again (a plain iterator with such pauses costs less than an async one).
            on_outcome: called with each request's `Outcome`.
            paused: what a worker awaits when the iterable yields None.
        """
        loop = asyncio.get_running_loop()
        self._loop = loop
        shared = self._shared = _Hold(self._secrets)
        shared.retry_log = RetryLog(self.retry_log_period, self.describe)
        self.verdict = None
        self.lost = []
        self._health = RouteHealth(self.breaker_window)
        self._routes = {}
        self._trouble = True
        self._held = []
        self._release_due = False
        self._halted = False
        self._paused = 0
        source: _Source = (
            _AsyncSource(self, aiter(requests))
            if isinstance(requests, AsyncIterable)
            else _SyncSource(self, iter(requests), paused)
        )
        self._slots = [_Slot() for _ in range(self.concurrency)]
        if self.adaptive is not None:
            self.permits = Permits(self.adaptive)
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
            watch = asyncio.create_task(self._watch_stall(), name="batchrun-pool-stall")
            try:
                done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
                failed = [t for t in done if not t.cancelled() and t.exception() is not None]
                if failed:
                    error = failed[0].exception()
                    assert error is not None
                    raise error
                if self.verdict is None and self.lost:
                    self._trip("stalled", self._lost_text(), len(self.lost))
                if self.verdict is None and not self._halted and self._held:
                    held, self._held = self._held, []
                    for _, outcome in held:  # never proved endpoint-wide: the rows' own
                        self.stats.withheld -= 1
                        self.stats.failed += 1
                        result = on_outcome(outcome)
                        if result is not None:
                            await result
            finally:
                watch.cancel()
                shared.retry_log.flush()
                self._stopping = True
                for slot in self._slots:
                    if slot.cancel_at is not None:
                        slot.cancel_at.cancel()
                for task in workers:
                    task.cancel()
                await asyncio.gather(watch, *workers, return_exceptions=True)
                self._session = None
                self._slots = []
                self._stopping = False  # the pool can run another source

    def stop(self, *, grace: float = 10.0) -> None:
        """Stop pulling requests; cancel those still in flight after `grace` seconds.

        Cancelled requests are not reported: their rows stay uncommitted. ``grace=0`` cancels
        at once; calling again with a shorter grace shortens it. Call from the loop's thread.
        """
        self._stopping = True
        self._halted = True
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

    # --- stopping on its own: endpoint-wide failures, outages, stalls ----------------------

    def _trip(self, failure: str, message: str, requests: int, url: str | None = None) -> None:
        """Stop the pool at once with a verdict (`url`: the route that failed, else the pool's
        URL); what it holds back stays unreported."""
        if self.verdict is not None:
            return
        url = url or self.url
        self.verdict = Verdict(failure=failure, url=url, message=message, requests=requests)
        log.info("stopping dispatch: %s", self.verdict.line())
        self.stop(grace=0)

    def _lost_text(self) -> str:
        describe = self.describe or repr
        names = [describe(r.key) for r in self.lost[:5]]
        more = f" and {len(self.lost) - 5:,} more" if len(self.lost) > 5 else ""
        return "no outcome for " + "; ".join(names) + more

    async def _watch_stall(self) -> None:
        """Trip `stalled` when nothing is in flight, no hold is active and every worker has
        waited for the caller's window for `stall_after` seconds; and roll the retry log up
        on time even when no retry comes to do it."""
        shared = self._shared
        period = max(0.01, min(1.0, self.stall_after / 8, shared.retry_log.period / 4))
        since: float | None = None
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            retries = shared.retry_log
            if retries.counts and now - retries.since >= retries.period:
                retries.flush(now)
            alive = sum(1 for s in self._slots if s.task is not None and not s.task.done())
            permits = self.permits  # with "auto", the workers past the limit wait there
            waiting = self._paused + (permits.waiting if permits is not None else 0)
            quiet = (
                alive > 0
                and waiting >= alive
                and self.stats.in_flight <= 0
                and shared.until <= now
                and shared.outage_since is None
            )
            if not quiet:
                since = None
            elif since is None:
                since = now
            elif now - since >= self.stall_after:
                what = self._lost_text() if self.lost else "no request left without an outcome"
                self._trip(
                    "stalled",
                    f"rows pending with nothing in flight for {now - since:.0f}s "
                    f"(2 × request_timeout); {what}",
                    len(self.lost),
                )
                return

    def _suspect(self, error: InferenceError, request: Request) -> str | None:
        """The class under which a final failure is held back (None: report it now)."""
        failure = endpoint_wide_class(error)
        if failure is None:
            return None
        if failure == "unreachable" and self._health.served:
            return None
        return failure if self._health_of(request).suspected(failure) else None

    def _health_of(self, request: Request) -> RouteHealth:
        """The breaker of `request`'s route: a request with a route of its own
        (`Request.route`) is counted on that route's; `_health` is the pool's URL's, and knows
        whether the endpoint has served at all."""
        if request.route is None:
            return self._health
        health = self._routes.get(request.route)
        if health is None:
            health = self._routes[request.route] = RouteHealth(self.breaker_window)
        return health

    async def _release(
        self,
        slot: _Slot,
        on_outcome: Callable[[Outcome], Awaitable[None] | None],
        *,
        everything: bool = False,
    ) -> None:
        """Report the held-back failures no longer suspected (`everything`: all of them)."""
        self._release_due = False
        keep: list[tuple[str, Outcome]] = []
        out: list[Outcome] = []
        for failure, outcome in self._held:
            if everything or not self._health_of(outcome.request).suspected(failure):
                out.append(outcome)
            else:
                keep.append((failure, outcome))
        self._held = keep
        stats = self.stats
        for outcome in out:
            if self.verdict is not None:
                return
            stats.withheld -= 1
            stats.failed += 1
            slot.reporting = True
            try:
                result = on_outcome(outcome)
                if result is not None:
                    await result
            finally:
                slot.reporting = False

    def _cleared(self, request: Request) -> None:
        """A request succeeded while something was suspected or held (or on its own route)."""
        self._trouble = False
        self._health.ok()
        if request.route is not None:
            self._health_of(request).ok()
        shared = self._shared
        shared.hits.clear()
        if shared.outage_since is not None:
            self._outage_over()
        if self._held:
            self._release_due = True

    def _outage_hit(self, request: Request, error: InferenceError) -> None:
        """An attempt failed with an outage: probe bookkeeping, or maybe begin a hold."""
        shared = self._shared
        now = time.monotonic()
        shared.outage_message = str(error)
        # a 503 is also how a scaled-to-zero endpoint answers while a replica starts
        shared.outage_waking = isinstance(error, InferenceStatusError) and error.http_status == 503
        if shared.outage_since is not None:
            if shared.probing is request:  # the probe failed: the next one after a backoff
                shared.probing = None
                shared.probe_failures += 1
                shared.next_probe = now + self.policy.backoff(shared.probe_failures + 1)
                self._changed()
            return
        shared.hits.add(id(request))
        in_flight = self.stats.in_flight
        if len(shared.hits) < max(2, (in_flight + 1) // 2):
            return
        shared.outage_since = now
        shared.epoch += 1
        shared.probe_failures = 0
        shared.probing = None
        shared.next_probe = now + self.policy.backoff(1)
        self.stats.outages += 1
        log.warning(
            "%d of %d requests in flight failed (%s): holding all dispatch, probing with one "
            "request, for up to outage_timeout = %gs",
            len(shared.hits),
            in_flight,
            error.status,
            self.outage_timeout,
        )

    def _outage_limit(self) -> float:
        """How long the current outage may hold: outage_timeout, or scale_up_timeout if
        longer while the endpoint answers 503 (a scaled-to-zero endpoint waking up)."""
        if self._shared.outage_waking:
            return max(self.outage_timeout, self.policy.scale_up_timeout)
        return self.outage_timeout

    def _outage_over(self) -> None:
        shared = self._shared
        since = shared.outage_since
        if since is None:
            return
        held = time.monotonic() - since
        shared.outage_since = None
        shared.probing = None
        shared.hits.clear()
        self.stats.outage_s += held
        log.warning("the endpoint answers again after %.1fs: dispatch goes on", held)
        self._changed()

    def _changed(self) -> None:
        shared = self._shared
        shared.changed.set()
        shared.changed = asyncio.Event()

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
        permits = self.permits
        request: Request | None = None
        while not self._stopping:
            slot.busy = False
            permit = False
            try:
                if permits is not None:
                    await permits.acquire()
                    permit = True
                request = take()
                if request is None:
                    if self._held:  # nothing settles while every worker waits: report them
                        await self._release(slot, on_outcome, everything=True)
                    request = await source.take_later()
                slot.busy = True
                stats.in_flight += 1
                stats.sent += 1
                start = clock()
                if (
                    shared.until > start
                    or self._interval
                    or shared.outage_since is not None
                    or self.tokens is not None
                ):
                    await self._gate(request)
                try:  # the first attempt is a plain await; only a failure meets tenacity
                    results = await self._attempt(request)
                except InferenceError as error:
                    outcome = await self._retry(request, error, start)
                else:
                    if self._trouble or request.route is not None:
                        self._cleared(request)
                    outcome = Outcome(request, results, None, 1, (clock() - start) * 1000.0)
            except _End:
                if permit:
                    permits.release()  # type: ignore[union-attr]
                return
            except asyncio.CancelledError:
                if permit:
                    permits.release()  # type: ignore[union-attr]
                if not slot.stopped:
                    if slot.busy and not self._stopping and request is not None:
                        self._lose(request)
                    raise
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                if slot.busy:  # cancelled by stop(): not reported
                    stats.in_flight -= 1
                    stats.cancelled += 1
                return
            stats.in_flight -= 1
            if permits is not None:
                self._adapt(outcome)
            if outcome.error is None:
                stats.succeeded += 1
            elif self.verdict is not None:
                continue  # stopped endpoint-wide: the rows stay pending
            else:
                failure = self._suspect(outcome.error, request)
                if failure is not None:  # maybe the endpoint's: held until it is known
                    self._held.append((failure, outcome))
                    stats.withheld += 1
                    continue
                stats.failed += 1
            slot.reporting = True
            try:
                result = on_outcome(outcome)
                if result is not None:
                    await result
            finally:
                slot.reporting = False
            if self._release_due:
                await self._release(slot, on_outcome)

    def _adapt(self, outcome: Outcome) -> None:
        """``concurrency = "auto"``: a first-attempt answer is a latency sample; the permit
        goes back (the overloads were counted as they came, in `_failed`)."""
        permits = self.permits
        assert permits is not None and self.adaptive is not None
        if outcome.error is None and outcome.attempts == 1:
            self.adaptive.sample(outcome.latency_ms / 1000.0)
        permits.release()

    def _lose(self, request: Request) -> None:
        """A worker was cancelled from outside with `request` in flight: no outcome for it."""
        self.stats.in_flight -= 1
        self.lost.append(request)
        describe = self.describe or repr
        log.warning(
            "a pool worker was cancelled with a request in flight (%s): it has no outcome",
            describe(request.key),
        )

    async def _retry(self, request: Request, first: InferenceError, start: float) -> Outcome:
        """The slow path: the first attempt failed; tenacity decides what happens next."""
        tries = _Tries(first)
        self._failed(tries, first, request)
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
        await self._gate(request)
        tries.attempts += 1
        try:
            results = await self._attempt(request)
        except InferenceError as error:
            self._failed(tries, error, request)
            raise
        if self._trouble or request.route is not None:
            self._cleared(request)
        return results

    def _failed(self, tries: _Tries, error: InferenceError, request: Request) -> None:
        """Count a failed attempt: the breaker, the outage hold, the attempts it uses up."""
        shared = self._shared
        if self.adaptive is not None and _overload(error):
            self.adaptive.overload()
        if tries.epoch != shared.epoch:  # a hold came since: its outage failures are free
            tries.counted -= tries.outage_counted
            tries.outage_counted = 0
            tries.epoch = shared.epoch
        self._trouble = True
        health = self._health_of(request)
        failure = endpoint_wide_class(error)
        if failure == "unreachable" and self._health.served:
            failure = None  # once it has served, no connection is an outage
        if health.failed(id(request), failure):
            url = None if request.route is None else self._route_url(request.route)
            self._trip(failure or "error", str(error), health.distinct(failure or ""), url)
            return
        if self._held:
            self._release_due = True
        trouble = trouble_of(error, served=self._health.served)
        if trouble is Trouble.OUTAGE:
            self._outage_hit(request, error)
            if shared.outage_since is not None:
                tries.waking = False  # attempts during a hold do not use up max_attempts
                return
            before = tries.counted
            self.policy.note(tries, error)
            tries.outage_counted += tries.counted - before
        else:
            if shared.outage_since is not None and shared.probing is request:
                self._outage_over()  # the probe got an answer: the endpoint is back
            self.policy.note(tries, error)
        if isinstance(error, InferenceStatusError):
            if error.http_status == 429:
                self.stats.throttled += 1
            if error.retry_after is not None:
                self._hold(error.retry_after, error.http_status)

    # --- dispatch gate: Retry-After and outage holds, the rate limit -----------------------

    def hold(self, seconds: float) -> None:
        """Hold dispatch for `seconds`, as another shard's Retry-After asks."""
        self._hold(seconds, None)

    def _hold(self, seconds: float, status: int | None) -> None:
        """Hold every worker's next dispatch for `seconds` (capped at retry_after_max);
        `status` None: the hold came from another shard."""
        now = time.monotonic()
        until = now + min(max(seconds, 0.0), self.retry_after_max)
        hold = self._shared
        if until <= hold.until:
            return
        if hold.until <= now:
            log.warning(
                "%s with Retry-After %.1fs: holding all dispatch until then",
                "another shard was answered" if status is None else f"endpoint answered {status}",
                until - now,
            )
        self.stats.held_s += until - max(hold.until, now)
        hold.until = until
        if status is not None and self.on_hold is not None:
            self.on_hold(until - now)

    async def _gate(self, request: Request) -> None:
        shared = self._shared
        if self.tokens is not None:  # first: a Retry-After that comes meanwhile still holds
            await self._spend(request)
        while True:
            if shared.outage_since is not None:
                await self._outage_turn(request)
            wait = shared.until - time.monotonic()
            if wait <= 0:
                break
            await asyncio.sleep(wait)
        if self._interval:
            now = time.monotonic()
            slot = max(now, self._next_slot)
            self._next_slot = slot + self._interval
            if slot > now:
                await asyncio.sleep(slot - now)

    async def _spend(self, request: Request) -> None:
        """Take the attempt's estimated tokens from the bucket, waiting for them if need be."""
        tokens = self.tokens
        assert tokens is not None
        charge = tokens.charge(*self.codec.prompt_size(request.body))
        self._charges[id(request)] = charge
        waits = tokens.waits
        await tokens.acquire(charge)
        self.stats.token_waits += tokens.waits - waits
        self.stats.tokens += charge.tokens

    def _settle(self, charge: Charge, body: bytes) -> None:
        """Correct the token bucket by the usage a 200 answer reports."""
        tokens = self.tokens
        assert tokens is not None
        try:
            usage = self.codec.usage_tokens(orjson.loads(body))
        except orjson.JSONDecodeError:
            return
        if usage is None and not self._no_usage_said:
            self._no_usage_said = True
            log.info(
                "the endpoint's answers carry no token usage: max_tokens_per_minute counts "
                "the estimates (%.1f characters a token, plus max_tokens)",
                tokens.chars_per_token,
            )
        self.stats.tokens += tokens.settle(charge, usage) - charge.tokens

    async def _outage_turn(self, request: Request) -> None:
        """Wait while an outage holds dispatch: until it is over, or `request` is the probe."""
        shared = self._shared
        while (since := shared.outage_since) is not None:
            now = time.monotonic()
            if self.verdict is not None:
                await asyncio.sleep(0.05)  # stop(grace=0) cancels this worker
                continue
            limit = self._outage_limit()
            if now - since >= limit:
                self._trip(
                    "outage",
                    f"no answer for {now - since:.1f}s (outage_timeout = {limit:g}s); last: "
                    f"{shared.outage_message}",
                    len(shared.hits),
                )
                continue
            if shared.probing is None and now >= shared.next_probe:
                shared.probing = request
                self.stats.probes += 1
                return
            wait = since + limit - now
            if shared.probing is None:
                wait = min(wait, shared.next_probe - now)
            event = shared.changed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait, 0.001)):  # keeps a stop()'s cancel
                    await event.wait()

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
        charge = self._charges.pop(id(request), None) if self._charges else None
        url = self.url if request.route is None else self._route_url(request.route)
        try:
            async with session.post(url, data=request.body) as response:
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
                headers = response.headers
                if status >= 300:
                    raise status_error(
                        status, body, headers.get("Retry-After"), secrets=self._secrets
                    )
        except aiohttp.ClientError as e:
            text = f"{type(e).__name__}: {e}".rstrip(": ")
            raise InferenceConnectionError(
                scrub_secrets(text, self._secrets),
                unreachable=isinstance(e, aiohttp.ClientConnectorError),  # refused, DNS, TLS
            ) from e
        except TimeoutError as e:
            raise InferenceConnectionError(
                f"no answer within request_timeout = {self.request_timeout:g}s"
            ) from e
        if charge is not None:
            self._settle(charge, body)
        try:
            return self.codec.decode_answer(body, request.n, headers)
        except BadResponseError as e:
            raise self._scrubbed(e, body, request.n) from None

    def _route_url(self, route: str) -> str:
        """The URL of a request's own route (a request with `Request.route`)."""
        url = self._route_urls.get(route)
        if url is None:
            url = self._route_urls[route] = request_url(self.base_url, route)
        return url

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


def _overload(error: InferenceError) -> bool:
    """An answer that says "fewer in flight": a 429, a 503 with Retry-After, a timeout."""
    if isinstance(error, InferenceStatusError):
        status = error.http_status
        return status == 429 or (status == _WAKING_STATUS and error.retry_after is not None)
    return isinstance(error, InferenceConnectionError) and isinstance(error.__cause__, TimeoutError)


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
