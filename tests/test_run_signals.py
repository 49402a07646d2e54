"""SIGINT and SIGTERM mid-run on a real `batchrun run` process, then resume: exactly once."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from batchrun.job import load_job
from batchrun.runner import run_job
from tests.endpoint_app import EndpointApp
from tests.test_run_support import (
    finish,
    job_sections,
    read_jsonl,
    read_results,
    start_run,
    wait_for,
    write_job,
    write_jsonl,
)

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
    endpoint_app.configure(latency_ms=10)
    job_file = _setup(tmp_path, endpoint_app.url, out)
    proc = start_run(job_file)
    try:
        wait_for(lambda: endpoint_app.stats()["requests"] >= 200, what="requests")
        proc.send_signal(sig)
        rc, summary, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert rc == code, err
    assert summary["stop_reason"] == reason and summary["resumable"] is True
    assert summary["exit_code"] == code
    assert 0 < summary["results_total"] < N
    # in-flight requests got their grace: everything sent was committed, nothing is re-sent
    assert summary["results_total"] == endpoint_app.stats()["requests"]
    endpoint_app.configure(latency_ms=0)
    resumed = run_job(load_job(job_file), progress=False)
    assert resumed.exit_code == 0 and resumed.skipped_done == summary["results_total"]
    assert set(endpoint_app.received().values()) == {1}
    _check_exactly_once(tmp_path, out)


def test_second_sigint_skips_the_grace(tmp_path: Path, endpoint_app: EndpointApp) -> None:
    job_file = _setup(tmp_path, endpoint_app.url, "out/r.jsonl", grace_period=60.0)
    endpoint_app.configure(latency_ms=5)
    log = tmp_path / "stderr.txt"
    proc = start_run(job_file, stderr=log)
    try:
        wait_for(lambda: endpoint_app.stats()["requests"] >= 100, what="requests")
        endpoint_app.configure(latency_ms=120_000)  # what arrives from now on never answers
        seen: dict[str, Any] = {}

        def all_hung() -> bool:
            # in_flight == 8 holds at once (the 5 ms requests), so also wait until no request
            # has arrived or finished for 0.5 s: then the 8 in flight are the hung ones.
            stats = endpoint_app.stats()
            key = (stats["requests"], stats["in_flight"])
            if key != seen.get("key"):
                seen.update(key=key, since=time.monotonic())
            return stats["in_flight"] == 8 and time.monotonic() - seen["since"] >= 0.5

        wait_for(all_hung, what="8 hung requests")
        proc.send_signal(signal.SIGINT)
        wait_for(lambda: "finishing the requests in flight" in log.read_text(), what="1st SIGINT")
        assert proc.poll() is None  # waiting for the hung requests (60 s grace)
        proc.send_signal(signal.SIGINT)
        rc, summary, _ = finish(proc, timeout=20)  # far less than the 60 s grace
        err = log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert rc == 130, err
    assert summary["stop_reason"] == "sigint"
    endpoint_app.configure(latency_ms=0)
    resumed = run_job(load_job(job_file), progress=False)
    assert resumed.exit_code == 0
    resent = [t for t, n in endpoint_app.received().items() if n > 1]
    assert 0 < len(resent) <= 8  # only the hung, cancelled requests were sent again
    _check_exactly_once(tmp_path, "out/r.jsonl")
