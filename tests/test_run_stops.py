"""Stops from a caller, a stuck row holding the watermark, and an interrupted --retry-errors."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from batchrun.errors import EndpointFailedError
from batchrun.job import load_job
from batchrun.runner import RunControl, RunSummary, arun_job, run_job
from batchrun.targets import UrlTarget
from tests.support.endpoint_app import EndpointApp
from tests.support.run import (
    committed_meta,
    finish,
    job_sections,
    read_jsonl,
    read_results,
    start_run,
    write_job,
    write_jsonl,
)
from tests.support.waiting import wait_for


def _all_ids(tmp_path: Path, out: str = "out/r.jsonl") -> list[int]:
    ids = [r["id"] for r in read_results(tmp_path / out)]
    return sorted(ids + [e["id"] for e in read_jsonl(tmp_path / "out/r.errors.jsonl")])


def test_budget_stop_through_the_control_is_exit_4_and_resumable(
    tmp_path: Path, endpoint_app: EndpointApp
) -> None:
    # the first 50 requests are answered, the rest held: the run cannot end before the stop
    endpoint_app.configure(latency_ms=1, hold_after=50)
    write_jsonl(tmp_path / "in.jsonl", [{"text": f"t{i}"} for i in range(400)])
    job_file = write_job(
        tmp_path / "job.toml", job_sections(endpoint_app.url, "in.jsonl", "out/r.jsonl")
    )

    async def stopped_midway() -> tuple[int, str | None, bool, int]:
        control = RunControl()
        task = asyncio.create_task(arun_job(load_job(job_file), control=control, progress=False))
        await _until_held(endpoint_app, task)
        control.stop("budget")
        endpoint_app.configure(hold_after=-1)  # the held requests answer within the grace
        s = await task
        return s.exit_code, s.stop_reason, s.resumable, s.results_total

    code, reason, resumable, done = asyncio.run(stopped_midway())
    assert (code, reason, resumable) == (4, "budget", True)
    assert 50 <= done < 400
    endpoint_app.configure(latency_ms=0)
    rest = run_job(load_job(job_file), progress=False)
    assert rest.exit_code == 0 and rest.skipped_done == done and rest.succeeded == 400 - done
    assert _all_ids(tmp_path) == list(range(400))
    assert set(endpoint_app.received().values()) == {1}


def test_a_stuck_first_row_holds_the_window_then_the_run_completes(
    tmp_path: Path, endpoint_app: EndpointApp
) -> None:
    # the first request hangs past its timeout; the reader may run only a window ahead of it
    endpoint_app.configure(hang_first=1)
    n = 3000
    write_jsonl(tmp_path / "in.jsonl", [{"text": f"t{i}"} for i in range(n)])
    job_file = write_job(
        tmp_path / "job.toml",
        job_sections(
            endpoint_app.url,
            "in.jsonl",
            "out/r.jsonl",
            run={"request_timeout": 4, "concurrency": 8},
            output={"commit_rows": 200, "commit_seconds": 0.1},
        ),
    )
    proc = start_run(job_file)
    try:
        window = 4 * 200  # 4 commits' worth of rows

        def committed() -> int:
            try:
                return int(committed_meta(tmp_path / "out/r.jsonl").get("results_count", 0))
            except Exception:
                return 0

        wait_for(lambda: committed() >= window - 8, what="the window to fill and commit")
        assert committed_meta(tmp_path / "out/r.jsonl")["watermark"] == 0  # row 0 hangs
        # the reader stops a window ahead of the stuck row
        assert endpoint_app.stats()["requests"] <= window + 1
        rc, summary, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert rc == 0, err
    assert summary["succeeded"] == n and summary["retries"] >= 1
    assert _all_ids(tmp_path) == list(range(n))
    assert committed_meta(tmp_path / "out/r.jsonl")["watermark"] == n


def test_retry_errors_killed_midway_is_settled_exactly_once(
    tmp_path: Path, endpoint_app: EndpointApp
) -> None:
    n = 3000
    endpoint_app.configure(reject_match="x")
    rows = [{"text": f"t{i}" + ("x" if i % 3 == 0 else "")} for i in range(n)]
    write_jsonl(tmp_path / "in.jsonl", rows)
    job_file = write_job(
        tmp_path / "job.toml",
        job_sections(
            endpoint_app.url,
            "in.jsonl",
            "out/r.jsonl",
            output={"commit_rows": 100, "commit_seconds": 0.1},
        ),
    )
    first = run_job(load_job(job_file), progress=False)
    assert first.exit_code == 3 and first.failed == n // 3

    # the server is fixed; it answers 300 retries, then holds the rest until the kill
    endpoint_app.configure(reject_match="", latency_ms=1, hold_after=300, reset=True)
    proc = start_run(job_file, "--retry-errors")
    try:
        wait_for(
            lambda: endpoint_app.stats()["statuses"].get("held", 0) > 0,
            what="300 retries answered and the next one held",
        )
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert 300 < endpoint_app.stats()["requests"] <= 308  # 300 answered, 8 workers held

    # the next run, even without --retry-errors, settles the interrupted rewrite first
    endpoint_app.configure(latency_ms=0, hold_after=-1)
    plain = run_job(load_job(job_file), progress=False)
    assert plain.rows == 0 and plain.exit_code == 3
    assert _all_ids(tmp_path) == list(range(n))  # exactly once, mid-retry state settled
    assert 0 < plain.errors_total < n // 3
    again = run_job(load_job(job_file), retry_errors=True, progress=False)
    assert again.exit_code == 0 and again.errors_total == 0
    assert read_jsonl(tmp_path / "out/r.errors.jsonl") == []
    assert _all_ids(tmp_path) == list(range(n))
    resent = [t for t, k in endpoint_app.received().items() if k > 1]
    assert len(resent) <= 308  # only rows in flight or uncommitted at the kill went twice


async def _until_held(
    app: EndpointApp, task: asyncio.Task[RunSummary], timeout: float = 30
) -> None:
    """Wait (on the run's own loop) until the endpoint holds a request (`hold_after`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not app.stats()["statuses"].get("held", 0):
        if task.done():
            task.result()  # its error, if any
            raise AssertionError("the run ended before the endpoint held a request")
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for a held request")
        await asyncio.sleep(0.01)


class SlowTarget(UrlTarget):
    """A target like a lease: slow to become ready, able to stop the run, put to rest on exit."""

    def __init__(self, url: str, *, ready: asyncio.Event | None = None) -> None:
        super().__init__(url)
        self.ready = ready
        self.exited: tuple[object, ...] | None = None

    async def enter(self) -> None:
        if self.ready is not None:
            await self.ready.wait()

    async def leave(self, error: BaseException | None) -> None:
        self.exited = (type(error) if error else None, error, None)

    def fail(self, reason: str) -> None:
        self.stop(reason)

    def summary_fields(self) -> dict[str, object]:
        return {"endpoint": "test/slow", "on_exit": "pause", "endpoint_state_at_exit": "paused"}


def test_sigint_while_the_endpoint_gets_ready_sends_nothing(
    tmp_path: Path, endpoint_app: EndpointApp
) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"text": f"t{i}"} for i in range(10)])
    job = load_job(
        write_job(tmp_path / "job.toml", job_sections(endpoint_app.url, "in.jsonl", "out/r.jsonl"))
    )

    async def interrupted() -> tuple[int, str | None]:
        control = RunControl()
        target = SlowTarget(endpoint_app.url, ready=asyncio.Event())  # never ready
        task = asyncio.create_task(arun_job(job, control=control, target=target, progress=False))
        await asyncio.sleep(0)
        control.stop("sigint")
        s = await asyncio.wait_for(task, 10)
        return s.exit_code, s.stop_reason

    assert asyncio.run(interrupted()) == (130, "sigint")
    assert endpoint_app.stats()["requests"] == 0


