"""kill -9 three times mid-run on 20,000 rows, then resume: every id exactly once, files parse,
and only rows in flight or uncommitted at a kill were sent again."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.support.endpoint_app import EndpointApp
from tests.support.run import (
    committed_ids,
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

N = 20_000
KILLS = 3


def _committed_rows(output: Path) -> int:
    try:
        meta = committed_meta(output)
    except Exception:  # the state is not created yet
        return 0
    return int(meta.get("results_count", 0)) + int(meta.get("errors_count", 0))


def _held(app: EndpointApp) -> int:
    return int(app.stats()["statuses"].get("held", 0))


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("out", ["out/r.jsonl", "out/r.parquet"])
def test_kill_9_three_times_then_resume_exactly_once(tmp_path: Path, out: str) -> None:
    output = tmp_path / out
    errors = tmp_path / "out/r.errors.jsonl"
    write_jsonl(tmp_path / "in.jsonl", [{"text": f"t{i}"} for i in range(N)])
    job_file = write_job(
        tmp_path / "job.toml",
        job_sections(
            "http://127.0.0.1:1",  # replaced below
            "in.jsonl",
            out,
            # a long request timeout: on a loaded machine a 10 s one can expire and the retry
            # would re-send a row with no kill in between, which the checks below forbid
            run={"concurrency": 16, "request_timeout": 60},
            output={"commit_rows": 500, "commit_seconds": 0.5},
        ),
    )
    snapshots: list[tuple[set[Any], Counter[str]]] = []
    # a few rows fail for good, so the errors file is part of the exactly-once check too
    with EndpointApp(jitter_ms=2, reject_match="7777") as app:
        job_file.write_text(job_file.read_text().replace("http://127.0.0.1:1", app.url))
        for _ in range(KILLS):
            start_committed = _committed_rows(output)
            # this run gets 1,000 answers, then its requests are held: it cannot end before
            # the kill, which lands with rows in flight and answered rows not yet committed
            held = _held(app)
            app.configure(hold_after=app.stats()["requests"] + 1000)
            proc = start_run(job_file)
            try:
                floor = start_committed + 300
                wait_for(lambda f=floor: _committed_rows(output) > f, timeout=30, what="a commit")
                wait_for(lambda h=held: _held(app) > h, timeout=30, what="a held request")
                proc.send_signal(signal.SIGKILL)
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.communicate()
            # on a loaded machine the server can still be reading the requests the run sent
            # just before the kill: count them in this snapshot, not as re-sent by the next run
            wait_for(lambda: app.open_connections() == 0, timeout=30, what="connections closed")
            snapshots.append((committed_ids(output, errors), Counter(app.received())))
        assert len(snapshots[-1][0]) < N, "the kills came too late to test anything"
        app.configure(hold_after=-1)
        rc, summary, err = finish(start_run(job_file))
        received = Counter(app.received())
    assert rc == 3, err
    refused = {i for i in range(N) if "7777" in f"t{i}"}
    assert summary["results_total"] == N - len(refused) and summary["errors_total"] == len(refused)

    # every id exactly once in results ∪ errors; every file parses
    if output.is_dir():
        parts = sorted(output.iterdir())
        assert all(p.name.startswith("part-") and p.suffix == ".parquet" for p in parts)
        for part in parts:
            pq.read_table(part)
    results = read_results(output)
    error_rows = read_jsonl(errors)
    assert {e["id"] for e in error_rows} == refused
    ids = [r["id"] for r in results] + [e["id"] for e in error_rows]
    assert len(ids) == N and set(ids) == set(range(N))
    for r in results:
        assert r["generated_text"] == f"echo: t{r['id']}"

    # only rows in flight or uncommitted at a kill were sent again
    assert set(received) == {f"t{i}" for i in range(N)}
    for committed, before in snapshots:
        for row_id in committed:
            text = f"t{row_id}"
            assert received[text] == before[text], f"committed row {row_id} was sent again"
    resent = {t for t, n in received.items() if n > 1}
    for text in resent:
        row_id = int(text[1:])
        assert any(
            row_id not in committed and before[text] >= 1 for committed, before in snapshots
        ), f"row {row_id} was sent twice without a kill in between"
    # per kill at most one commit's rows (commit_rows) and those in flight, for both formats
    assert len(resent) <= KILLS * (500 + 2 * 16), len(resent)
