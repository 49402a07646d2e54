"""`[run] max_tokens_per_minute`: the token bucket on a fake clock, the codecs' token counts,
and the pool against a real endpoint that counts the tokens it was sent per window."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import orjson
import pytest

from batchrun.job import Job
from batchrun.pool import Request
from batchrun.ratelimit import Charge, TokenBucket, TokenUsage
from tests.support.endpoint_app import EndpointApp
from tests.test_pool import encode, make_codec, run_pool


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept = 0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept += 1
        self.now += seconds


def _bucket(tpm: int, clock: FakeClock, **options: Any) -> TokenBucket:
    return TokenBucket(tpm, clock=clock, sleep=clock.sleep, **options)


def _busiest(sent: list[tuple[float, int]], window: float) -> int:
    """The most tokens sent in any window of `window` seconds that starts at a send."""
    sent = sorted(sent)
    best = 0
    for i, (start, _) in enumerate(sent):
        best = max(best, sum(n for t, n in sent[i:] if t < start + window))
    return best


# --- the bucket, on a fake clock ----------------------------------------------------------------


def test_the_bucket_starts_full_refills_at_the_rate_and_holds_one_minute_at_most() -> None:
    clock = FakeClock()
    bucket = _bucket(600, clock)  # 10 tokens a second
    charge = bucket.charge(400, 100)  # 100 + 100 tokens
    assert charge.tokens == 200
    assert [bucket.take(charge) for _ in range(4)] == [True, True, True, False]
    assert bucket.available == 0
    assert bucket.delay(charge) == pytest.approx(20.0)
    clock.now += 19.9
    assert not bucket.take(charge)
    clock.now += 0.1
    assert bucket.take(charge)
    clock.now += 3600
    assert bucket.available == 600  # capped at one minute's worth


def test_a_request_larger_than_the_capacity_goes_into_a_full_bucket() -> None:
    clock = FakeClock()
    bucket = _bucket(60, clock)
    huge = bucket.charge(0, 500)
    assert bucket.take(huge)  # full: it goes, and leaves a debt
    assert bucket.available == -440
    assert bucket.delay(huge) == pytest.approx(500.0)  # until full again


def test_the_usage_corrects_the_bucket_both_ways() -> None:
    clock = FakeClock()
    bucket = _bucket(1000, clock)
    charge = bucket.charge(400, 200)  # 100 + 200
    assert bucket.take(charge) and bucket.available == 700
    assert bucket.settle(charge, TokenUsage(prompt=100, completion=20, total=120)) == 120
    assert bucket.available == 880  # the unused 180 came back
    assert bucket.settle(charge, TokenUsage(total=1)) == charge.tokens  # once only
    over = bucket.charge(40, 0)
    assert bucket.take(over)
    bucket.settle(over, TokenUsage(prompt=10, completion=500))  # TGI-like, more than asked
    assert bucket.available == 880 - 510
    assert bucket.sent == 120 + 510
    no_usage = bucket.charge(40, 10)
    assert bucket.take(no_usage)
    assert bucket.settle(no_usage, None) == 20  # nothing said: the estimate stays
    assert bucket.available == 880 - 510 - 20


def test_the_chars_per_token_ratio_is_learned_from_the_usage() -> None:
    clock = FakeClock()
    bucket = _bucket(10_000_000, clock)
    rng = random.Random(3)
    for _ in range(40):
        chars = rng.randrange(200, 2000)
        charge = bucket.charge(chars, 16)
        assert bucket.take(charge)
        bucket.settle(charge, TokenUsage(prompt=round(chars / 2.5), completion=16))
    assert bucket.chars_per_token == pytest.approx(2.5, rel=0.02)
    assert bucket.charge(2500, 16).prompt == pytest.approx(1000, rel=0.02)
    # Without a completion cap, the completion seen so far is the estimate.
    assert bucket.charge(0, None).completion == 16


def test_the_tokens_sent_in_any_window_stay_within_capacity_plus_the_rate() -> None:
    clock = FakeClock()
    tpm = 6000
    bucket = _bucket(tpm, clock)
    rng = random.Random(7)
    sent: list[tuple[float, int]] = []
    biggest = 0

    async def worker() -> None:
        nonlocal biggest
        for _ in range(60):
            chars, cap = rng.randrange(0, 4000), rng.randrange(1, 400)
            charge = bucket.charge(chars, cap)
            biggest = max(biggest, charge.tokens)
            await bucket.acquire(charge)
            real = round(chars / 3.5) + rng.randrange(0, cap + 1)  # a cap bounds the answer
            sent.append((clock.now, real))
            await asyncio.sleep(0)  # the answer comes back later
            bucket.settle(charge, TokenUsage(prompt=round(chars / 3.5), total=real))

    async def main() -> None:
        await asyncio.gather(*(worker() for _ in range(8)))

    asyncio.run(main())
    assert len(sent) == 480 and bucket.waits > 100
    total = sum(n for _, n in sent)
    assert total > 5 * tpm  # several minutes' worth went through the bucket
    for window in (1.0, 10.0, 60.0, 120.0):
        assert _busiest(sent, window) <= tpm + tpm / 60 * window + biggest


def test_waiters_take_their_turn() -> None:
    clock = FakeClock()
    bucket = _bucket(60, clock)  # 1 token a second
    order: list[int] = []

    async def one(i: int) -> None:
        await bucket.acquire(Charge(prompt_chars=0, prompt=30, completion=0))
        order.append(i)

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(6)))

    asyncio.run(main())
    assert order == list(range(6))
    assert clock.now == pytest.approx(100.0 + 4 * 30)  # two from the full bucket, then 30 s each


def test_a_bad_limit_is_refused() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0)


# --- what the codecs say about tokens -----------------------------------------------------------


def test_prompt_size_reads_the_prompt_and_the_completion_cap() -> None:
    chat = make_codec(request_format="chat", parameters={"max_new_tokens": 50})
    body = encode(chat, [{"text": "x" * 40}])
    assert chat.prompt_size(body) == (40, 50)
    with_system = make_codec(request_format="chat")
    with_system.system = "be brief"
    assert with_system.prompt_size(encode(with_system, [{"text": "abc"}])) == (11, None)
    inputs = make_codec(batch_size=3, parameters={"max_new_tokens": 7})
    assert inputs.prompt_size(encode(inputs, [{"text": "ab"}, {"text": "cde"}])) == (5, 14)
    emb = make_codec(request_format="embeddings")
    assert emb.prompt_size(encode(emb, [{"text": "hello"}])) == (5, None)
    raw = make_codec(request_format="raw")
    assert raw.prompt_size(b"plain text") == (10, None)
    assert raw.prompt_size(orjson.dumps({"prompt": ["ab", "cd"], "max_tokens": 4, "n": 2})) == (
        4,
        16,
    )


def test_usage_tokens_reads_openai_usage_and_tgi_details() -> None:
    codec = make_codec(request_format="chat")
    usage = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    assert codec.usage_tokens({"choices": [], "usage": usage}) == TokenUsage(
        prompt=12, completion=3, total=15
    )
    assert codec.usage_tokens({"usage": {"prompt_tokens": 5, "total_tokens": 5}}) == TokenUsage(
        prompt=5, total=5
    )
    tgi = [{"generated_text": "a", "details": {"generated_tokens": 4}}] * 2
    assert codec.usage_tokens(tgi) == TokenUsage(completion=8)
    assert codec.usage_tokens({"generated_text": "a", "details": {"generated_tokens": 2}}) == (
        TokenUsage(completion=2)
    )
    assert codec.usage_tokens([{"generated_text": "a"}]) is None
    assert codec.usage_tokens({"usage": {"total_tokens": "lots"}}) is None
    assert codec.usage_tokens("text") is None


def test_the_job_key_has_a_range() -> None:
    job = Job.from_dict(
        {
            "endpoint": {"provider": "url", "url": "http://127.0.0.1:1"},
            "input": {"path": "in.jsonl"},
            "output": {"path": "out.jsonl"},
            "run": {"max_tokens_per_minute": 90_000},
        }
    )
    assert job.run.max_tokens_per_minute == 90_000


# --- the pool against an endpoint that counts tokens ----------------------------------------------


def _chat_requests(n: int) -> tuple[Any, list[Request]]:
    codec = make_codec(request_format="chat", parameters={"max_tokens": 100})
    texts = [f"row {i:04d} ".ljust(30, "x") for i in range(n)]  # 30 characters each
    return codec, [Request(i, encode(codec, [{"text": t}]), 1) for i, t in enumerate(texts)]


def test_the_pool_keeps_the_tokens_sent_per_window_under_the_limit(
    endpoint_app: EndpointApp,
) -> None:
    tpm = 6000  # 100 tokens a second; the bucket holds 6000
    endpoint_app.configure(usage_chars_per_token=3, usage_completion_tokens=50)
    codec, requests = _chat_requests(104)  # 60 real tokens each: 6240, past the capacity
    pool, outcomes = run_pool(endpoint_app.url, requests, codec=codec, max_tokens_per_minute=tpm)
    assert len(outcomes) == 104 and all(o.error is None for o in outcomes)
    counted = endpoint_app.tokens()
    assert len(counted) == 104 and all(n == 60 for _, n in counted)
    assert pool.stats.tokens == 104 * 60  # every estimate was corrected by the real count
    assert pool.stats.token_waits > 0  # the bucket ran dry: the limit held requests back
    estimate = 8 + 100  # the largest: 30 chars at the initial 4 a token, plus max_tokens
    for window in (0.5, 1.0, 2.0):
        assert _busiest(counted, window) <= tpm + tpm / 60 * window + estimate
    assert pool.tokens is not None
    assert pool.tokens.chars_per_token == pytest.approx(3.0, abs=0.05)


def test_a_retry_after_still_holds_the_whole_pool_under_a_token_limit(
    endpoint_app: EndpointApp,
) -> None:
    endpoint_app.configure(throttle_first=1, retry_after="0.6", latency_ms=5)
    codec, requests = _chat_requests(40)
    pool, outcomes = run_pool(
        endpoint_app.url, requests, codec=codec, max_tokens_per_minute=10_000_000
    )
    assert all(o.error is None for o in outcomes)
    assert pool.stats.throttled == 1 and pool.stats.held_s > 0.5
    arrivals = sorted(endpoint_app.arrivals())
    # Only the requests already in flight when the 429 came back arrive during the hold.
    during = [t for t in arrivals if arrivals[0] < t < arrivals[0] + 0.5]
    assert len(during) <= 8  # concurrency
    assert len(arrivals) == 41


def test_the_pools_of_a_run_share_one_bucket(endpoint_app: EndpointApp) -> None:
    endpoint_app.configure(usage_chars_per_token=3, usage_completion_tokens=5)
    codec, requests = _chat_requests(20)
    first, _ = run_pool(endpoint_app.url, requests[:10], codec=codec, max_tokens_per_minute=10**6)
    bucket = first.tokens
    assert bucket is not None
    second, _ = run_pool(endpoint_app.url, requests[10:], codec=codec, token_bucket=bucket)
    assert second.tokens is bucket
    assert bucket.sent == sum(n for _, n in endpoint_app.tokens()) == 20 * 15