@pytest.mark.parametrize(("reason", "code"), [("deadline", 4), ("endpoint_failed", 5)])
def test_a_target_stop_commits_and_maps_to_its_exit(
    tmp_path: Path, endpoint_app: EndpointApp, reason: str, code: int
) -> None:
    # the first 40 requests are answered, the rest held: the run cannot end before the stop
    endpoint_app.configure(latency_ms=1, hold_after=40)
    write_jsonl(tmp_path / "in.jsonl", [{"text": f"t{i}"} for i in range(400)])
    job = load_job(
        write_job(tmp_path / "job.toml", job_sections(endpoint_app.url, "in.jsonl", "out/r.jsonl"))
    )
    target = SlowTarget(endpoint_app.url)

    async def stopped() -> RunSummary:
        task = asyncio.create_task(arun_job(job, target=target, progress=False))
        await _until_held(endpoint_app, task)
        target.fail(reason)
        endpoint_app.configure(hold_after=-1)  # the held requests answer within the grace
        return await task

    if code == 5:
        with pytest.raises(EndpointFailedError, match="a rerun resumes"):
            asyncio.run(stopped())
    else:
        summary = asyncio.run(stopped())
        assert summary.exit_code == 4 and summary.stop_reason == "deadline"
        assert summary.endpoint == "test/slow" and summary.endpoint_state_at_exit == "paused"
    assert target.exited == (None, None, None)  # put to rest after the commit
    done = len(read_results(tmp_path / "out/r.jsonl"))
    assert 40 <= done < 400
    endpoint_app.configure(latency_ms=0)
    assert run_job(job, progress=False).skipped_done == done
    assert _all_ids(tmp_path) == list(range(400))
