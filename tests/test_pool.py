"""The pool against a real aiohttp server on 127.0.0.1 (tests/support/endpoint_app.py)."""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest

from batchrun.codecs import RequestCodec, codec_for
from batchrun.errors import (
    BadResponseError,
    InferenceConnectionError,
    InferenceStatusError,
    ResponseTooLargeError,
)
from batchrun.job import Job
from batchrun.net import excerpt, parse_retry_after
from batchrun.pool import Outcome, Pool, Request, secrets_of, status_error
from tests.support.endpoint_app import EndpointApp, EndpointProcess, expected_generated_text

FAST = {"backoff_max": 0.02, "backoff_initial": 0.005}


def encode(codec: RequestCodec, records: Sequence[dict[str, Any]]) -> bytes:
    """A request body built the way the runner builds it: each row rendered, then encoded."""
    return codec.encode_rendered([codec.render(r) for r in records])


def make_codec(**run: Any) -> RequestCodec:
    job = Job.from_dict(
        {
            "endpoint": {"provider": "url", "url": "http://127.0.0.1:1"},
            "input": {"path": "in.jsonl"},
            "output": {"path": "out.jsonl"},
            "run": run,
        }
    )
    return codec_for(job)


def make_requests(codec: RequestCodec, n: int, prefix: str = "row") -> list[Request]:
    return [Request(i, encode(codec, [{"text": f"{prefix} {i}"}]), 1) for i in range(n)]


def run_pool(
    app_url: str, requests: Any, *, codec: RequestCodec | None = None, **options: Any
) -> tuple[Pool, list[Outcome]]:
    codec = codec or make_codec()
    settings: dict[str, Any] = {
        "concurrency": 8,
        "request_timeout": 5.0,
        "max_attempts": 3,
        **FAST,
        **options,
    }
    pool = Pool(url=app_url, codec=codec, **settings)
    outcomes: list[Outcome] = []
    asyncio.run(pool.run(requests, outcomes.append))
    return pool, outcomes


def by_key(outcomes: list[Outcome]) -> dict[Any, Outcome]:
    return {o.request.key: o for o in outcomes}


def test_every_request_is_answered_once_with_its_own_result(endpoint_app: EndpointApp) -> None:
    codec = make_codec()
    requests = make_requests(codec, 200)
    pool, outcomes = run_pool(
        endpoint_app.url, requests, codec=codec, headers={"Authorization": "Bearer sekret"}
    )
    assert len(outcomes) == 200
    got = by_key(outcomes)
    assert sorted(got) == list(range(200))
    for i, outcome in got.items():
        assert outcome.error is None
        assert outcome.results == [{"generated_text": expected_generated_text(f"row {i}")}]
        assert outcome.attempts == 1
        assert outcome.latency_ms > 0
    stats = pool.stats
    assert (stats.sent, stats.attempts, stats.succeeded, stats.failed, stats.retries) == (
        200,
        200,
        200,
        0,
        0,
    )
    assert stats.in_flight == 0
    seen = endpoint_app.stats()
    assert seen["requests"] == 200
    assert set(endpoint_app.received().values()) == {1}
    headers = seen["last_headers"]
    assert headers["Authorization"] == "Bearer sekret"
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Scale-Up-Timeout"] == "4"  # min(scale_up_timeout, 0.9 x request_timeout)
    assert "sekret" not in repr(pool)


def test_concurrency_is_respected(endpoint_app: EndpointApp) -> None:
    endpoint_app.configure(latency_ms=20)
    codec = make_codec()
    run_pool(endpoint_app.url, make_requests(codec, 60), codec=codec, concurrency=5)
    assert endpoint_app.stats()["max_in_flight"] == 5


def test_the_source_is_pulled_only_when_a_slot_is_free(endpoint_app: EndpointApp) -> None:
    endpoint_app.configure(latency_ms=2, jitter_ms=5)
    codec = make_codec()
    pulled = 0
    reported = 0
    ahead: list[int] = []

    def source() -> Iterator[Request]:
        nonlocal pulled
        for request in make_requests(codec, 150):
            pulled += 1
            ahead.append(pulled - reported)
            yield request

    def on_outcome(outcome: Outcome) -> None:
        nonlocal reported
        reported += 1

    pool = Pool(url=endpoint_app.url, codec=codec, concurrency=6, request_timeout=5, max_attempts=2)
    asyncio.run(pool.run(source(), on_outcome))
    assert reported == 150
    assert max(ahead) <= 6


