"""`concurrency = "auto"`: the controller on a fake clock against synthetic servers, the permit
gate, and one run end to end against the test endpoint's capacity model (asserted by counts)."""

from __future__ import annotations

import asyncio
import io
import logging
import random
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from batchrun.adaptive import AdaptiveLimit, Permits, for_run
from batchrun.cli import main
from batchrun.errors import JobError
from batchrun.job import load_job
from batchrun.progress import Counts, Progress, summary_lines
from batchrun.runner import run_job
from batchrun.summary import RunSummary
from tests.support.endpoint_app import EndpointApp
from tests.support.run import job_sections, write_job, write_jsonl


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def knee_latency(c: int, capacity: int, base: float = 0.040, per_item: float = 0.0005) -> float:
    """A capacity model's latency at `c` in flight: service grows a little with the batch up
    to `capacity`, then requests queue (latency in proportion to c, throughput flat)."""
    service = base + per_item * min(c, capacity)
    return service if c <= capacity else service * c / capacity


class Server:
    """A closed loop on a fake clock: `limit` requests in flight, each taking latency(limit);
    past `capacity + max_queue` in flight the excess is answered 429."""

    def __init__(self, control: AdaptiveLimit, clock: FakeClock, *, seed: int = 1) -> None:
        self.control = control
        self.clock = clock
        self.rng = random.Random(seed)
        self.capacity = 32
        self.max_queue: int | None = None
        self.flat: float | None = None  # a latency that does not depend on load
        self.throttled = 0
        self.answered = 0

    def run(self, requests: int) -> list[int]:
        """Serve `requests` completions; the limit seen at each."""
        seen = []
        for _ in range(requests):
            c = self.control.limit
            latency = self.flat if self.flat is not None else knee_latency(c, self.capacity)
            self.clock.now += latency / c * self.rng.lognormvariate(0, 0.2)
            over = self.max_queue is not None and c > self.capacity + self.max_queue
            if over and self.rng.random() < 1 - (self.capacity + self.max_queue) / c:
                self.throttled += 1
                self.control.overload()
            else:
                self.answered += 1
                self.control.sample(latency * self.rng.lognormvariate(0, 0.1))
            seen.append(c)
        return seen


def _throughput(limits: list[int], capacity: int) -> float:
    """The mean rows/s over `limits`, as a fraction of the knee's."""
    best = capacity / knee_latency(capacity, capacity)
    rates = [min(c / knee_latency(c, capacity), best) for c in limits]
    return sum(rates) / len(rates) / best


def test_a_server_without_a_knee_takes_it_to_max_concurrency_and_it_stays() -> None:
    clock = FakeClock()
    control = AdaptiveLimit(maximum=256, clock=clock)
    server = Server(control, clock)
    server.flat = 0.05
    seen = server.run(20_000)
    assert control.limit == 256
    assert Counter(seen[-5_000:]) == {256: 5_000}
    assert control.decreases == 0 and control.increases == 6  # 4, 8, ..., 256


