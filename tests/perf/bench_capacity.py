"""`concurrency = "auto"` against fixed concurrencies, on an endpoint with a capacity model.

By default (``--target local``) against the local service's echo capacity model (issue 15 §1):
`batchrun serve` in a temp dir (its own BATCHRUN_HOME and state, as tests/conftest.py's
`local_service` starts it), a public echo endpoint ``cap`` with ``BATCHRUN_ECHO_MAX_BATCH`` /
``_MAX_QUEUE`` / ``_BASE_MS`` / ``_PER_ITEM_MS`` from ``--capacity`` / ``--max-queue`` /
``--service-ms`` / ``--per-item-ms`` (defaults 16 / 16 / 100 / 2: 121 rows/s a replica, 429
with Retry-After 1 past the queue), and ``flat`` with only ``BATCHRUN_ECHO_LATENCY_MS``
(``--flat-ms``, no knee). The same `batchrun.pool.Pool` for every client; 429s are the pool's
(the echo model answers no 503s); one run:

1. fixed C = 4, 8, 16, 32, 64, 128, 256 on one replica, ``--fixed-s`` s each (the first
   second is warm-up): rows/s, p50 latency of first attempts, share of attempts answered
   429; the *knee* is the smallest C within 5 % of the best rows/s, its p50 the knee's
   latency; then, on two replicas (a live update of minReplica/maxReplica through the
   service's API), fixed C = 2 and 4 × the knee: the new best;
2. auto (max_concurrency 256) for 3 × ``--phase-s`` s: steady state over the first phase's
   second half; at ``phase`` s the replicas go 1 -> 2 (time until the rows/s over 2 s reach
   0.9 × the new best), at 2.25 × ``phase`` back to 1 (time until the last 429);
3. the ``flat`` endpoint: fixed C = 256 and auto, ``--flat-s`` s each: when auto reaches
   256, and both rows/s from a second after that to the end.

``--target app`` runs the same against the test endpoint in its own process
(`tests/support/endpoint_app.py`, its capacity knob doubled and halved through
``/_control``; defaults 32 / 64 / 40 / 0.5); ``--url`` drives an endpoint of your own
(phases 1 and 2's steady state only).

Goals (issue 15 §2): auto's steady state ≥ 0.95 × the best fixed C's rows/s, p50 ≤ 1.5 × the
knee's latency, < 1 % 429/503; 0.9 × the new best within 30 s of 1 -> 2 replicas, 429/503s
stop within 10 s of 2 -> 1; on the flat server it ends at max_concurrency and matches fixed 256.

    python tests/perf/bench_capacity.py                 # about 2.5 minutes
    python tests/perf/bench_capacity.py --fixed-s 4 --phase-s 15 --flat-s 8
    python tests/perf/bench_capacity.py --target app
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import httpx

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
    throttled: int = 0
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
    at: list[tuple[float, Callable[[], object]]] | None = None,
) -> Trace:
    """Send requests for `seconds` with a fixed `concurrency` (or `adaptive`); `at` calls
    those changes of the server (in a thread) at those seconds into the run."""
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
                trace.overloads.extend([now] * (throttled - seen))  # one entry per 429
                seen = throttled
            if adaptive is not None:
                trace.limits.append((now, adaptive.limit))
            while at and now >= at[0][0]:
                _, change = at.pop(0)
                await asyncio.to_thread(change)

    watcher = asyncio.create_task(watch())
    try:
        await pool.run(requests(), on_outcome)
    finally:
        watcher.cancel()
    trace.attempts = pool.stats.attempts
    trace.throttled = pool.stats.throttled
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
    # defaults: 32, 40, 0.5 for the test endpoint; 16, 100, 2 for the local service (121
    # rows/s a replica, so that two replicas and C = 256 stay well within one client's reach)
    parser.add_argument("--capacity", type=int)
    parser.add_argument("--service-ms", type=float)
    parser.add_argument("--per-item-ms", type=float)
    parser.add_argument("--max-queue", type=int)
    parser.add_argument("--retry-after", default="0.2")
    parser.add_argument("--fixed-s", type=float, default=5.0)
    parser.add_argument("--phase-s", type=float, default=18.0)
    parser.add_argument("--flat-s", type=float, default=15.0)
    parser.add_argument("--flat-ms", type=float, default=400.0)
    parser.add_argument("--url", help="an endpoint of your own (phases 1 and 2a only)")
    parser.add_argument(
        "--target",
        choices=["local", "app"],
        default="local",
        help="local: the local service's echo capacity model (default); app: the test endpoint",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the pool's 429 lines would bury the table
    local = args.target == "local" and not args.url
    for key, (app_default, local_default) in {
        "capacity": (32, 16),
        "service_ms": (40.0, 100.0),
        "per_item_ms": (0.5, 2.0),
        "max_queue": (64, 16),
    }.items():
        if getattr(args, key) is None:
            setattr(args, key, local_default if local else app_default)
    if local:
        run_local(args)
        return
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
        doubled_knobs = {**knobs, "capacity": 2 * args.capacity}
        at = [
            (phase, lambda: app.configure(**doubled_knobs)),
            (2.25 * phase, lambda: app.configure(**knobs)),
        ]
        total = 3 * phase
        app.configure(reset=True, **knobs)
    control = AdaptiveLimit(maximum=256)
    t = asyncio.run(_drive(url, 256, total, adaptive=control, at=at))
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


class LocalTarget:
    """The local service (`batchrun serve`, its own BATCHRUN_HOME and state in a temp dir)
    with two public echo endpoints: ``cap`` with the capacity model in its env, ``flat`` with
    only a fixed latency (no knee). Replicas change through the service's API, live."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        from tests.conftest import start_local_service

        self.svc = start_local_service(tmp / "state")
        self.api = httpx.Client(
            base_url=self.svc.api_url, headers=self.svc.headers, timeout=60, trust_env=False
        )
        capacity = {
            "BATCHRUN_ECHO_MAX_BATCH": str(args.capacity),
            "BATCHRUN_ECHO_MAX_QUEUE": str(args.max_queue),
            "BATCHRUN_ECHO_BASE_MS": f"{args.service_ms:g}",
            "BATCHRUN_ECHO_PER_ITEM_MS": f"{args.per_item_ms:g}",
        }
        self.url = self._create("cap", capacity)
        self.flat_url = self._create("flat", {"BATCHRUN_ECHO_LATENCY_MS": f"{args.flat_ms:g}"})

    def _create(self, name: str, env: dict[str, str]) -> str:
        from tests.test_local_helpers import NS, body, wait_state

        r = self.api.post(f"/endpoint/{NS}", json=body(name, env=env, type="public"))
        r.raise_for_status()
        return str(wait_state(self.api, name, "running", timeout=120)["status"]["url"]) + "/"

    def replicas(self, n: int, *, wait: bool = False) -> None:
        """Set ``cap``'s min/max replicas to `n` (live); with `wait`, until `n` are ready and
        the removed ones have left."""
        from tests.support.waiting import wait_for
        from tests.test_local_helpers import NS

        r = self.api.put(
            f"/endpoint/{NS}/cap",
            json={"compute": {"scaling": {"minReplica": n, "maxReplica": n}}},
        )
        r.raise_for_status()
        if wait:
            wait_for(lambda: self.ready() == n, 60, f"{n} ready replicas")
            wait_for(lambda: len(self.svc.worker_pids()) == n + 1, 60, "drained replicas gone")

    def ready(self) -> int:
        from tests.test_local_helpers import NS

        return int(self.api.get(f"/endpoint/{NS}/cap").json()["status"]["readyReplica"])

    def close(self) -> None:
        self.api.close()
        self.svc.stop()