def test_async_source_is_pulled_at_most_concurrency_ahead(endpoint_app: EndpointApp) -> None:
    endpoint_app.configure(latency_ms=3)
    codec = make_codec()
    pulled = 0
    reported = 0
    ahead: list[int] = []

    async def source() -> AsyncIterator[Request]:
        nonlocal pulled
        for request in make_requests(codec, 80):
            await asyncio.sleep(0)
            pulled += 1
            ahead.append(pulled - reported)
            yield request

    async def on_outcome(outcome: Outcome) -> None:
        nonlocal reported
        await asyncio.sleep(0)
        reported += 1

    pool = Pool(url=endpoint_app.url, codec=codec, concurrency=4, request_timeout=5, max_attempts=2)
    asyncio.run(pool.run(source(), on_outcome))
    assert reported == 80
    assert max(ahead) <= 4


def test_server_errors_are_retried_until_they_succeed(
    endpoint_app: EndpointApp, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint_app.configure(fail_each_first=2)
    codec = make_codec()
    with caplog.at_level(logging.WARNING, logger="batchrun.pool"):
        pool, outcomes = run_pool(endpoint_app.url, make_requests(codec, 20), codec=codec)
    for i, outcome in by_key(outcomes).items():
        assert outcome.error is None, outcome.error
        assert outcome.results == [{"generated_text": expected_generated_text(f"row {i}")}]
        assert outcome.attempts == 3
    assert pool.stats.retries == 40
    assert set(endpoint_app.received().values()) == {3}
    # the first retry of a status is a line of its own; the rest are rolled up (RetryLog)
    retries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("retry ")]
    assert len(retries) == 1
    assert retries[0].startswith("retry 1/2 ")
    assert "internal error (injected)" in retries[0]
    rolled = [r.getMessage() for r in caplog.records if r.getMessage().startswith("retries in")]
    assert len(rolled) == 1
    assert rolled[0].endswith(": 39 × http_500")


def test_retries_give_up_after_max_attempts_with_the_server_message(
    endpoint_app: EndpointApp,
) -> None:
    endpoint_app.configure(fail_match="poison", fail_status=502, fail_message="bad gateway today")
    codec = make_codec()
    requests = [Request(i, encode(codec, [{"text": t}]), 1) for i, t in enumerate(["ok", "poison"])]
    pool, outcomes = run_pool(endpoint_app.url, requests, codec=codec, max_attempts=4)
    got = by_key(outcomes)
    assert got[0].error is None
    error = got[1].error
    assert isinstance(error, InferenceStatusError)
    assert error.status == "http_502"
    assert str(error) == "bad gateway today"
    assert got[1].attempts == 4
    assert got[1].results is None
    assert pool.stats.failed == 1 and pool.stats.succeeded == 1


def test_a_4xx_is_final_and_carries_the_server_message(endpoint_app: EndpointApp) -> None:
    endpoint_app.configure(reject_match="forbidden-word", reject_status=422)
    codec = make_codec()
    texts = ["fine", "has forbidden-word in it"]
    requests = [Request(t, encode(codec, [{"text": t}]), 1) for t in texts]
    _, outcomes = run_pool(endpoint_app.url, requests, codec=codec, max_attempts=5)
    got = by_key(outcomes)
    error = got[texts[1]].error
    assert isinstance(error, InferenceStatusError)
    assert error.http_status == 422
    assert error.status == "http_422"
    assert str(error) == "input rejected: contains 'forbidden-word'"
    assert got[texts[1]].attempts == 1
    assert endpoint_app.received()[texts[1]] == 1


