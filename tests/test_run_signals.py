"""SIGINT and SIGTERM mid-run on a real `batchrun run` process, then resume: exactly once."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from batchrun.job import load_job
from batchrun.runner import run_job
from tests.support.endpoint_app import EndpointApp
from tests.support.run import (
    finish,
    job_sections,
    read_jsonl,
    read_results,
    start_run,
    write_job,
    write_jsonl,
)
from tests.support.waiting import wait_for

N = 1500


def _setup(tmp_path: Path, url: str, out: str, **run: object) -> Path:
    write_jsonl(tmp_path / "in.jsonl", [{"text": f"text {i}"} for i in range(N)])
    sections = job_sections(url, "in.jsonl", out, run={"concurrency": 8, **run})
    return write_job(tmp_path / "job.toml", sections)


def _check_exactly_once(tmp_path: Path, out: str) -> None:
    ids = [r["id"] for r in read_results(tmp_path / out)]
    ids += [e["id"] for e in read_jsonl(tmp_path / "out/r.errors.jsonl")]
    assert sorted(ids) == list(range(N))


@pytest.mark.parametrize(
    ("sig", "code", "reason", "out"),
    [
        (signal.SIGINT, 130, "sigint", "out/r.jsonl"),
        (signal.SIGTERM, 143, "sigterm", "out/r.parquet"),
    ],
)
def test_signal_finishes_in_flight_commits_and_resumes(
    tmp_path: Path, endpoint_app: EndpointApp, sig: int, code: int, reason: str, out: str
) -> None:
    # the first 200 requests are answered, the rest are held until the signal was seen: the
    # run cannot end before it, and the held requests answer within the grace
    endpoint_app.configure(latency_ms=1, hold_after=200)
    job_file = _setup(tmp_path, endpoint_app.url, out)
    log = tmp_path / "stderr.txt"
    proc = start_run(job_file, stderr=log)
    try:
        wait_for(lambda: _held(endpoint_app) == 8, what="the 8 workers' requests to be held")
        proc.send_signal(sig)
        wait_for(
            lambda: "finishing the requests in flight" in log.read_text(),
            what=f"batchrun to see the {signal.Signals(sig).name}",
        )
        endpoint_app.configure(hold_after=-1)
        rc, summary, _ = finish(proc)
        err = log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert rc == code, err
    assert summary["stop_reason"] == reason and summary["resumable"] is True
    assert summary["exit_code"] == code
    # in-flight requests got their grace: everything sent was committed, nothing is re-sent
    assert summary["results_total"] == endpoint_app.stats()["requests"] == 208
    endpoint_app.configure(latency_ms=0)
    resumed = run_job(load_job(job_file), progress=False)
    assert resumed.exit_code == 0 and resumed.skipped_done == summary["results_total"]
    assert set(endpoint_app.received().values()) == {1}
    _check_exactly_once(tmp_path, out)


def test_second_sigint_skips_the_grace(tmp_path: Path, endpoint_app: EndpointApp) -> None:
    job_file = _setup(tmp_path, endpoint_app.url, "out/r.jsonl", grace_period=60.0)
    # the first 100 requests are answered; the rest never are (until the resume)
    endpoint_app.configure(latency_ms=1, hold_after=100)
    log = tmp_path / "stderr.txt"
    proc = start_run(job_file, stderr=log)
    try:
        wait_for(lambda: _held(endpoint_app) == 8, what="the 8 workers' requests to be held")
        proc.send_signal(signal.SIGINT)
        wait_for(lambda: "finishing the requests in flight" in log.read_text(), what="1st SIGINT")
        assert proc.poll() is None  # waiting for the held requests (60 s grace)
        proc.send_signal(signal.SIGINT)
        rc, summary, _ = finish(proc, timeout=20)  # far less than the 60 s grace
        err = log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert rc == 130, err
    assert summary["stop_reason"] == "sigint"
    assert summary["results_total"] == 100
    endpoint_app.configure(latency_ms=0, hold_after=-1)
    resumed = run_job(load_job(job_file), progress=False)
    assert resumed.exit_code == 0
    resent = [t for t, n in endpoint_app.received().items() if n > 1]
    assert len(resent) == 8  # only the held, cancelled requests were sent again
    _check_exactly_once(tmp_path, "out/r.jsonl")


def _held(app: EndpointApp) -> int:
    """How many requests the endpoint has held (`hold_after`)."""
    return int(app.stats()["statuses"].get("held", 0))
