"""The tokens-per-minute rate `[run] max_tokens_per_minute` holds, as the server counts it.

A `batchrun.pool.Pool` (chat codec, ``max_tokens`` = 2 × the completion the server writes)
sends an endless stream of requests to the test endpoint in its own process, which answers
with a ``usage`` block counted at ``--server-ratio`` characters a token (the bucket starts at
4, so it must learn the ratio) and records each answer's ``total_tokens`` with its arrival
time. The bucket starts full (one minute's worth); once it has run dry (the first wait), the
script waits a second more and counts the tokens that arrive over the next ``--seconds`` s.

Printed per scenario: the rate held (tokens a minute), its ratio to the limit (goal: within
10 %), the tokens a minute the pool counted (corrected by usage, or its estimates), and the
learned chars-per-token, for:

- ``usage``: the server sends ``usage``: estimates are corrected, the rate is the limit;
- ``no usage``: the same server behind a codec that ignores ``usage`` (the baseline: the
  bucket can only trust its estimates, which overcount, so it holds less than the limit).

    python tests/perf/bench_tokens.py                 # both, 20 s windows
    python tests/perf/bench_tokens.py --scenarios usage --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from batchrun.codecs import ChatCodec, codec_for
from batchrun.job import Job
from batchrun.pool import Outcome, Pool, Request
from batchrun.ratelimit import TokenUsage
from tests.support.endpoint_app import EndpointProcess


class _Deaf(ChatCodec):
    """A chat codec that does not read ``usage``: the bucket keeps its estimates."""

    def usage_tokens(self, payload: Any) -> TokenUsage | None:
        return None


def _codec(max_tokens: int, deaf: bool) -> ChatCodec:
    job = Job.from_dict(
        {
            "endpoint": {"provider": "url", "url": "http://127.0.0.1:1"},
            "input": {"path": "in.jsonl"},
            "output": {"path": "out.jsonl"},
            "run": {"request_format": "chat", "parameters": {"max_tokens": max_tokens}},
        }
    )
    if deaf:
        return _Deaf(job)
    codec = codec_for(job)
    assert isinstance(codec, ChatCodec)
    return codec


def _requests(codec: ChatCodec, chars: int) -> Iterator[Request]:
    i = 0
    while True:
        text = f"row {i} ".ljust(chars, "x")
        yield Request(i, codec.encode_rendered([codec.render({"text": text})]), 1)
        i += 1


async def _measure(
    app: EndpointProcess, pool: Pool, codec: ChatCodec, chars: int, seconds: float
) -> tuple[float, float, float]:
    outcomes: list[Outcome] = []
    task = asyncio.create_task(pool.run(_requests(codec, chars), outcomes.append))
    while pool.stats.token_waits == 0:  # the full bucket's burst
        await asyncio.sleep(0.05)
        if task.done():
            task.result()
    await asyncio.sleep(1.0)
    start = time.time()
    estimated = pool.stats.tokens
    await asyncio.sleep(seconds)
    end = time.time()
    estimated = pool.stats.tokens - estimated
    pool.stop(grace=5)
    await task
    assert all(o.error is None for o in outcomes)
    counted = sum(n for t, n in app.tokens() if start <= t < end)
    return counted * 60.0 / (end - start), estimated * 60.0 / (end - start), start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tpm", type=int, default=120_000, help="max_tokens_per_minute")
    parser.add_argument("--seconds", type=float, default=20.0, help="the measured window")
    parser.add_argument("--chars", type=int, default=300, help="prompt characters a request")
    parser.add_argument("--completion", type=int, default=50, help="completion tokens written")
    parser.add_argument("--server-ratio", type=float, default=3.0, help="server's chars/token")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--scenarios", default="usage,no usage")
    ns = parser.parse_args(argv)
    print(
        f"limit {ns.tpm:,} tokens/min; requests of {ns.chars} chars (server: "
        f"{ns.server_ratio:g} chars/token) + {ns.completion} completion tokens "
        f"(max_tokens {2 * ns.completion}); C = {ns.concurrency}, latency {ns.latency_ms:g} ms; "
        f"window {ns.seconds:g} s after the first minute's burst"
    )
    print(f"{'scenario':<10} {'held/min':>10} {'vs limit':>9} {'pool/min':>10} {'chars/tok':>10}")
    for scenario in [s.strip() for s in ns.scenarios.split(",")]:
        with EndpointProcess(
            latency_ms=ns.latency_ms,
            usage_chars_per_token=ns.server_ratio,
            usage_completion_tokens=ns.completion,
        ) as app:
            codec = _codec(2 * ns.completion, deaf=scenario == "no usage")
            pool = Pool(
                url=app.url,
                codec=codec,
                concurrency=ns.concurrency,
                request_timeout=10,
                max_attempts=3,
                max_tokens_per_minute=ns.tpm,
            )
            held, estimated, _ = asyncio.run(_measure(app, pool, codec, ns.chars, ns.seconds))
            assert pool.tokens is not None
            print(
                f"{scenario:<10} {held:>10,.0f} {held / ns.tpm:>9.3f} {estimated:>10,.0f} "
                f"{pool.tokens.chars_per_token:>10.2f}"
            )


if __name__ == "__main__":
    main()