def test_a_200_that_is_not_json_is_a_final_bad_response(endpoint_app: EndpointApp) -> None:
    endpoint_app.configure(bad_json_first=1)
    codec = make_codec()
    _, outcomes = run_pool(endpoint_app.url, make_requests(codec, 1), codec=codec, concurrency=1)
    error = outcomes[0].error
    assert isinstance(error, BadResponseError)
    assert error.status == "bad_response"
    assert "upstream hiccup" in str(error)
    assert outcomes[0].attempts == 1


def test_retry_after_holds_the_whole_pool(endpoint_app: EndpointApp) -> None:
    endpoint_app.configure(latency_ms=5)
    codec = make_codec()
    # Warm up the connections, then one 429 asking for 0.6 s.
    run_pool(endpoint_app.url, make_requests(codec, 8, "warm"), codec=codec)
    endpoint_app.configure(throttle_first=1, retry_after="0.6", reset=True)
    started = time.monotonic()
    pool, outcomes = run_pool(endpoint_app.url, make_requests(codec, 60), codec=codec)
    elapsed = time.monotonic() - started
    assert all(o.error is None for o in outcomes)
    assert pool.stats.throttled == 1
    assert 0.55 <= pool.stats.held_s <= 0.7
    arrivals = sorted(endpoint_app.arrivals())
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # Only the requests already in flight when the 429 came back arrive in the hold;
    # then nothing for ~0.6 s: the hold is pool-wide, not just the throttled row's.
    assert 0.5 <= max(gaps) <= 1.2
    assert elapsed >= 0.6


def test_retry_after_is_capped(endpoint_app: EndpointApp) -> None:
    endpoint_app.configure(throttle_first=1, retry_after="3600")
    codec = make_codec()
    started = time.monotonic()
    pool, outcomes = run_pool(
        endpoint_app.url, make_requests(codec, 4), codec=codec, concurrency=1, retry_after_max=0.3
    )
    assert time.monotonic() - started < 5
    assert all(o.error is None for o in outcomes)
    assert 0.25 <= pool.stats.held_s <= 0.35


def test_retry_after_http_date(endpoint_app: EndpointApp) -> None:
    endpoint_app.configure(throttle_first=1, retry_after="2", retry_after_http_date=True)
    codec = make_codec()
    pool, outcomes = run_pool(endpoint_app.url, make_requests(codec, 2), codec=codec, concurrency=1)
    assert all(o.error is None for o in outcomes)
    assert 0.9 <= pool.stats.held_s <= 2.1  # an HTTP date has whole seconds


def test_parse_retry_after() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    seconds = parse_retry_after(future)
    assert seconds is not None and 28 <= seconds <= 30
    past = email.utils.formatdate(time.time() - 30, usegmt=True)
    assert parse_retry_after(past) == 0.0


def test_status_error_takes_the_server_message() -> None:
    openai = status_error(400, b'{"error": {"message": "bad model", "type": "x"}}', None)
    assert str(openai) == "bad model"
    tgi = status_error(424, b'{"error": "Input validation error", "error_type": "validation"}', "7")
    assert (str(tgi), tgi.retry_after, tgi.status) == ("Input validation error", 7.0, "http_424")
    html = status_error(502, b"<html>\n<body>Bad   Gateway</body>\n" + b"x" * 500, None)
    assert str(html).startswith("<html> <body>Bad Gateway</body>")
    assert len(str(html)) <= 200
    assert str(status_error(500, b"", None)) == "HTTP 500"


def test_a_hung_request_hits_the_timeout_and_is_retried(endpoint_app: EndpointApp) -> None:
    endpoint_app.configure(hang_first=2)
    codec = make_codec()
    started = time.monotonic()
    _, outcomes = run_pool(
        endpoint_app.url, make_requests(codec, 2), codec=codec, concurrency=2, request_timeout=0.3
    )
    assert time.monotonic() - started < 3
    assert [o.error for o in outcomes] == [None, None]
    assert sorted(o.attempts for o in outcomes) == [2, 2]