def _row(label: str, t: Trace, t0: float, t1: float, c: str) -> tuple[float, float]:
    rate, p50 = t.rate(t0, t1), t.p50(t0, t1)
    share = t.throttled / t.attempts if t.attempts else 0.0
    print(f"{label:>10} {rate:8.1f} {p50 * 1000:7.1f} {share:8.2%} {c:>12}")
    return rate, p50


def run_local(args: argparse.Namespace) -> None:
    """Issue 15 §2's goals against the local service's echo capacity model."""
    with tempfile.TemporaryDirectory() as tmp:
        target = LocalTarget(args, Path(tmp))
        try:
            _run_local(args, target)
        finally:
            target.close()


def _run_local(args: argparse.Namespace, target: LocalTarget) -> None:
    one = _model_best(args.capacity, args.service_ms, args.per_item_ms)
    print(
        f"local service, echo capacity model per replica: MAX_BATCH {args.capacity}, "
        f"BASE_MS {args.service_ms:g} + PER_ITEM_MS {args.per_item_ms:g} × batch, MAX_QUEUE "
        f"{args.max_queue}, 429 Retry-After 1 (model's best {one:.0f} rows/s per replica)"
    )
    print(f"{'client':>10} {'rows/s':>8} {'p50 ms':>7} {'429/503':>8} {'C':>12}")
    url, w = target.url, args.fixed_s
    fixed: dict[int, tuple[float, float]] = {}
    for c in FIXED:
        fixed[c] = _row("fixed", asyncio.run(_drive(url, c, w)), 1.0, w, str(c))
    best = max(r for r, _ in fixed.values())
    knee = min(c for c, (r, _) in fixed.items() if r >= 0.95 * best)
    knee_p50 = fixed[knee][1]
    print(f"best fixed: {best:.1f} rows/s; knee C = {knee} (p50 {knee_p50 * 1000:.1f} ms)")

    target.replicas(2, wait=True)
    two: dict[int, float] = {}
    for c in (2 * knee, 4 * knee):
        two[c] = _row("2 repl.", asyncio.run(_drive(url, c, w)), 1.0, w, str(c))[0]
    new_best = max(two.values())
    print(f"best fixed on 2 replicas: {new_best:.1f} rows/s")
    target.replicas(1, wait=True)

    phase = args.phase_s
    up, down, total = phase, 2.25 * phase, 3 * phase
    at: list[tuple[float, Callable[[], object]]] = [
        (up, lambda: target.replicas(2)),
        (down, lambda: target.replicas(1)),
    ]
    control = AdaptiveLimit(maximum=256)
    t = asyncio.run(_drive(url, 256, total, adaptive=control, at=at))
    rate, p50 = t.rate(phase / 2, phase), t.p50(phase / 2, phase)
    steady = [c for s, c in t.limits if phase / 2 <= s < phase]
    mean_c = statistics.mean(steady) if steady else float("nan")
    early = sum(1 for s in t.overloads if s < up)
    share = t.throttled / t.attempts if t.attempts else 0.0
    print(
        f"{'auto':>10} {rate:8.1f} {p50 * 1000:7.1f} {share:8.2%} {f'mean {mean_c:.0f}':>12}"
        "   (steady state: phase 1's second half; 429s over the whole run)"
    )
    n_steady = sum(1 for s in t.settled if phase / 2 <= s < phase)
    bad_steady = sum(1 for s in t.overloads if phase / 2 <= s < phase)
    print(
        f"steady state: auto / best fixed = {rate / best:.3f} (goal >= 0.95); p50 / knee p50 = "
        f"{p50 / knee_p50:.2f} (goal <= 1.5); {bad_steady} 429s per {n_steady} rows "
        f"({bad_steady / max(1, n_steady):.2%}, goal < 1 %); 429s before 1 -> 2: {early}"
    )
    marks = []
    for s in range(0, int(total) + 1, 2):
        seen = [c for when, c in t.limits if when <= s]
        marks.append(f"{s}s:{seen[-1] if seen else control.initial}")
    print("auto's limit over time: " + " ".join(marks))
    reached = next((s for s in _steps(up, down) if t.rate(s - 2.0, s) >= 0.9 * new_best), None)
    after = [s for s in t.overloads if s >= down]
    last = max(after) - down if after else 0.0
    doubled = f"{reached - up:.1f} s" if reached is not None else "not reached"
    print(
        f"replicas 1 -> 2 at {up:g} s: 0.9 × new best ({0.9 * new_best:.0f} rows/s over 2 s) "
        f"reached after {doubled} (goal <= 30 s); rows/s before 2 -> 1 "
        f"{t.rate(down - 0.25 * phase, down):.1f}; 2 -> 1 at {down:g} s: last 429 {last:.1f} s "
        f"after (goal <= 10 s); auto ended at C = {control.limit}"
    )

    flat_fixed = asyncio.run(_drive(target.flat_url, 256, args.flat_s))
    flat_control = AdaptiveLimit(maximum=256)
    flat_auto = asyncio.run(_drive(target.flat_url, 256, args.flat_s, adaptive=flat_control))
    at_max = next((s for s, c in flat_auto.limits if c == 256), None)
    since = at_max if at_max is not None and at_max < args.flat_s - 2 else args.flat_s / 2
    r_fixed = flat_fixed.rate(since + 1.0, args.flat_s)
    r_auto = flat_auto.rate(since + 1.0, args.flat_s)  # 1 s for the new permits' round trips
    reached_max = f"{at_max:.1f} s" if at_max is not None else "never"
    print(
        f"no knee ({args.flat_ms:g} ms flat, no capacity model): auto reached 256 after "
        f"{reached_max}; from 1 s after that to the end: fixed 256 {r_fixed:.1f} rows/s, auto "
        f"{r_auto:.1f} rows/s ({r_auto / r_fixed:.3f}); auto ended at C = {flat_control.limit} "
        "(goal: 256, matching fixed 256)"
    )


def _steps(t0: float, t1: float) -> Iterator[float]:
    s = t0 + 2.0
    while s <= t1:
        yield s
        s += 0.25


if __name__ == "__main__":
    main()