def test_it_settles_at_the_knee_with_the_knees_throughput() -> None:
    clock = FakeClock()
    control = AdaptiveLimit(maximum=256, clock=clock)
    server = Server(control, clock)
    server.capacity = 32
    seen = server.run(40_000)
    steady = seen[-20_000:]
    assert _throughput(steady, 32) >= 0.95
    median = sorted(steady)[len(steady) // 2]
    assert 28 <= median <= 48  # at the knee, probing a step either side
    assert max(steady) <= 64 and min(steady) >= 16


def test_probes_that_find_the_same_knee_again_grow_rare() -> None:
    # The bench against the local service's echo model (tests/perf/bench_capacity.py) held
    # the knee at 0.937 × the best fixed C: every 8 rounds a probe up gained nothing, and the
    # step below that follows cost a quarter of the throughput for a round. Each probe that
    # finds the knee again now doubles the wait to the next one (up to probe_every_max).
    def steady(probe_every_max: int) -> tuple[int, int, float]:
        clock = FakeClock()
        control = AdaptiveLimit(maximum=256, clock=clock, probe_every_max=probe_every_max)
        server = Server(control, clock)
        server.capacity = 32
        server.run(20_000)
        decreases = control.decreases
        seen = server.run(60_000)
        below = sum(1 for c in seen if c < 32)
        return control.decreases - decreases, below, _throughput(seen, 32)

    every_8 = steady(8)  # the wait never grows: the controller before this change
    backed_off = steady(32)  # the default
    assert backed_off[0] * 3 <= every_8[0]  # steps down: 18 before, 5 now (this seed)
    assert backed_off[1] * 4 <= every_8[1]  # completions below the knee
    assert backed_off[2] > every_8[2] and backed_off[2] >= 0.99


def test_429s_halve_the_limit_and_it_stays_below_the_queue() -> None:
    clock = FakeClock()
    control = AdaptiveLimit(maximum=256, clock=clock)
    server = Server(control, clock)
    server.flat = 0.05  # no latency signal at all: only the 429s say "too many"
    server.capacity, server.max_queue = 40, 0
    server.run(3_000)
    assert control.decreases >= 1
    before = server.throttled
    seen = server.run(20_000)
    assert max(seen) <= 2 * 40  # once halved it never doubles again past the queue
    assert (server.throttled - before) / 20_000 < 0.02


def test_an_overload_halves_the_limit_at_once_and_once_per_round() -> None:
    clock = FakeClock()
    control = AdaptiveLimit(maximum=256, initial=64, clock=clock)
    clock.now = 1.0
    assert control.overload() is True
    assert control.limit == 32 and control.decreases == 1
    clock.now = 1.1
    assert control.overload() is False  # the same burst
    clock.now = 1.6
    assert control.overload() is True and control.limit == 16


def test_it_follows_capacity_up_when_it_doubles_and_down_when_it_halves() -> None:
    clock = FakeClock()
    control = AdaptiveLimit(maximum=256, clock=clock)
    server = Server(control, clock)
    server.capacity = 32
    server.run(20_000)
    server.capacity = 64  # a second replica
    start = clock.now
    seen = server.run(60_000)
    assert _throughput(seen[-20_000:], 64) >= 0.95
    reached = next(i for i, c in enumerate(seen) if c >= 0.9 * 64)
    assert reached < 30_000  # well within the run (the fake clock: a few tens of seconds)
    assert clock.now - start > 0  # the clock moved only by the served latencies
    server.capacity = 32  # back to one
    seen = server.run(40_000)
    assert _throughput(seen[-20_000:], 32) >= 0.95
    assert sorted(seen[-20_000:])[10_000] <= 48


def test_mean_is_time_weighted() -> None:
    clock = FakeClock()
    control = AdaptiveLimit(maximum=100, initial=10, clock=clock)
    clock.now = 1.0
    control.overload()  # 10 for 1 s, then 5
    clock.now = 2.0
    assert control.limit == 5 and control.mean() == pytest.approx(7.5)


def test_for_run_keeps_an_integer_and_builds_a_controller_for_auto() -> None:
    assert for_run(8, 256) == (8, None)
    workers, control = for_run("auto", 64)
    assert workers == 64 and control is not None and control.limit == 4


def test_permits_follow_the_limit() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        control = AdaptiveLimit(maximum=8, initial=2, clock=clock)
        permits = Permits(control)
        await permits.acquire()
        await permits.acquire()
        third = asyncio.create_task(permits.acquire())
        await asyncio.sleep(0)
        assert not third.done() and permits.in_use == 2
        cancelled = asyncio.create_task(permits.acquire())
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        control.limit = 4  # what the controller does on a rise; release wakes the waiters
        permits.release()
        await asyncio.wait_for(third, 1.0)
        assert permits.in_use == 2  # one given back, one taken; the cancelled one holds none
        permits.wake()
        assert permits.in_use == 2

    asyncio.run(scenario())


def test_the_job_takes_auto_or_an_integer(tmp_path: Path) -> None:
    for value, expected in (("auto", "auto"), (12, 12)):
        sections = job_sections("http://127.0.0.1:9", "in.jsonl", "out.jsonl")
        sections["run"] = {"concurrency": value, "max_concurrency": 64}
        job = load_job(write_job(tmp_path / "job.toml", sections))
        assert job.run.concurrency == expected and job.run.max_concurrency == 64
    for value, message in (
        ("fast", "[run] concurrency: expected an integer or 'auto', got string 'fast'"),
        (0, '[run] concurrency must be from 1 to 100,000 (or "auto"), got 0'),
    ):
        sections["run"] = {"concurrency": value}
        with pytest.raises(JobError) as e:
            load_job(write_job(tmp_path / "job.toml", sections))
        assert message in str(e.value) and "job.toml" in str(e.value)


def test_auto_run_end_to_end_against_a_capacity_model(tmp_path: Path) -> None:
    rows = 2_400
    write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "text": f"row {i}"} for i in range(rows)])
    with EndpointApp(capacity=8, service_ms=10, max_queue=8, queue_retry_after="0.05") as app:
        sections = job_sections(app.url, "in.jsonl", "out.jsonl")
        sections["run"] = {"concurrency": "auto", "max_concurrency": 64}
        summary = run_job(load_job(write_job(tmp_path / "job.toml", sections)), progress=False)
        stats = app.stats()
    assert summary.exit_code == 0 and summary.succeeded == rows and summary.failed == 0
    assert summary.concurrency is not None and 1 <= summary.concurrency <= 64
    assert summary.mean_concurrency is not None and 1 <= summary.mean_concurrency <= 64
    assert stats["max_in_flight"] > 4  # it grew from where it starts
    assert stats["max_in_flight"] <= 64
    throttled = stats["statuses"].get("429", 0)
    assert throttled < 0.05 * rows
    assert stats["ok"] == rows
    assert summary.to_json()["concurrency"] == summary.concurrency