def test_a_request_that_always_hangs_fails_as_a_connection_error(
    endpoint_app: EndpointApp,
) -> None:
    endpoint_app.configure(hang_rate=1.0)
    codec = make_codec()
    started = time.monotonic()
    _, outcomes = run_pool(
        endpoint_app.url,
        make_requests(codec, 1),
        codec=codec,
        request_timeout=0.25,
        max_attempts=2,
    )
    assert time.monotonic() - started < 3
    error = outcomes[0].error
    assert isinstance(error, InferenceConnectionError)
    assert error.status == "connection_error"
    assert "request_timeout = 0.25s" in str(error)
    assert outcomes[0].attempts == 2


def test_dropped_connections_are_retried(endpoint_app: EndpointApp) -> None:
    endpoint_app.configure(drop_first=3)
    codec = make_codec()
    pool, outcomes = run_pool(endpoint_app.url, make_requests(codec, 10), codec=codec)
    assert all(o.error is None for o in outcomes)
    assert sum(o.attempts for o in outcomes) == 13
    assert pool.stats.retries == 3


def test_connection_refused_is_a_connection_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the pool connects
    codec = make_codec()
    _, outcomes = run_pool(f"http://127.0.0.1:{port}", make_requests(codec, 1), codec=codec)
    error = outcomes[0].error
    assert isinstance(error, InferenceConnectionError)
    assert "Cannot connect" in str(error) or "refused" in str(error).lower()
    assert outcomes[0].attempts == 3


def test_a_waking_endpoints_503s_do_not_use_up_attempts(endpoint_app: EndpointApp) -> None:
    endpoint_app.configure(fail_first=4, fail_status=503, fail_message="scaling up")
    codec = make_codec()
    _, outcomes = run_pool(
        endpoint_app.url, make_requests(codec, 1), codec=codec, concurrency=1, max_attempts=1
    )
    assert outcomes[0].error is None
    assert outcomes[0].attempts == 5


def test_503s_count_once_the_scale_up_timeout_has_passed(endpoint_app: EndpointApp) -> None:
    endpoint_app.configure(fail_first=10, fail_status=503, fail_message="scaling up")
    codec = make_codec()
    _, outcomes = run_pool(
        endpoint_app.url,
        make_requests(codec, 1),
        codec=codec,
        concurrency=1,
        max_attempts=2,
        scale_up_timeout=0.0,
    )
    error = outcomes[0].error
    assert isinstance(error, InferenceStatusError) and error.http_status == 503
    assert str(error) == "scaling up"
    assert outcomes[0].attempts == 2


def test_rate_limit_paces_requests(endpoint_app: EndpointApp) -> None:
    codec = make_codec()
    started = time.monotonic()
    run_pool(endpoint_app.url, make_requests(codec, 16), codec=codec, max_requests_per_minute=1200)
    assert time.monotonic() - started >= 15 / 20 - 0.05
    arrivals = sorted(endpoint_app.arrivals())
    assert arrivals[-1] - arrivals[0] >= 15 / 20 - 0.05
    # 50 ms apart on a fixed schedule: never a burst, even when one slot fires late.
    busiest = max(sum(1 for t in arrivals if start <= t < start + 0.5) for start in arrivals)
    assert busiest <= 12


def test_stop_with_grace_reports_requests_that_finish_in_time(endpoint_app: EndpointApp) -> None:
    endpoint_app.configure(latency_ms=300)
    codec = make_codec()
    outcomes: list[Outcome] = []
    pool = Pool(url=endpoint_app.url, codec=codec, concurrency=4, request_timeout=5, max_attempts=2)

    async def main() -> None:
        task = asyncio.create_task(pool.run(make_requests(codec, 100), outcomes.append))
        await _until(lambda: endpoint_app.stats()["in_flight"] == 4)
        pool.stop(grace=5)
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    assert len(outcomes) == 4
    assert all(o.error is None for o in outcomes)
    assert pool.stats.sent == 4 and pool.stats.cancelled == 0
    assert endpoint_app.stats()["requests"] == 4


