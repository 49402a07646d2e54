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
            "[run] concurrency: expected an integer or 'auto', got string '8'",
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


# --- hostile job files, numbers out of range, URLs, tokens (issue 10) --------------------------

import math  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from click.testing import CliRunner  # noqa: E402

from batchrun.cli import main  # noqa: E402
from batchrun.endpoints.auth import resolve_token  # noqa: E402
from batchrun.job import MAX_JOB_FILE_BYTES, RANGES  # noqa: E402
from batchrun.targets import open_target  # noqa: E402


def _sections(**extra: dict[str, Any]) -> dict[str, dict[str, Any]]:
    data: dict[str, dict[str, Any]] = {
        "endpoint": {"provider": "url", "url": "http://127.0.0.1:8080"},
        "input": {"path": "in.jsonl", "field": "text"},
        "output": {"path": "out.jsonl"},
    }
    for section, values in extra.items():
        data.setdefault(section, {}).update(values)
    return data


def _refused(data: dict[str, Any]) -> str:
    with pytest.raises(JobError) as info:
        Job.from_dict(data, source="job.toml")
    assert info.value.exit_code == 2
    text = str(info.value)
    assert text.startswith("job.toml: ") and "\n" not in text
    return text


def test_special_files_are_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)  # no writer: opening it for reading would block forever
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (MAX_JOB_FILE_BYTES + 1))
    started = time.monotonic()
    for path, message in [
        (fifo, "not a regular file (a FIFO)"),
        (tmp_path, "is a directory, not a job file"),
        (Path("/dev/zero"), "not a regular file (a device)"),
        (big, "job file too large"),
    ]:
        with pytest.raises(JobError) as info:
            load_job(path)
        assert message in str(info.value)
    assert time.monotonic() - started < 5
    load_job(write(tmp_path, GOOD + "#" * (MAX_JOB_FILE_BYTES - len(GOOD) - 1)))  # 1 MiB is fine


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (GOOD.encode("utf-16"), "is UTF-16; save it as UTF-8"),
        (GOOD.replace("text-generation", "g\xe9n\xe9ration").encode("latin-1"), "not UTF-8 text"),
        (b"a = " + b"[" * 5000 + b"]" * 5000, "nested too deeply"),
        (b"a = " + b"9" * 5000, "a number is too long"),
    ],
)
def test_undecodable_job_files(tmp_path: Path, raw: bytes, message: str) -> None:
    path = tmp_path / "job.toml"
    path.write_bytes(raw)
    with pytest.raises(JobError, match=message) as info:
        load_job(path)
    assert str(path) in str(info.value)


def test_utf8_with_a_bom_is_read(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_bytes(GOOD.encode("utf-8-sig"))
    assert load_job(path).run.concurrency == 8


def _out_of_range(allowed: Any, hint: Any) -> list[Any]:
    values: list[Any] = [allowed.high + 1, 10**20]
    values.append(allowed.low if allowed.low_open else allowed.low - 1)
    if hint is not int:
        values += [math.nan, math.inf, -math.inf]
    return values


RANGE_CASES = [
    (section, key, value)
    for section, ranges in RANGES.items()
    for key, allowed in ranges.items()
    for value in _out_of_range(allowed, int if isinstance(allowed.high, int) else float)
]


@pytest.mark.parametrize(("section", "key", "value"), RANGE_CASES)
def test_every_numeric_key_has_a_range(section: str, key: str, value: Any) -> None:
    allowed = RANGES[section][key]
    if key == "max_duration" and isinstance(value, float) and value < 0:
        value = -value if math.isinf(value) else value  # a negative duration has its own message
    text = _refused(_sections(**{section: {key: value}}))
    assert f"[{section}] {key}" in text
    if not (key == "max_duration" and value == -1):
        assert allowed.describe() in text


@pytest.mark.parametrize(
    ("section", "key"), [(s, k) for s, ranges in RANGES.items() for k in ranges]
)
def test_range_ends_are_accepted(section: str, key: str) -> None:
    allowed = RANGES[section][key]
    ends = [allowed.high] if allowed.low_open else [allowed.low, allowed.high]
    for value in ends:
        extra: dict[str, dict[str, Any]] = {section: {key: value}}
        if key == "min_replica":
            extra["endpoint"]["max_replica"] = max(1, int(value))
        job = Job.from_dict(_sections(**extra))
        assert getattr(getattr(job, section), key) == value


# The README's table of every key, with these ranges: tests/test_readme.py.


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("budget", {"deadline": dt.date(2026, 1, 1)}, "a date without a time of day"),
        ("budget", {"deadline": [1]}, "expected a time"),
        ("budget", {"max_duration": {"a": 1}}, "expected a duration"),
        ("budget", {"max_duration": 10**400}, "too large"),
        ("run", {"request_timeout": 10**400}, "too large"),
        (
            "run",
            {
                "parameters": {
                    "a": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]
                }
            },
            "nested",
        ),
        ("endpoint", {"min_replica": 2, "max_replica": 1}, "is more than max_replica"),
        ("endpoint", {"token_env": "MY TOKEN"}, "token_env must be an environment variable"),
        ("endpoint", {"token_env": "A\x00"}, "token_env must be"),
        ("output", {"path": "o\x00.jsonl"}, "[output] path must be a path"),
        ("endpoint", {"provider": "hf", "name": "../x"}, "[endpoint] name must be"),
    ],
)
def test_bad_types_and_values(section: str, values: dict[str, Any], message: str) -> None:
    assert message in _refused(_sections(**{section: values}))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://", "has no host"),
        ("https://", "has no host"),
        ("http://:80", "has no host"),
        ("http:///path", "has no host"),
        ("http://h:99999", "Port out of range"),
        ("http://h:-1", "Port could not be cast"),
        ("http://h:abc", "Port could not be cast"),
        ("http://h:0", "port must be from 1 to 65535"),
        ("http://127.0.0.1:", "empty port"),
        ("http://h:/v1", "empty port"),
        ("http://[::1", "Invalid IPv6 URL"),
        ("http://[::1]]:80/", "not a valid host"),
        ("http://a..b/", "not a valid host"),
        ("http://a%zz/", "not a valid host"),
        ("http://user:s3cret@host", "credentials in the URL are refused"),
        ("http://user:s3cret@host:bad", "not a valid URL"),
        ("ftp://host", "must start with http:// or https://"),
        ("http://ho st/", "spaces or control characters"),
        ("http://host/\r\nX: y", "spaces or control characters"),
    ],
)
@pytest.mark.parametrize("key", ["url", "api_url"])
def test_urls_are_parsed_up_front(key: str, url: str, message: str) -> None:
    endpoint = {"url": url} if key == "url" else {"provider": "local", "name": "e", "api_url": url}
    text = _refused(_sections(endpoint=endpoint))
    assert f"[endpoint] {key}" in text and message in text
    assert "s3cret" not in text


