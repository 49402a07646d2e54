"""`[run] concurrency = "auto"`: a controller that finds and tracks the endpoint's knee, and the
permit gate through which the pool's workers send.

The algorithm is a delay-based window controller in the style of TCP Vegas (Brakmo &
Peterson, "TCP Vegas: End to End Congestion Avoidance on a Global Internet", IEEE JSAC 1995:
compare each round's delay with the lowest delay seen, the *floor*, and grow or shrink the
window before losses happen) with the gradient of Netflix's concurrency-limits library
(``Gradient2Limit``: the limit times ``tolerance × floor / latency``, never below half, with a
queue allowance of ``sqrt(limit)`` as the additive step), and AIMD's multiplicative decrease on
losses (Jacobson, "Congestion Avoidance and Control", SIGCOMM 1988), here an overload answer:
a 429, a 503 with Retry-After, a timeout.

The controller works in *rounds*: a round ends once it has twice as many latency samples as
the limit (every permit went round twice: completions come in waves after a change) and has
lasted `min_round_s`; the round right after a change only settles (its numbers mix the old
limit and the new; it ends after one sample per permit). At the end of a round:

- an overload (at once, not at the round's end): limit × `backoff` (0.5), and a new round;
- the round's median latency over `tolerance` (1.5) × the reference latency (the latency at
  the last limit that paid off, at most tolerance × the floor, the lowest median seen):
  queueing, back off by the gradient, limit × max(0.5, tolerance × reference / median);
- a round measuring an increase whose throughput did not rise with it (less than `min_gain`
  of the relative step: at or past the knee) probes one step below the limit before it: if
  that costs throughput, back to that limit, and hold; if not, lower still (after the
  capacity shrank, the old limit only queues);
- otherwise the limit doubles until the first decrease (slow start), then grows by
  sqrt(limit) while each rise pays off; holding, it probes one step up every `probe_every`
  rounds (more capacity, say a second replica, shows only when tried); each probe that finds
  the same knee again (up gains nothing, a step below costs) doubles the rounds to the next
  one, up to `probe_every_max` (the step below costs throughput every time: at a knee held
  for minutes the probes must grow rare), and any change of the endpoint's answers (an
  increase that pays off, an overload, a latency back-off) brings it back to `probe_every`;
- when the limit is down at `initial` and the latency is still over tolerance, the endpoint
  became slower: its latency is taken as the new reference and floor.

Everything reads a clock given to it, so the tests drive it on a fake one.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections import deque
from collections.abc import Callable

__all__ = ["AdaptiveLimit", "Permits", "for_run"]


class AdaptiveLimit:
    """The concurrency limit of one pool, between `minimum` and `maximum`.

    Args:
        maximum: the highest limit (`[run] max_concurrency`).
        initial: where it starts (at most `maximum`).
        minimum: the lowest limit.
        tolerance: latency over this × the reference latency is queueing.
        backoff: the factor applied on an overload (429, 503 with Retry-After, timeout).
        min_gain: an increase pays off when the throughput rises by at least this fraction of
            the relative step (1: throughput in proportion to the limit).
        probe_every: rounds held between two probes one step up.
        probe_every_max: the most rounds between two probes, after the knee was found again
            and again.
        min_round_s: the shortest round, seconds.
        clock: seconds, monotonic (`time.monotonic`; a fake one in tests).
    """

    __slots__ = (
        "_area",
        "_began",
        "_below",
        "_clock",
        "_holds",
        "_last_change",
        "_last_cut",
        "_prev",
        "_probe_wait",
        "_round_start",
        "_samples",
        "_settle",
        "_slow_start",
        "backoff",
        "decreases",
        "floor",
        "increases",
        "initial",
        "limit",
        "maximum",
        "min_gain",
        "min_round_s",
        "minimum",
        "probe_every",
        "probe_every_max",
        "reference",
        "tolerance",
    )

    def __init__(
        self,
        *,
        maximum: int,
        initial: int = 4,
        minimum: int = 1,
        tolerance: float = 1.5,
        backoff: float = 0.5,
        min_gain: float = 0.15,
        probe_every: int = 8,
        probe_every_max: int = 32,
        min_round_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= minimum <= maximum:
            raise ValueError("need 1 <= minimum <= maximum")
        self.maximum = maximum
        self.minimum = minimum
        self.initial = min(max(initial, minimum), maximum)
        self.tolerance = tolerance
        self.backoff = backoff
        self.min_gain = min_gain
        self.probe_every = probe_every
        self.probe_every_max = max(probe_every, probe_every_max)
        self._probe_wait = probe_every  # rounds to hold before the next probe
        self.min_round_s = min_round_s
        self._clock = clock
        self.limit = self.initial
        self.reference: float | None = None  # latency at the last limit that paid off
        self.floor: float | None = None  # the lowest round median (Vegas's baseRTT)
        self.increases = 0
        self.decreases = 0
        self._slow_start = True
        self._settle = False  # the next round only settles after a change
        self._holds = 0  # rounds held since the last probe
        self._below: tuple[int, float] | None = None  # (limit, throughput) above a step down
        self._samples: list[float] = []
        self._last_cut = -math.inf  # when an overload last cut the limit
        self._prev: tuple[int, float] | None = None  # (limit, throughput) before the last rise
        now = clock()
        self._began = self._round_start = self._last_change = now
        self._area = 0.0  # ∫ limit dt, for the mean

    def __repr__(self) -> str:
        return f"AdaptiveLimit(limit={self.limit}, reference={self.reference}, max={self.maximum})"

    def sample(self, latency_s: float) -> bool:
        """A request answered in `latency_s` at its first attempt; True if the limit changed."""
        self._samples.append(latency_s)
        return self._maybe_end_round()

    def overload(self) -> bool:
        """A 429, a 503 with Retry-After or a timeout: limit × backoff at once, and a new
        round; the overloads of the next `min_round_s` are taken for the same one (AIMD cuts
        once per round trip). True if the limit changed."""
        now = self._clock()
        if now - self._last_cut < self.min_round_s:
            return False
        self._last_cut = self._round_start = now
        self._samples = []
        self._probe_wait = self.probe_every
        return self._down(math.floor(self.limit * self.backoff), now)

    def mean(self) -> float:
        """The time-weighted mean of the limit since the start."""
        now = self._clock()
        span = now - self._began
        if span <= 0:
            return float(self.limit)
        return (self._area + self.limit * (now - self._last_change)) / span

    def _set(self, limit: int, now: float) -> bool:
        limit = min(max(limit, self.minimum), self.maximum)
        if limit == self.limit:
            return False
        self._area += self.limit * (now - self._last_change)
        self._last_change = now
        if limit > self.limit:
            self.increases += 1
        else:
            self.decreases += 1
        self.limit = limit
        return True

    def _maybe_end_round(self) -> bool:
        now = self._clock()
        span = now - self._round_start
        samples = self._samples
        need = self.limit if self._settle else 2 * self.limit  # a measure spans 2 round trips
        if span < self.min_round_s or len(samples) < need:
            return False
        self._round_start = now
        self._samples = []
        limit = self.limit
        if self._settle or not samples:
            self._settle = False
            return False
        median = statistics.median(samples)
        throughput = len(samples) / span
        if self.floor is None or median < self.floor:
            self.floor = median
        ref = self.reference
        if ref is None:
            ref = self.reference = median
        prev = self._prev
        measures = prev is not None and prev[0] < limit  # this round measures an increase
        if prev is not None and measures:
            gain = (throughput / prev[1] - 1.0) / (limit / prev[0] - 1.0)
            if gain < self.min_gain:  # at or past the knee: try one step below where it was
                self._down(prev[0] - max(1, math.isqrt(prev[0])), now)
                self._below = prev
                return True
        below = self._below
        if below is not None:  # this round measures a step down
            self._below = None
            loss = (1.0 - throughput / below[1]) / max(1e-9, 1.0 - limit / below[0])
            if loss >= self.min_gain:  # it cost throughput: the knee is where it was
                self._probe_wait = min(2 * self._probe_wait, self.probe_every_max)
                self._set(below[0], now)
                self._settle = True
                return True
            self._probe_wait = self.probe_every
            self._down(limit - max(1, math.isqrt(limit)), now)  # lost nothing: lower still
            self._below = (limit, throughput)
            return True
        if median > self.tolerance * ref:
            if limit <= self.initial:
                self.reference = self.floor = median  # this slow with few in flight: anew
                return False
            self._probe_wait = self.probe_every
            return self._down(math.floor(limit * max(0.5, self.tolerance * ref / median)), now)
        # an increase that paid off moves the reference up to its latency, never past
        # tolerance × the floor (noisy gains must not ratchet the latency guard up and away)
        self.reference = min(median, self.tolerance * self.floor) if measures else min(ref, median)
        if prev is not None and measures:  # a rise that paid off: probe often again
            self._probe_wait = self.probe_every
        if self._slow_start or prev is not None or self._holds >= self._probe_wait:
            step = limit if self._slow_start else max(1, math.isqrt(limit))
            self._prev = (limit, throughput)
            self._holds = 0
            self._settle = True
            return self._set(limit + step, now)
        self._holds += 1
        return False

    def _down(self, limit: int, now: float) -> bool:
        """Down to `limit` (at least one less), out of slow start; the next round settles."""
        self._slow_start = False
        self._prev = None
        self._below = None
        self._holds = 0
        self._settle = True
        return self._set(min(self.limit - 1, limit), now)


class Permits:
    """How many requests may be in flight: `AdaptiveLimit.limit` of them.

    The pool's workers (``max_concurrency`` of them) each take a permit before they send and
    give it back when their request has its outcome; a lower limit leaves the extra workers
    waiting here, a higher one wakes them.
    """

    __slots__ = ("_waiters", "control", "in_use")

    def __init__(self, control: AdaptiveLimit) -> None:
        self.control = control
        self.in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def __repr__(self) -> str:
        return f"Permits(in_use={self.in_use}, limit={self.control.limit})"

    @property
    def waiting(self) -> int:
        """Workers waiting for a permit."""
        return len(self._waiters)

    async def acquire(self) -> None:
        """Wait for a permit (cancellable: then none is held)."""
        if self.in_use < self.control.limit and not self._waiters:
            self.in_use += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted and cancelled at once: hand it on
            else:
                self._waiters.remove(future)
            raise

    def release(self) -> None:
        """Give a permit back; wake the waiters the limit lets in."""
        self.in_use -= 1
        self.wake()

    def wake(self) -> None:
        """Let waiters in up to the current limit (call after the limit rose)."""
        waiters = self._waiters
        while waiters and self.in_use < self.control.limit:
            future = waiters.popleft()
            if not future.done():
                self.in_use += 1
                future.set_result(None)


def for_run(concurrency: int | str, max_concurrency: int) -> tuple[int, AdaptiveLimit | None]:
    """The pool's workers and controller for `[run] concurrency` (an int, or "auto")."""
    if concurrency == "auto":
        return max_concurrency, AdaptiveLimit(maximum=max_concurrency)
    assert isinstance(concurrency, int)
    return concurrency, None
