"""A pool-wide tokens-per-minute budget (`[run] max_tokens_per_minute`).

The shape is the OpenAI cookbook's parallel processor's token bucket: capacity refills
continuously at the per-minute rate and is capped at one minute's worth (the bucket starts
full). Before a request is sent its cost is estimated, ``ceil(prompt characters /
chars_per_token) + its completion cap`` (``max_tokens`` / ``max_new_tokens``, or, when the
request sets none, the mean completion seen so far), and taken from the bucket; a request
waits until the bucket holds its estimate (or a full minute's worth, so a request larger
than the capacity still goes, once, into a full bucket). When the answer's ``usage`` comes
back, the bucket is corrected by the difference between the estimate and the real count,
and ``chars_per_token`` is learned from the prompt's real token count (an exponentially
smoothed mean). An attempt without a usage (an error, a server that does not count) keeps
its estimate: the bucket errs on the side of sending less.

So the tokens sent in any window of ``w`` seconds stay within ``capacity + rate * w`` plus
whatever the estimates in flight under-counted (at most one request's estimate with a
completion cap, which bounds the real count). `Retry-After` and the request rate are the
pool's (`batchrun.pool`); this module only counts tokens, on a clock it is given, so its
tests run on a fake one.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

__all__ = ["Charge", "TokenBucket", "TokenUsage"]

_RATIO_BOUNDS = (0.5, 32.0)  # a learned chars-per-token ratio outside this is not text


@dataclass(slots=True, kw_only=True, frozen=True)
class TokenUsage:
    """The tokens an answer says it used; a field the server did not send is None.

    Attributes:
        prompt: ``usage.prompt_tokens``.
        completion: ``usage.completion_tokens``, or TGI's ``details.generated_tokens``.
        total: ``usage.total_tokens``.
    """

    prompt: int | None = None
    completion: int | None = None
    total: int | None = None


@dataclass(slots=True, kw_only=True)
class Charge:
    """What one attempt took from the bucket, kept until its answer settles it.

    Attributes:
        prompt_chars: the prompt's characters, for learning the ratio.
        prompt: the prompt's estimated tokens.
        completion: the completion's estimated tokens.
        settled: the answer's usage corrected the bucket already.
    """

    prompt_chars: int
    prompt: int
    completion: int
    settled: bool = False

    @property
    def tokens(self) -> int:
        """The estimate taken from the bucket."""
        return max(1, self.prompt + self.completion)


class TokenBucket:
    """Tokens a minute, shared by every worker of a pool; see the module docstring.

    Args:
        tokens_per_minute: the limit; also the capacity (one minute's worth).
        chars_per_token: the ratio the estimates start with.
        smoothing: the weight of each new observation in the learned means (0..1].
        clock: seconds, monotonic (fake in tests).
        sleep: awaited to wait for capacity (fake in tests, with the clock).

    Attributes:
        chars_per_token: the current (learned) ratio.
        sent: tokens taken, corrected by the usages that came back.
        waits: acquisitions that had to wait for capacity.
    """

    def __init__(
        self,
        tokens_per_minute: int,
        *,
        chars_per_token: float = 4.0,
        smoothing: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if tokens_per_minute < 1 or chars_per_token <= 0 or not 0 < smoothing <= 1:
            raise ValueError("tokens_per_minute >= 1, chars_per_token > 0, 0 < smoothing <= 1")
        self.capacity = float(tokens_per_minute)
        self.rate = tokens_per_minute / 60.0  # tokens a second
        self.chars_per_token = chars_per_token
        self.smoothing = smoothing
        self.sent = 0
        self.waits = 0
        self._completion_mean: float | None = None
        self._clock = clock
        self._sleep = sleep
        self._available = self.capacity
        self._stamp = clock()
        self._lock: asyncio.Lock | None = None  # made on first use, in the running loop
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return (
            f"TokenBucket(tokens_per_minute={self.capacity:g}, "
            f"chars_per_token={self.chars_per_token:.2f})"
        )

    @property
    def available(self) -> float:
        """Tokens in the bucket now (negative while a correction or a large request is owed)."""
        self._refill()
        return self._available

    def charge(self, prompt_chars: int, max_completion: int | None) -> Charge:
        """The estimate for a request of `prompt_chars` characters and that completion cap
        (None: the request sets none; the mean completion seen so far is used)."""
        prompt = math.ceil(max(prompt_chars, 0) / self.chars_per_token)
        if max_completion is not None:
            completion = max(max_completion, 0)
        else:
            completion = round(self._completion_mean or 0.0)
        return Charge(prompt_chars=prompt_chars, prompt=prompt, completion=completion)

    def delay(self, charge: Charge) -> float:
        """Seconds until the bucket holds `charge` (0: it does now)."""
        need = min(float(charge.tokens), self.capacity) - self.available
        return max(need / self.rate, 0.0)

    def take(self, charge: Charge) -> bool:
        """Take `charge` from the bucket if it holds it now; False: wait `delay` and ask again."""
        if self.delay(charge) > 0:
            return False
        self._available -= charge.tokens
        self.sent += charge.tokens
        return True

    async def acquire(self, charge: Charge) -> None:
        """Wait until the bucket holds `charge`, then take it. Waiters go in turn (FIFO)."""
        loop = asyncio.get_running_loop()
        if self._lock is None or self._loop is not loop:  # a lock serves one loop
            self._lock, self._loop = asyncio.Lock(), loop
        async with self._lock:
            if self.take(charge):
                return
            self.waits += 1
            while not self.take(charge):
                await self._sleep(max(self.delay(charge), 0.001))

    def settle(self, charge: Charge, usage: TokenUsage | None) -> int:
        """Correct the bucket by the answer's real count, and learn from it.

        Returns:
            The tokens the request is counted for: the real count, or the estimate when the
            answer says nothing usable.
        """
        if usage is None or charge.settled:
            return charge.tokens
        prompt, completion = usage.prompt, usage.completion
        if usage.total is not None:
            real = usage.total
        elif prompt is not None or completion is not None:
            real = (prompt if prompt is not None else charge.prompt) + (
                completion if completion is not None else charge.completion
            )
        else:
            return charge.tokens
        if completion is None and prompt is not None and usage.total is not None:
            completion = usage.total - prompt
        charge.settled = True
        real = max(real, 0)
        self._refill()
        self._available = min(self._available + charge.tokens - real, self.capacity)
        self.sent += real - charge.tokens
        a = self.smoothing
        if prompt and prompt > 0 and charge.prompt_chars > 0:
            observed = min(max(charge.prompt_chars / prompt, _RATIO_BOUNDS[0]), _RATIO_BOUNDS[1])
            self.chars_per_token += a * (observed - self.chars_per_token)
        if completion is not None and completion >= 0:
            mean = self._completion_mean
            self._completion_mean = completion if mean is None else mean + a * (completion - mean)
        return real

    def _refill(self) -> None:
        now = self._clock()
        elapsed = now - self._stamp
        if elapsed > 0:
            self._available = min(self._available + elapsed * self.rate, self.capacity)
            self._stamp = now