def test_good_urls_are_accepted() -> None:
    for url in (
        "http://127.0.0.1:8080",
        "https://X.example/v1/",
        "http://[::1]:1/a?b=c",
        "http://b\xfccher.example",
        "http://xn--bcher-kva.example",
    ):
        assert Job.from_dict(_sections(endpoint={"url": url})).endpoint.url == url


def test_a_token_with_a_line_break_is_refused_and_not_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = Job.from_dict(_sections(endpoint={"token_env": "API_KEY"}), source="job.toml")
    for bad in ("s3cret\r\nX-Evil: 1", "s3cret\nx", "s3\x1bcret"):
        monkeypatch.setenv("API_KEY", bad)
        with pytest.raises(JobError, match=r"^job.toml: the token in \$API_KEY contains") as info:
            open_target(job)
        assert "s3" not in str(info.value)
    monkeypatch.setenv("API_KEY", "s3cret\n")  # a trailing newline (`$(cat file)`) is trimmed
    assert repr(open_target(job)) == "UrlTarget(url='http://127.0.0.1:8080')"
    monkeypatch.setenv("HF_TOKEN", "hf_s3cret\nX: 1")
    with pytest.raises(JobError, match=r"the token in \$HF_TOKEN contains a line break") as info:
        resolve_token()
    assert "s3cret" not in str(info.value)
    hf = Job.from_dict(
        _sections(endpoint={"provider": "hf", "name": "e", "url": None}), source="job.toml"
    )
    with pytest.raises(JobError, match=r"^job.toml: the token in \$HF_TOKEN") as info:
        open_target(hf)  # before the run state is written, not when the lease starts
    assert "s3cret" not in str(info.value)


def test_set_values_that_cannot_be_used() -> None:
    with pytest.raises(JobError, match="not a usable value"):
        parse_overrides(["run.concurrency=" + "9" * 5000])
    with pytest.raises(JobError, match="not a usable value"):
        parse_overrides(["run.parameters=" + "[" * 5000])
    with pytest.raises(JobError, match="already set to a value"):
        parse_overrides(["run.parameters=1", "run.parameters.x=2"])


def test_cli_refuses_a_directory_and_huge_numbers_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["run", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr == f"batchrun: error: {tmp_path}: is a directory, not a job file\n"
    job = write(tmp_path, GOOD)
    for option in ("--concurrency", "--limit"):
        result = CliRunner().invoke(main, ["run", str(job), option, str(10**20)])
        assert result.exit_code == 2
        assert result.stderr.splitlines()[-1].startswith(f"Error: Invalid value for '{option}'")
    result = CliRunner().invoke(main, ["run", str(job), "--set", "run.request_timeout=nan"])
    assert result.exit_code == 2
    assert result.stderr == (
        f"batchrun: error: {job}: [run] request_timeout must be more than 0 and at most "
        "604,800 (seconds), got nan\n"
    )


def test_a_python_callers_limit_has_the_job_files_range(tmp_path: Path) -> None:
    from batchrun.runner import run_job

    job = Job.from_dict(_sections(), source="job.toml", base_dir=tmp_path)
    with pytest.raises(JobError, match=r"\[run\] limit must be from 0 to 4,611,686"):
        run_job(job, limit=10**20, progress=False)
    assert not (tmp_path / "out.jsonl.batchrun").exists()
