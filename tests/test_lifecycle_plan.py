"""`batchrun plan` and `batchrun status` without a service: counting, estimates, verdicts."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from click.testing import CliRunner

from batchrun.cli import main
from batchrun.io.state import RunState
from tests.support.lifecycle import write_job, write_rows


def _url_job(tmp: Path, rows: int, **budget: object) -> Path:
    write_rows(tmp / "in.jsonl", rows)
    sections: dict[str, dict[str, object]] = {
        "endpoint": {"provider": "url", "url": "http://127.0.0.1:9/", "task": "text-generation"},
        "input": {"path": "in.jsonl", "field": "text", "id_field": "id"},
        "output": {"path": "out.jsonl"},
    }
    if budget:
        sections["budget"] = dict(budget)
    return write_job(tmp / "job.toml", sections)


def _plan(*args: str) -> dict[str, object]:
    result = CliRunner().invoke(main, ["plan", *args, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert isinstance(data, dict)
    return data


def test_plan_estimates_duration_and_cost_at_a_given_rate(tmp_path: Path) -> None:
    job = _url_job(tmp_path, 3600, price_per_hour=2.0, billing_quantum_s=60, max_cost_usd=1.0)
    plan = _plan(str(job), "--rows-per-second", "10")
    assert plan["input_rows"] == 3600 and plan["remaining"] == 3600
    assert plan["duration_s"] == 360.0
    assert plan["cost_usd"] == 0.2  # 6 started minutes at $2/h
    assert plan["fits"] is True
    over = _plan(str(job), "--rows-per-second", "1")  # an hour: $2 > $1
    assert over["fits"] is False


def test_plan_checks_duration_and_says_when_it_cannot_tell(tmp_path: Path) -> None:
    job = _url_job(tmp_path, 100, max_duration="30s")
    assert _plan(str(job), "--rows-per-second", "2")["fits"] is False  # 50 s
    unknown = _plan(str(job))
    assert unknown["fits"] is None and unknown["duration_s"] is None
    assert any("--rows-per-second" in n for n in unknown["notes"])  # type: ignore[union-attr]


def test_plan_uses_the_last_runs_rate_and_committed_rows(tmp_path: Path) -> None:
    job = _url_job(tmp_path, 1000)
    state = tmp_path / "out.jsonl.batchrun"
    state.mkdir()
    RunState.remember_run(tmp_path / "out.jsonl.batchrun", {"rows_per_s": 50.0, "exit_code": 4})
    plan = _plan(str(job))
    assert plan["rows_per_second"] == 50.0
    assert str(plan["rate_source"]).startswith("measured by the last run")
    assert plan["duration_s"] == 20.0


def test_plan_counts_gzipped_input_by_reading_it(tmp_path: Path) -> None:
    job = _url_job(tmp_path, 1)
    with gzip.open(tmp_path / "in.jsonl.gz", "wt") as f:
        for i in range(42):
            f.write(json.dumps({"id": i, "text": "x"}) + "\n")
    text = job.read_text().replace('"in.jsonl"', '"in.jsonl.gz"')
    job.write_text(text)
    assert _plan(str(job))["input_rows"] == 42


def test_plan_of_a_bad_job_is_exit_2(tmp_path: Path) -> None:
    job = _url_job(tmp_path, 1)
    job.write_text(job.read_text() + "\n[budget]\nmax_cost = 3\n")
    result = CliRunner().invoke(main, ["plan", str(job)])
    assert result.exit_code == 2
    assert "max_cost" in result.output and "did you mean 'max_cost_usd'" in result.output


def test_status_of_an_output_without_state_and_of_no_leases(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["status", str(tmp_path / "nothing.jsonl")])
    assert result.exit_code == 0
    assert "no run state" in result.output
    result = CliRunner().invoke(main, ["status"])
    assert "no leases" in result.output
    result = CliRunner().invoke(main, ["reap"])
    assert result.exit_code == 0 and "nothing to reap" in result.output
