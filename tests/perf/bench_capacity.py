"""`concurrency = "auto"` against fixed concurrencies, on an endpoint with a capacity model.

One run, one server (the test endpoint in its own process, `tests/support/endpoint_app.py`,
with its capacity knobs: at most ``--capacity`` requests in service at once for ``service_ms +
per_item_ms × in service``, the rest queued, a 429 with Retry-After past ``--max-queue``), the
same `batchrun.pool.Pool` for every client:

1. fixed C = 4, 8, 16, 32, 64, 128, 256, ``--fixed-s`` seconds each (the first second is
   warm-up): rows/s, p50 latency of first attempts, share of requests answered 429/503;
   the *knee* is the smallest C within 5 % of the best rows/s, its p50 the knee's latency;
2. auto, in three phases: ``--phase-s`` s at the capacity (steady state: its second half),
   then the capacity doubled (a second replica: time until the rows/s over 2 s reach 0.9 × the
   model's new best scaled by best-fixed / model-best), then back (time until the last 429/503);
3. a server without a knee (no capacity model, a flat ``--flat-ms`` latency): fixed C = 256
   and auto (max_concurrency 256), ``--flat-s`` s each: where auto ends, and its rows/s over
   the second half. The flat latency is long enough (400 ms: 640 rows/s at C = 256) for this
   client to keep up: at 40 ms, C = 256 asks 6,400 rows/s of one Python process, whose own
   event loop then is the knee (the latency it measures grows, and auto stops below 256).

Goals (issue 15 §2): auto's steady state ≥ 0.95 × the best fixed C's rows/s, p50 ≤ 1.5 × the
knee's latency, < 1 % 429/503; 0.9 × the new best within 30 s of doubling, 429/503s stop within
10 s of halving; on the flat server it ends at max_concurrency and matches fixed 256.

    python tests/perf/bench_capacity.py                 # about 2 minutes
    python tests/perf/bench_capacity.py --fixed-s 4 --phase-s 15 --flat-s 8

Against the local service's echo capacity model (batchrun/local, issue 15 §1) instead: start
an endpoint with ``batchrun endpoints create ... --env MAX_BATCH=32 --env MAX_QUEUE=64 ...``
(its env names), pass its URL as ``--url`` and its replica update (``batchrun endpoints update
NAME --min-replica 2``) in place of the capacity knob; ``--url`` skips phases 2b/2c and 3, which
need the test endpoint's ``/_control``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from batchrun.adaptive import AdaptiveLimit
from batchrun.codecs import codec_for
from batchrun.job import Job
from batchrun.pool import Outcome, Pool, Request
from tests.support.endpoint_app import EndpointProcess

FIXED = (4, 8, 16, 32, 64, 128, 256)


@dataclass
class Trace:
    """What one client saw: per first-attempt success (time, latency), and overload times."""

    start: float = field(default_factory=time.monotonic)
    done: list[tuple[float, float]] = field(default_factory=list)  # (t, latency_s)
    settled: list[float] = field(default_factory=list)  # every outcome's time
    attempts: int = 0
    overloads: list[float] = field(default_factory=list)
    limits: list[tuple[float, int]] = field(default_factory=list)

    def rate(self, t0: float, t1: float) -> float:
        n = sum(1 for t in self.settled if t0 <= t < t1)
        return n / (t1 - t0) if t1 > t0 else 0.0

    def p50(self, t0: float, t1: float) -> float:
        lat = [lat for t, lat in self.done if t0 <= t < t1]
        return statistics.median(lat) if lat else float("nan")


def _codec(url: str) -> object:
    job = Job.from_dict(
        {
            "endpoint": {"provider": "url", "url": url, "task": "text-generation"},
            "input": {"path": "in.jsonl", "field": "text"},
            "output": {"path": "out.jsonl"},
        }
    )
    return codec_for(job)


async def _drive(
    url: str,
    concurrency: int,
    seconds: float,
    *,
    adaptive: AdaptiveLimit | None = None,
    at: list[tuple[float, dict[str, object]]] | None = None,
    app: EndpointProcess | None = None,
) -> Trace:
    """Send requests for `seconds` with a fixed `concurrency` (or `adaptive`); `at` changes
    the server's knobs at those seconds into the run."""
    codec = _codec(url)
    body = codec.encode_rendered([codec.render({"text": "a row of about the usual length"})])  # type: ignore[attr-defined]
    pool = Pool(
        url=url,
        codec=codec,  # type: ignore[arg-type]
        concurrency=concurrency,
        request_timeout=30,
        max_attempts=20,
        backoff_max=1.0,
        retry_after_max=2.0,
        adaptive=adaptive,
    )
    trace = Trace()
    deadline = trace.start + seconds

    def requests() -> Iterator[Request]:
        i = 0
        while time.monotonic() < deadline:
            i += 1
            yield Request(i, body, 1)

    def on_outcome(outcome: Outcome) -> None:
        now = time.monotonic() - trace.start
        trace.settled.append(now)
        if outcome.error is None and outcome.attempts == 1:
            trace.done.append((now, outcome.latency_ms / 1000.0))
        if adaptive is not None:
            trace.limits.append((now, adaptive.limit))

    async def watch() -> None:
        seen = 0
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic() - trace.start
            throttled = pool.stats.throttled
            if throttled > seen:
                trace.overloads.append(now)
                seen = throttled
            if adaptive is not None:
                trace.limits.append((now, adaptive.limit))
            while at and now >= at[0][0]:
                _, knobs = at.pop(0)
                assert app is not None
                await asyncio.to_thread(app.configure, **knobs)

    watcher = asyncio.create_task(watch())
    try:
        await pool.run(requests(), on_outcome)
    finally:
        watcher.cancel()
    trace.attempts = pool.stats.attempts
    return trace


