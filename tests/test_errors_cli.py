"""`batchrun errors` and `RunSummary.errors_by_status`: why rows failed, without opening files.

Real `python -m batchrun` processes against the test endpoint (tests/support/endpoint_app.py),
whose knobs make rows fail with mixed statuses: a final 400 (`reject_match`), a 500 that
outlasts the retries (`fail_match`), plus rows that never become requests (`bad_input`,
`duplicate_id`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrun.job import load_job
from batchrun.reports import errors_report
from batchrun.runner import run_job
from tests.support.endpoint_app import EndpointApp
from tests.support.run import ROOT, job_sections, read_jsonl, write_job, write_jsonl

ROWS = 40
BAD = {i for i in range(ROWS) if i % 7 == 3}  # a final 400
FAIL = {i for i in range(ROWS) if i % 13 == 5} - BAD  # a 500 on every attempt
NO_TEXT = {11, 12}  # bad_input: no `text` field
DUPLICATES = {30, 31}  # duplicate_id: the id of row 1
EXPECTED = {
    "http_400": len(BAD - NO_TEXT - DUPLICATES),
    "http_500": len(FAIL - NO_TEXT - DUPLICATES),
    "bad_input": len(NO_TEXT),
    "duplicate_id": len(DUPLICATES),
}


def _rows() -> list[dict[str, Any]]:
    rows = []
    for i in range(ROWS):
        text = f"BAD row {i}" if i in BAD else f"FAIL row {i}" if i in FAIL else f"row {i}"
        row: dict[str, Any] = {"id": f"r{i}", "text": text}
        if i in NO_TEXT:
            row = {"id": f"r{i}", "body": "no text field"}
        if i in DUPLICATES:
            row["id"] = "r1"
        rows.append(row)
    return rows


def batchrun(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "batchrun", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def failing_app() -> Any:
    with EndpointApp(
        reject_match="BAD", fail_match="FAIL", fail_message="model crashed (injected)"
    ) as app:
        yield app


def _job(tmp_path: Path, url: str, output: str) -> Path:
    write_jsonl(tmp_path / "in.jsonl", _rows())
    sections = job_sections(
        url,
        str(tmp_path / "in.jsonl"),
        str(tmp_path / output),
        input={"id_field": "id"},
        run={"max_attempts": 2},
    )
    return write_job(tmp_path / "job.toml", sections)


def test_errors_by_status_and_the_errors_command_then_what_retry_errors_resends(
    tmp_path: Path, failing_app: EndpointApp
) -> None:
    output = "out.parquet"  # a Parquet output's errors file is JSONL too (the other tests: JSONL)
    job = _job(tmp_path, failing_app.url, output)
    run = batchrun("run", str(job), "--quiet")
    assert run.returncode == 3, run.stderr
    summary = orjson.loads(run.stdout)
    by_status = summary["errors_by_status"]
    assert {k: v["count"] for k, v in by_status.items()} == EXPECTED
    assert next(iter(by_status)) == "http_400"  # most rows first
    assert by_status["http_500"]["first_error"] == "model crashed (injected)"
    assert by_status["http_400"]["first_error"] == "input rejected: contains 'BAD'"
    assert "missing" in by_status["bad_input"]["first_error"]

    text = batchrun("errors", str(job))  # a job file names its output
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    total = sum(EXPECTED.values())
    assert lines[0] == f"{tmp_path / 'out.errors.jsonl'}: {total} failed row(s), over all runs"
    assert any(line.split()[:2] == ["http_400", str(EXPECTED["http_400"])] for line in lines)
    assert "      in.jsonl:4  id 'r3', 1 attempt(s)" in lines  # row 3: line 4 of the input
    assert "      in.jsonl:6  id 'r5', 2 attempt(s)" in lines  # a 500, tried twice
    retryable = EXPECTED["http_400"] + EXPECTED["http_500"]
    assert lines[-1] == (
        f"--retry-errors would send {retryable} row(s) again (http_400, http_500); "
        "it leaves bad_input, duplicate_id alone"
    )

    js = batchrun("errors", str(tmp_path / output), "--json", "--status", "http_400", "--head", "2")
    assert js.returncode == 0, js.stderr
    report = orjson.loads(js.stdout)
    assert list(report["by_status"]) == ["http_400"]
    assert report["total"] == EXPECTED["http_400"]
    rows = report["by_status"]["http_400"]["rows"]
    assert [(r["id"], r["row"], r["source"]) for r in rows] == [
        ("r3", 3, "in.jsonl:4"),
        ("r10", 10, "in.jsonl:11"),
    ]
    assert report["retry"] == {"rows": EXPECTED["http_400"], "statuses": ["http_400"]}

    # What `batchrun errors` said --retry-errors would send is what it sends.
    failing_app.configure(reject_match="", fail_match="")
    again = batchrun("run", str(job), "--quiet", "--retry-errors")
    assert again.returncode == 3, again.stderr  # bad_input and duplicate_id stay
    resent = orjson.loads(again.stdout)
    assert resent["retried_errors"] == retryable
    assert {k: v["count"] for k, v in resent["errors_by_status"].items()} == {
        "bad_input": EXPECTED["bad_input"],
        "duplicate_id": EXPECTED["duplicate_id"],
    }
    after = batchrun("errors", str(tmp_path / "out.errors.jsonl"))  # the errors file itself
    assert after.returncode == 0, after.stderr
    assert after.stdout.splitlines()[-1] == "--retry-errors would send nothing again"


def test_a_clean_run_has_no_errors_by_status(tmp_path: Path, endpoint_app: EndpointApp) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"text": f"row {i}"} for i in range(5)])
    job = write_job(
        tmp_path / "job.toml",
        job_sections(endpoint_app.url, str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl")),
    )
    summary = run_job(load_job(job), progress=False)
    assert summary.exit_code == 0 and summary.errors_by_status == {}
    report = errors_report(str(job))
    assert report.total == 0 and report.retry == {"rows": 0, "statuses": []}
    assert report.lines() == [f"{tmp_path / 'out.errors.jsonl'}: no failed rows"]


def test_no_such_output_or_job_is_exit_2_with_one_line(tmp_path: Path) -> None:
    for target, words in (
        (tmp_path / "nothing.jsonl", "no such output"),
        (tmp_path / "missing.toml", "not found"),
    ):
        result = batchrun("errors", str(target))
        assert result.returncode == 2
        assert result.stdout == ""
        assert result.stderr.count("\n") == 1 and words in result.stderr, result.stderr
        assert str(target) in result.stderr


def test_only_the_committed_part_of_the_errors_file_counts(tmp_path: Path) -> None:
    """A live run's uncommitted tail (or a crash's torn line) is past the state's offset."""
    output = tmp_path / "out.jsonl"
    errors = tmp_path / "out.errors.jsonl"
    with EndpointApp(reject_match="row") as app:  # every row a final 400
        write_jsonl(tmp_path / "in.jsonl", [{"text": f"row {i}"} for i in range(6)])
        job = write_job(
            tmp_path / "job.toml",
            job_sections(app.url, str(tmp_path / "in.jsonl"), str(output)),
        )
        summary = run_job(load_job(job), progress=False)
    assert summary.exit_code == 3
    assert summary.errors_by_status == {
        "http_400": {"count": 6, "first_error": "input rejected: contains 'row'"}
    }
    committed = len(read_jsonl(errors))
    with errors.open("ab") as f:  # what a run writes before it commits, and a torn line
        f.write(orjson.dumps({"id": 99, "status": "http_503", "error": "x", "row": 99}) + b"\n")
        f.write(b'{"id": 100, "sta')
    report = errors_report(str(output))
    assert report.total == committed == 6
    assert list(report.by_status) == ["http_400"] and report.unreadable == 0