def test_stop_cancels_in_flight_requests_after_the_grace_and_does_not_report_them(
    endpoint_app: EndpointApp,
) -> None:
    endpoint_app.configure(latency_ms=10_000)
    codec = make_codec()
    outcomes: list[Outcome] = []
    pool = Pool(
        url=endpoint_app.url, codec=codec, concurrency=4, request_timeout=30, max_attempts=2
    )

    async def main() -> float:
        task = asyncio.create_task(pool.run(make_requests(codec, 100), outcomes.append))
        await _until(lambda: endpoint_app.stats()["in_flight"] == 4)
        started = time.monotonic()
        pool.stop(grace=0.2)
        await asyncio.wait_for(task, 5)
        return time.monotonic() - started

    took = asyncio.run(main())
    assert 0.15 <= took < 2
    assert outcomes == []
    assert pool.stats.cancelled == 4 and pool.stats.in_flight == 0
    assert endpoint_app.stats()["requests"] == 4


def test_stop_during_a_retry_after_hold_and_a_second_stop_shortens_the_grace(
    endpoint_app: EndpointApp,
) -> None:
    endpoint_app.configure(throttle_rate=1.0, retry_after="60")
    codec = make_codec()
    outcomes: list[Outcome] = []
    pool = Pool(url=endpoint_app.url, codec=codec, concurrency=2, request_timeout=5, max_attempts=9)

    async def main() -> float:
        task = asyncio.create_task(pool.run(make_requests(codec, 10), outcomes.append))
        await _until(lambda: pool.stats.throttled >= 1)
        pool.stop(grace=30)
        started = time.monotonic()
        pool.stop(grace=0)  # a second Ctrl-C
        await asyncio.wait_for(task, 5)
        return time.monotonic() - started

    assert asyncio.run(main()) < 1
    assert outcomes == []
    assert pool.stats.cancelled == 2


def test_an_error_in_on_outcome_propagates(endpoint_app: EndpointApp) -> None:
    codec = make_codec()
    pool = Pool(url=endpoint_app.url, codec=codec, concurrency=4, request_timeout=5, max_attempts=2)

    def on_outcome(outcome: Outcome) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        asyncio.run(pool.run(make_requests(codec, 50), on_outcome))


def test_an_error_in_the_source_propagates(endpoint_app: EndpointApp) -> None:
    codec = make_codec()
    pool = Pool(url=endpoint_app.url, codec=codec, concurrency=4, request_timeout=5, max_attempts=2)

    def source() -> Iterator[Request]:
        yield from make_requests(codec, 5)
        raise ValueError("unreadable input")

    with pytest.raises(ValueError, match="unreadable input"):
        asyncio.run(pool.run(source(), lambda outcome: None))


async def _until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def test_against_the_endpoint_in_its_own_process(endpoint_process: EndpointProcess) -> None:
    endpoint_process.configure(throttle_first=2, retry_after="0.2")
    codec = make_codec()
    pool, outcomes = run_pool(endpoint_process.url, make_requests(codec, 30), codec=codec)
    assert len(outcomes) == 30 and all(o.error is None for o in outcomes)
    assert pool.stats.throttled == 2
    received = endpoint_process.received()
    assert sum(received.values()) == 32 and len(received) == 30
    assert endpoint_process.stats()["statuses"] == {"429": 2, "200": 30}


# --- hostile answers: echoed tokens, huge bodies ---------------------------------------------

TOKEN = "hf_EchoedSecret0123456789abcdefXYZ"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_secrets_of_takes_the_authorization_value_and_its_bare_token() -> None:
    assert secrets_of({"authorization": " Bearer abc ", "Accept": "x"}) == ("Bearer abc", "abc")
    assert secrets_of({"Authorization": "opaque"}) == ("opaque",)
    assert secrets_of({"Accept": "application/json"}) == ()


