from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from batchrun.errors import JobError
from batchrun.job import Job, load_job, parse_deadline, parse_duration, parse_overrides

GOOD = """
[endpoint]
url = "http://127.0.0.1:8080"
task = "text-generation"

[input]
path = "data/in.jsonl"
id_field = "id"
field = "text"

[output]
path = "out/results.parquet"

[run]
concurrency = 8
request_timeout = 5
[run.parameters]
max_new_tokens = 16

[budget]
max_duration = "1h30m"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "job.toml"
    p.write_text(text)
    return p


def test_load_good_job(tmp_path: Path) -> None:
    job = load_job(write(tmp_path, GOOD))
    assert job.endpoint.provider == "url"  # inferred from url
    assert job.input.path == str(tmp_path / "data/in.jsonl")
    assert job.output.output_format == "parquet"
    assert job.output.errors_path == str(tmp_path / "out/results.errors.jsonl")
    assert job.output.state_dir == str(tmp_path / "out/results.parquet.batchrun")
    assert job.run.request_timeout == 5.0 and isinstance(job.run.request_timeout, float)
    assert job.run.parameters == {"max_new_tokens": 16}
    assert job.budget.max_duration == 5400.0


def test_overrides(tmp_path: Path) -> None:
    job = load_job(write(tmp_path, GOOD), run={"concurrency": 3})
    assert job.run.concurrency == 3
    sets = parse_overrides(["run.parameters.temperature=0.5", "output.path=x.jsonl", "run.model=m"])
    job = load_job(write(tmp_path, GOOD), **sets)
    assert job.run.parameters == {"max_new_tokens": 16, "temperature": 0.5}
    assert job.run.model == "m"
    assert job.output.path == str(Path("x.jsonl").resolve())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ("concurrency = 8", "concurency = 8"),
            "unknown key [run] 'concurency'; did you mean 'concurrency'?",
        ),
        (
            ("concurrency = 8", 'concurrency = "8"'),
            "[run] concurrency: expected an integer, got string '8'",
        ),
        (
            ('path = "out/results.parquet"', 'path = "out/results.csv"'),
            "[output] path must end in .jsonl or .parquet",
        ),
        (
            ('max_duration = "1h30m"', 'max_duration = "soon"'),
            "[budget] max_duration: not a duration",
        ),
        (("[budget]", "[budgets]"), "unknown section 'budgets'; did you mean 'budget'?"),
        (('field = "text"', 'field = "text"\ntemplate = "{a}"'), "has both field and template"),
        (('path = "data/in.jsonl"', 'path = "data/in.xlsx"'), "cannot tell the format"),
        (('url = "http://127.0.0.1:8080"', 'url = "127.0.0.1:8080"'), "must start with http://"),
    ],
)
def test_bad_jobs_name_file_and_key(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    path = write(tmp_path, GOOD.replace(*edit))
    with pytest.raises(JobError) as info:
        load_job(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)
    assert info.value.exit_code == 2


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="job file not found"):
        load_job(tmp_path / "nope.toml")
    with pytest.raises(JobError, match="not valid TOML"):
        load_job(write(tmp_path, "[run\n"))


def test_from_dict_requires_sections() -> None:
    with pytest.raises(JobError, match="missing section \\[output\\]"):
        Job.from_dict({"input": {"path": "a.jsonl"}})
    with pytest.raises(JobError, match="needs \\[endpoint\\] name"):
        Job.from_dict(
            {
                "endpoint": {"provider": "hf"},
                "input": {"path": "a.jsonl"},
                "output": {"path": "o.jsonl"},
            }
        )


def test_durations_and_deadlines() -> None:
    assert parse_duration("2h30m") == 9000
    assert parse_duration("45s") == 45
    assert parse_duration(10) == 10.0
    with pytest.raises(ValueError):
        parse_duration("2x")
    now = dt.datetime(2026, 1, 1, 7, 0, tzinfo=dt.UTC)
    assert parse_deadline("06:00", now=now) == dt.datetime(2026, 1, 2, 6, 0, tzinfo=dt.UTC)
    assert parse_deadline("08:00", now=now) == dt.datetime(2026, 1, 1, 8, 0, tzinfo=dt.UTC)
    assert parse_deadline("2026-01-01T09:00:00Z").tzinfo is not None