def _overload_share(app: EndpointProcess | None, trace: Trace) -> float:
    if app is None:
        return float("nan")
    statuses = app.stats()["statuses"]
    bad = statuses.get("429", 0) + statuses.get("503", 0)
    total = sum(statuses.values())
    return bad / total if total else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--capacity", type=int, default=32)
    parser.add_argument("--service-ms", type=float, default=40.0)
    parser.add_argument("--per-item-ms", type=float, default=0.5)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--retry-after", default="0.2")
    parser.add_argument("--fixed-s", type=float, default=5.0)
    parser.add_argument("--phase-s", type=float, default=18.0)
    parser.add_argument("--flat-s", type=float, default=15.0)
    parser.add_argument("--flat-ms", type=float, default=400.0)
    parser.add_argument("--url", help="an endpoint of your own (phases 1 and 2a only)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the pool's 429 lines would bury the table
    knobs: dict[str, object] = {
        "capacity": args.capacity,
        "service_ms": args.service_ms,
        "per_item_ms": args.per_item_ms,
        "max_queue": args.max_queue,
        "queue_retry_after": args.retry_after,
    }
    if args.url:
        run(args, args.url, None, knobs)
        return
    with EndpointProcess(python=sys.executable, **knobs) as app:
        run(args, app.url, app, knobs)


def _model_best(capacity: int, service_ms: float, per_item_ms: float) -> float:
    return capacity / ((service_ms + per_item_ms * capacity) / 1000.0)


def run(
    args: argparse.Namespace, url: str, app: EndpointProcess | None, knobs: dict[str, object]
) -> None:
    print(
        f"capacity model: {args.capacity} in service, service {args.service_ms:g} ms + "
        f"{args.per_item_ms:g} ms × batch, queue {args.max_queue}, Retry-After {args.retry_after}"
    )
    print(f"{'client':>10} {'rows/s':>8} {'p50 ms':>7} {'429/503':>8} {'C':>12}")
    fixed: dict[int, tuple[float, float]] = {}
    for c in FIXED:
        if app is not None:
            app.configure(reset=True, **knobs)
        t = asyncio.run(_drive(url, c, args.fixed_s))
        rate, p50 = t.rate(1.0, args.fixed_s), t.p50(1.0, args.fixed_s)
        fixed[c] = (rate, p50)
        share = _overload_share(app, t)
        print(f"{'fixed':>10} {rate:8.1f} {p50 * 1000:7.1f} {share:8.2%} {c:>12}")
    best = max(r for r, _ in fixed.values())
    knee = min(c for c, (r, _) in fixed.items() if r >= 0.95 * best)
    knee_p50 = fixed[knee][1]
    print(f"best fixed: {best:.1f} rows/s; knee C = {knee} (p50 {knee_p50 * 1000:.1f} ms)")

    phase = args.phase_s
    at: list[tuple[float, dict[str, object]]] = []
    total = phase
    if app is not None:
        at = [(phase, {"capacity": 2 * args.capacity}), (2.25 * phase, knobs)]
        total = 3 * phase
        app.configure(reset=True, **knobs)
    control = AdaptiveLimit(maximum=256)
    t = asyncio.run(_drive(url, 256, total, adaptive=control, at=at, app=app))
    rate, p50 = t.rate(phase / 2, phase), t.p50(phase / 2, phase)
    share = _overload_share(app, t)
    steady = [c for s, c in t.limits if phase / 2 <= s < phase]
    mean_c = statistics.mean(steady) if steady else float("nan")
    print(
        f"{'auto':>10} {rate:8.1f} {p50 * 1000:7.1f} {share:8.2%} {f'mean {mean_c:.0f}':>12}"
        "   (steady state: the phase's second half; 429/503 over the whole run)"
    )
    print(
        f"auto / best fixed = {rate / best:.3f} (goal >= 0.95); p50 / knee p50 = "
        f"{p50 / knee_p50:.2f} (goal <= 1.5); 429/503 {share:.2%} (goal < 1 %)"
    )
    marks = []
    for s in range(0, int(total) + 1, 2):
        seen = [c for when, c in t.limits if when <= s]
        marks.append(f"{s}s:{seen[-1] if seen else control.initial}")
    print("auto's limit over time: " + " ".join(marks))
    if app is not None:
        scale = best / _model_best(args.capacity, args.service_ms, args.per_item_ms)
        new_best = scale * _model_best(2 * args.capacity, args.service_ms, args.per_item_ms)
        reached = next(
            (s for s in _steps(phase, 2.25 * phase) if t.rate(s - 2.0, s) >= 0.9 * new_best),
            None,
        )
        after = [s for s in t.overloads if s >= 2.25 * phase]
        last = max(after) - 2.25 * phase if after else 0.0
        rate2 = t.rate(1.75 * phase, 2.25 * phase)
        doubled = f"{reached - phase:.1f} s" if reached is not None else "not reached"
        print(
            f"capacity doubled: 0.9 × new best ({new_best:.0f} rows/s) reached after {doubled} "
            f"(goal <= 30 s); rows/s before halving {rate2:.1f}; halved: last 429 "
            f"{last:.1f} s after (goal <= 10 s); auto ended at C = {control.limit}"
        )
        app.configure(reset=True, capacity=0, latency_ms=args.flat_ms)
        flat_fixed = asyncio.run(_drive(url, 256, args.flat_s))
        flat_control = AdaptiveLimit(maximum=256)
        flat_auto = asyncio.run(_drive(url, 256, args.flat_s, adaptive=flat_control))
        half = args.flat_s / 2
        r_fixed = flat_fixed.rate(half, args.flat_s)
        r_auto = flat_auto.rate(half, args.flat_s)
        print(
            f"no knee ({args.flat_ms:g} ms flat): fixed 256 {r_fixed:.1f} rows/s, auto "
            f"{r_auto:.1f} rows/s over the second half ({r_auto / r_fixed:.3f}); auto ended at "
            f"C = {flat_control.limit} (goal: 256)"
        )


def _steps(t0: float, t1: float) -> Iterator[float]:
    s = t0 + 2.0
    while s <= t1:
        yield s
        s += 0.25


if __name__ == "__main__":
    main()