@pytest.mark.parametrize("status", [500, 401])
def test_an_echoed_token_is_scrubbed_from_errors_and_retry_lines(
    endpoint_app: EndpointApp, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    endpoint_app.configure(echo_auth="error", echo_auth_match="hostile", fail_status=status)
    codec = make_codec()
    texts = ["fine", "hostile row"]
    requests = [Request(t, encode(codec, [{"text": t}]), 1) for t in texts]
    with caplog.at_level(logging.DEBUG):
        _, outcomes = run_pool(endpoint_app.url, requests, codec=codec, headers=AUTH)
    got = by_key(outcomes)
    assert got["fine"].error is None
    error = got["hostile row"].error
    assert isinstance(error, InferenceStatusError) and error.http_status == status
    assert str(error) == "bad token (you sent Authorization: ***)"
    assert got["hostile row"].attempts == (3 if status == 500 else 1)
    retries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("retry ")]
    assert len(retries) == (1 if status == 500 else 0)  # then rolled up
    assert all("you sent Authorization: ***" in m for m in retries)
    assert TOKEN not in caplog.text


def test_an_echoed_token_in_an_undecodable_200_is_scrubbed(endpoint_app: EndpointApp) -> None:
    endpoint_app.configure(echo_auth="html")
    codec = make_codec()
    _, outcomes = run_pool(endpoint_app.url, make_requests(codec, 1), codec=codec, headers=AUTH)
    error = outcomes[0].error
    assert isinstance(error, BadResponseError) and error.status == "bad_response"
    assert "non-JSON" in str(error) and "you sent Authorization: ***" in str(error)
    assert TOKEN[:6] not in str(error)


def test_a_token_cut_by_the_excerpt_shows_no_part_of_itself() -> None:
    secrets = secrets_of(AUTH)
    pool = Pool(url="http://127.0.0.1:1", codec=make_codec(), concurrency=1,
                request_timeout=1, max_attempts=1, headers=AUTH)  # fmt: skip
    straddled = 0
    for pad in range(100, 200, 3):  # the token straddles the 200-character cut
        body = ("x" * pad + f" Authorization: Bearer {TOKEN} tail").encode()
        bad_shape = b'[{"generated_text": 1, "note": "' + body + b'"}]'
        for raw in (body, b'{"error": "' + body + b'"}', bad_shape):
            shown = excerpt(raw)  # what a message would quote without scrubbing
            straddled += f"Bearer {TOKEN[:2]}" in shown and TOKEN not in shown
            if raw is bad_shape:
                message = str(pool._scrubbed(BadResponseError(shown), raw, 1))
            else:
                message = str(status_error(400, raw, None, secrets=secrets))
            # "Bearer" is part of the secret: gone means scrubbed before the cut
            assert "Bearer" not in message and TOKEN[:2] not in message, message
    assert straddled >= 3


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_answer_over_max_response_bytes_is_final_and_the_others_succeed(
    endpoint_app: EndpointApp, chunked: bool
) -> None:
    endpoint_app.configure(
        big_response_bytes=5_000_000, big_response_match="huge", big_response_chunked=chunked
    )
    codec = make_codec()
    texts = ["a", "huge one", "b", "c"]
    requests = [Request(t, encode(codec, [{"text": t}]), 1) for t in texts]
    pool, outcomes = run_pool(
        endpoint_app.url, requests, codec=codec, max_attempts=3, max_response_bytes=1 << 20
    )
    got = by_key(outcomes)
    for t in ("a", "b", "c"):
        assert got[t].results == [{"generated_text": expected_generated_text(t)}]
    error = got["huge one"].error
    assert isinstance(error, ResponseTooLargeError) and error.status == "response_too_large"
    assert "max_response_bytes = 1,048,576 bytes" in str(error)
    assert ("stopped reading at" in str(error)) is chunked
    assert got["huge one"].attempts == 1 and pool.stats.retries == 0
    assert endpoint_app.received()["huge one"] == 1


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_answer_under_max_response_bytes_is_read_whole(
    endpoint_app: EndpointApp, chunked: bool
) -> None:
    size = 300_000
    endpoint_app.configure(big_response_bytes=size, big_response_chunked=chunked)
    codec = make_codec()
    _, outcomes = run_pool(
        endpoint_app.url, make_requests(codec, 2), codec=codec, max_response_bytes=size
    )
    for outcome in outcomes:
        assert outcome.error is None, outcome.error
        assert outcome.results is not None
        assert outcome.results[0]["generated_text"] == "x" * (
            size - len('[{"generated_text": ""}]')
        )
