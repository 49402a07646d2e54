"""`[output] order = "input"`: a run that ends with nothing pending leaves its results and its
errors file in input order (JSONL and Parquet), exactly once; a resume that appends rows is
merged into the next rewrite; a kill -9 during the rewrite leaves the completion-order output
whole and the next run finishes the rewrite.

Some rows are slow on the test endpoint (`slow_match`), so they complete after later rows."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from batchrun.io.state import RunState
from batchrun.job import load_job
from batchrun.runner import RunSummary, run_job
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

SLOW = {2, 5, 23}
BAD = {7, 30}


def _text(i: int) -> str:
    if i in SLOW:
        return f"slow{i}"
    if i in BAD:
        return f"bad{i}"
    return f"t{i}"


def _input(path: Path, start: int, stop: int) -> None:
    rows = [{"text": _text(i)} for i in range(start, stop)]
    if start == 0:
        write_jsonl(path, rows)
    else:
        with path.open("ab") as f:
            for row in rows:
                f.write(b'{"text": "%s"}\n' % row["text"].encode())


def _job(tmp: Path, url: str, out: str) -> Path:
    sections = job_sections(
        url,
        str(tmp / "in.jsonl"),
        str(tmp / out),
        output={"order": "input", "commit_rows": 4},
        run={"max_attempts": 1},
    )
    return write_job(tmp / "job.toml", sections)


def _run(job: Path) -> RunSummary:
    return run_job(load_job(job), progress=False)


@pytest.fixture
def app() -> Any:
    with EndpointApp(slow_match="slow", slow_ms=250, reject_match="bad") as app:
        yield app


def _ids(rows: list[dict[str, Any]]) -> list[int]:
    return [int(r["id"]) for r in rows]


def _check(out: Path, errors: Path, n: int) -> None:
    """Results and errors in input order, every row in exactly one of them, once."""
    results, errs = _ids(read_results(out)), _ids(read_jsonl(errors))
    assert results == sorted(results) and errs == sorted(errs)
    assert sorted(results + errs) == list(range(n))
    assert set(errs) == {i for i in BAD if i < n}


@pytest.mark.parametrize("out", ["out/r.jsonl", "out/r.parquet"])
def test_input_order_jsonl_and_parquet(tmp_path: Path, app: EndpointApp, out: str) -> None:
    _input(tmp_path / "in.jsonl", 0, 40)
    summary = _run(_job(tmp_path, app.url, out))
    assert summary.exit_code == 3
    _check(tmp_path / out, tmp_path / "out/r.errors.jsonl", 40)
    meta = committed_meta(tmp_path / out)
    assert meta["ordered"] is True and meta["reorder_sizes"] is None
    if out.endswith(".parquet"):  # one part, the one the state lists
        assert [p.name for p in (tmp_path / out).glob("part-*")] == [
            f"part-{meta['parts']:06d}.parquet"
        ]
        assert meta["live_parts"] == [meta["parts"]]
    else:
        assert meta["results_offset"] == (tmp_path / out).stat().st_size
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


@pytest.mark.parametrize("out", ["out/r.jsonl", "out/r.parquet"])
def test_resume_that_appends_is_merged_in_order(tmp_path: Path, app: EndpointApp, out: str) -> None:
    job = _job(tmp_path, app.url, out)
    _input(tmp_path / "in.jsonl", 0, 20)
    assert _run(job).exit_code == 3
    _check(tmp_path / out, tmp_path / "out/r.errors.jsonl", 20)
    _input(tmp_path / "in.jsonl", 20, 36)  # appended: extends the run
    summary = _run(job)
    assert summary.exit_code == 3 and summary.rows == 16
    _check(tmp_path / out, tmp_path / "out/r.errors.jsonl", 36)
    # every row was sent once over both runs, and a third run sends nothing
    assert app.received() == {_text(i): 1 for i in range(36)}
    assert _run(job).rows == 0
    assert app.received() == {_text(i): 1 for i in range(36)}
    _check(tmp_path / out, tmp_path / "out/r.errors.jsonl", 36)
    meta = committed_meta(tmp_path / out)
    assert meta["results_count"] == 34 and meta["errors_count"] == 2


@pytest.mark.parametrize("step", ["temps", "state"])
def test_kill_during_rewrite_then_next_run_finishes(
    tmp_path: Path, app: EndpointApp, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    out, errors = tmp_path / "out/r.jsonl", tmp_path / "out/r.errors.jsonl"
    _input(tmp_path / "in.jsonl", 0, 32)
    job = _job(tmp_path, app.url, "out/r.jsonl")
    monkeypatch.setenv("_BATCHRUN_TEST_KILL_IN_REORDER", step)
    proc = start_run(job)
    monkeypatch.delenv("_BATCHRUN_TEST_KILL_IN_REORDER")
    code, _, stderr = finish(proc)
    assert code == -signal.SIGKILL, stderr
    # the completion-order output is whole: every row once, the slow ones late
    results = _ids(read_jsonl(out))
    assert results != sorted(results)
    assert sorted(results + _ids(read_jsonl(errors))) == list(range(32))
    meta = committed_meta(out)
    assert meta["ordered"] is False
    assert (meta["reorder_sizes"] is not None) == (step == "state")
    summary = _run(job)  # nothing to send: it finishes the rewrite
    assert summary.rows == 0 and summary.exit_code == 3
    _check(out, errors, 32)
    assert app.received() == {_text(i): 1 for i in range(32)}
    meta = committed_meta(out)
    assert meta["ordered"] is True and meta["results_offset"] == out.stat().st_size
    assert meta["errors_offset"] == errors.stat().st_size
    state = RunState.directory_for(str(out))
    assert RunState.order_log(state).stat().st_size == 8 * meta["results_count"]
    assert [p.name for p in tmp_path.rglob("*.tmp")] == []


def test_parquet_kill_during_rewrite(
    tmp_path: Path, app: EndpointApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parquet: the rewrite is one new part, listed by the state before the old parts go; the
    parts the state lists hold every row once, and the next run leaves only the new part."""
    step = "state"
    out, errors = tmp_path / "out/r.parquet", tmp_path / "out/r.errors.jsonl"
    _input(tmp_path / "in.jsonl", 0, 32)
    job = _job(tmp_path, app.url, "out/r.parquet")
    monkeypatch.setenv("_BATCHRUN_TEST_KILL_IN_REORDER", step)
    proc = start_run(job)
    monkeypatch.delenv("_BATCHRUN_TEST_KILL_IN_REORDER")
    code, _, stderr = finish(proc)
    assert code == -signal.SIGKILL, stderr
    meta = committed_meta(out)
    live = [
        int(r["id"])
        for n in meta["live_parts"]
        for r in pq.read_table(out / f"part-{n:06d}.parquet").to_pylist()
    ]
    assert sorted(live + _ids(read_jsonl(errors))) == list(range(32))
    assert (live == sorted(live)) == (step == "state")
    summary = _run(job)
    assert summary.rows == 0 and summary.exit_code == 3
    _check(out, errors, 32)
    meta = committed_meta(out)
    assert [p.name for p in out.iterdir()] == [f"part-{meta['parts']:06d}.parquet"]
    assert app.received() == {_text(i): 1 for i in range(32)}


def test_retry_errors_then_reorder(tmp_path: Path, app: EndpointApp) -> None:
    """Rows that `--retry-errors` moves to the results land in their input place."""
    out, errors = tmp_path / "out/r.jsonl", tmp_path / "out/r.errors.jsonl"
    _input(tmp_path / "in.jsonl", 0, 32)
    job = _job(tmp_path, app.url, "out/r.jsonl")
    assert _run(job).exit_code == 3
    app.configure(reject_match="bad30")  # bad7 now succeeds
    summary = run_job(load_job(job), progress=False, retry_errors=True)
    assert summary.exit_code == 3
    results, errs = _ids(read_jsonl(out)), _ids(read_jsonl(errors))
    assert results == sorted(results) and 7 in results and errs == [30]
    assert sorted(results + errs) == list(range(32))
    assert committed_meta(out)["ordered"] is True