def test_the_progress_line_and_the_summary_show_the_current_and_mean_concurrency(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal: the log line
    counts = Counts(succeeded=10, failed=0, retries=0, skipped_done=0, concurrency=(24, 18.5))
    shown = Progress(
        enabled=True, total=100, initial=0, counts=lambda: counts, cost_text=lambda: None
    )
    with caplog.at_level(logging.INFO, logger="batchrun.progress"):
        shown.log_line()
    assert "concurrency 24 (mean 18.5)" in caplog.messages[-1]
    summary = RunSummary(output="o.jsonl", concurrency=24, mean_concurrency=18.5)
    assert "concurrency: auto, 24 at the end, mean 18.5" in str(summary)
    assert any("concurrency: auto, 24 at the end" in line for line in summary_lines(summary))
    assert "concurrency" not in str(RunSummary(output="o.jsonl"))  # a fixed one: nothing new


def test_the_cli_takes_concurrency_auto(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "text": f"row {i}"} for i in range(20)])
    with EndpointApp() as app:
        job_file = write_job(tmp_path / "job.toml", job_sections(app.url, "in.jsonl", "o.jsonl"))
        result = CliRunner().invoke(main, ["run", str(job_file), "--concurrency", "auto", "-q"])
        assert result.exit_code == 0, result.output
        summary = orjson.loads(result.stdout)
        assert summary["succeeded"] == 20 and 1 <= summary["concurrency"] <= 256
        bad = CliRunner().invoke(main, ["run", str(job_file), "--concurrency", "many"])
        assert bad.exit_code == 2 and "--concurrency" in bad.output


def test_auto_backs_off_on_429s_end_to_end(tmp_path: Path) -> None:
    # four in service and no queue: every request past four is a 429 (no Retry-After, so no
    # pool-wide hold either); only the controller's cuts keep their count down
    rows = 800
    write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "text": f"row {i}"} for i in range(rows)])
    with EndpointApp(capacity=4, service_ms=10, max_queue=0, queue_retry_after="") as app:
        sections = job_sections(app.url, "in.jsonl", "out.jsonl")
        sections["run"] = {
            "concurrency": "auto",
            "max_concurrency": 64,
            "max_attempts": 10,
            "backoff_max": 0.05,
        }
        summary = run_job(load_job(write_job(tmp_path / "job.toml", sections)), progress=False)
        stats = app.stats()
    assert summary.exit_code == 0 and summary.succeeded == rows
    assert stats["max_in_service"] <= 4 and stats["ok"] == rows
    throttled = stats["statuses"].get("429", 0)
    assert 0 < throttled < 0.25 * rows  # a fixed C = 8 here would see about one in two
    assert summary.concurrency is not None and summary.concurrency <= 8
