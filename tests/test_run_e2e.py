"""`run_job` and `batchrun run` end to end against the test endpoint (a real aiohttp server)."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from batchrun.cli import main
from batchrun.job import load_job
from batchrun.runner import run_job
from tests.support.endpoint_app import EndpointApp, expected_embedding, expected_generated_text
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

TEXTS = [f"row number {i}" for i in range(120)]


def _rows(n: int = 120) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "text": TEXTS[i], "n": i} for i in range(n)]


def _job(tmp_path: Path, url: str, inp: str, out: str, **extra: dict[str, Any]) -> Path:
    return write_job(tmp_path / "job.toml", job_sections(url, inp, out, **extra))


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("out", ["out/r.jsonl", "out/r.parquet"])
def test_jsonl_in_and_both_outputs_then_resume_skips_all(
    tmp_path: Path, endpoint_app: EndpointApp, out: str
) -> None:
    write_jsonl(tmp_path / "in.jsonl", _rows())
    job_file = _job(
        tmp_path,
        endpoint_app.url,
        "in.jsonl",
        out,
        input={"id_field": "id"},
        output={"keep_fields": ["n"]},
    )
    summary = run_job(load_job(job_file), progress=False)
    assert summary.exit_code == 0 and summary.succeeded == 120 and summary.failed == 0
    rows = read_results(tmp_path / out)
    assert sorted(r["n"] for r in rows) == list(range(120))
    for r in rows:
        assert r["generated_text"] == expected_generated_text(TEXTS[r["n"]])
        assert r["id"] == f"r{r['n']}" and r["attempts"] == 1 and r["latency_ms"] >= 0
    assert list(rows[0]) == ["id", "n", "generated_text", "attempts", "latency_ms"]
    before = endpoint_app.stats()["requests"]
    again = run_job(load_job(job_file), progress=False)
    assert again.skipped_done == 120 and again.rows == 0 and again.exit_code == 0
    assert endpoint_app.stats()["requests"] == before


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl.gz"])
def test_each_input_format(tmp_path: Path, endpoint_app: EndpointApp, fmt: str) -> None:
    rows = _rows(50)
    path = tmp_path / f"in.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=16)
    elif fmt == "csv":
        path.write_text("id,text,n\n" + "".join(f"{r['id']},{r['text']},{r['n']}\n" for r in rows))
    else:
        with gzip.open(path, "wb") as f:
            f.write(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    job_file = _job(tmp_path, endpoint_app.url, path.name, "out/r.jsonl", input={"id_field": "id"})
    summary = run_job(load_job(job_file), progress=False)
    assert summary.exit_code == 0 and summary.succeeded == 50
    got = {r["id"]: r["generated_text"] for r in read_results(tmp_path / "out/r.jsonl")}
    assert got == {r["id"]: expected_generated_text(r["text"]) for r in rows}


def test_glob_ids_are_relpath_and_position(tmp_path: Path, endpoint_app: EndpointApp) -> None:
    write_jsonl(tmp_path / "data/b.jsonl", [{"text": "b0"}, {"text": "b1"}])
    write_jsonl(tmp_path / "data/a.jsonl", [{"text": "a0"}])
    job_file = _job(tmp_path, endpoint_app.url, "data/*.jsonl", "out/r.parquet")
    assert run_job(load_job(job_file), progress=False).exit_code == 0
    got = {r["id"]: r["generated_text"] for r in read_results(tmp_path / "out/r.parquet")}
    assert got == {"a.jsonl:0": "echo: a0", "b.jsonl:0": "echo: b0", "b.jsonl:1": "echo: b1"}


def test_batched_embeddings(tmp_path: Path) -> None:
    with EndpointApp(task="feature-extraction") as app:
        write_jsonl(tmp_path / "in.jsonl", _rows(30))
        job_file = _job(
            tmp_path,
            app.url,
            "in.jsonl",
            "out/r.jsonl",
            endpoint={"task": "feature-extraction"},
            run={"batch_size": 4},
        )
        assert run_job(load_job(job_file), progress=False).exit_code == 0
        assert app.stats()["requests"] == 8
    rows = read_results(tmp_path / "out/r.jsonl")
    assert sorted(r["id"] for r in rows) == list(range(30))
    for r in rows:
        assert r["embedding"] == pytest.approx(expected_embedding(TEXTS[r["id"]]))


def test_retries_succeed_and_final_4xx_go_to_errors_then_retry_errors(
    tmp_path: Path, endpoint_app: EndpointApp
) -> None:
    endpoint_app.configure(fail_first=6, reject_match="number 7")  # 7, 70..79 are refused
    write_jsonl(tmp_path / "in.jsonl", _rows())
    job_file = _job(tmp_path, endpoint_app.url, "in.jsonl", "out/r.jsonl")
    summary = run_job(load_job(job_file), progress=False)
    refused = {i for i in range(120) if "number 7" in TEXTS[i]}
    assert summary.exit_code == 3 and summary.failed == len(refused) == 11
    assert summary.retries >= 6
    errors = read_jsonl(tmp_path / "out/r.errors.jsonl")
    assert {e["id"] for e in errors} == refused
    e = errors[0]
    assert e["status"] == "http_400" and e["attempts"] == 1 and e["error"]
    assert e["source"] == f"in.jsonl:{e['id'] + 1}" and e["row"] == e["id"]
    results = read_results(tmp_path / "out/r.jsonl")
    assert {r["id"] for r in results} == set(range(120)) - refused
    assert max(r["attempts"] for r in results) > 1

    endpoint_app.configure(reject_match="", reset=True)  # the server is fixed
    fixed = run_job(load_job(job_file), retry_errors=True, progress=False)
    assert fixed.exit_code == 0 and fixed.retried_errors == 11 and fixed.succeeded == 11
    assert fixed.skipped_done == 120 - 11 and fixed.rows + fixed.skipped_done == 120
    assert endpoint_app.stats()["requests"] == 11  # only the errors were sent again
    assert read_jsonl(tmp_path / "out/r.errors.jsonl") == []
    ids = [r["id"] for r in read_results(tmp_path / "out/r.jsonl")]
    assert sorted(ids) == list(range(120))  # every id exactly once


def test_bad_rows_mid_run_go_to_errors_and_the_run_goes_on(
    tmp_path: Path, endpoint_app: EndpointApp
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        b'{"title": "a", "body": "x"}\n{not json\n{"title": "c"}\n{"title": "d", "body": "y"}\n'
    )
    job_file = _job(
        tmp_path,
        endpoint_app.url,
        "in.jsonl",
        "out/r.jsonl",
        input={"field": None, "template": "{title}: {body}"},
    )
    summary = run_job(load_job(job_file), progress=False)
    assert summary.exit_code == 3 and summary.succeeded == 2 and summary.failed == 2
    errors = {e["source"]: e for e in read_jsonl(tmp_path / "out/r.errors.jsonl")}
    assert set(errors) == {"in.jsonl:2", "in.jsonl:3"}
    assert errors["in.jsonl:2"]["status"] == "bad_input"
    assert errors["in.jsonl:2"]["error"].startswith("not JSON")
    assert errors["in.jsonl:3"]["error"] == "template field 'body' missing from the row"
    assert endpoint_app.stats()["requests"] == 2


def test_duplicate_ids_first_wins(tmp_path: Path, endpoint_app: EndpointApp) -> None:
    rows = [{"id": "a", "text": "1"}, {"id": "b", "text": "2"}, {"id": "a", "text": "3"}]
    write_jsonl(tmp_path / "in.jsonl", rows)
    job_file = _job(tmp_path, endpoint_app.url, "in.jsonl", "out/r.jsonl", input={"id_field": "id"})
    summary = run_job(load_job(job_file), progress=False)
    assert summary.exit_code == 3
    assert {r["id"]: r["generated_text"] for r in read_results(tmp_path / "out/r.jsonl")} == {
        "a": "echo: 1",
        "b": "echo: 2",
    }
    (dup,) = read_jsonl(tmp_path / "out/r.errors.jsonl")
    assert dup["status"] == "duplicate_id" and "already at row 0" in dup["error"]
    assert dup["source"] == "in.jsonl:3"
    assert endpoint_app.received() == {"1": 1, "2": 1}


def test_limit_takes_the_same_first_rows(tmp_path: Path, endpoint_app: EndpointApp) -> None:
    write_jsonl(tmp_path / "in.jsonl", _rows())
    job_file = _job(tmp_path, endpoint_app.url, "in.jsonl", "out/r.jsonl")
    code, out, _ = _cli("run", str(job_file), "--limit", "10", "--quiet")
    assert code == 0 and orjson.loads(out)["succeeded"] == 10
    code, out, _ = _cli("run", str(job_file), "--limit", "10", "--quiet")
    assert code == 0 and orjson.loads(out)["skipped_done"] == 10
    assert sorted(r["id"] for r in read_results(tmp_path / "out/r.jsonl")) == list(range(10))
    code, out, err = _cli("run", str(job_file), "--quiet")  # no limit: the rest of the rows
    assert code == 0, err
    assert orjson.loads(out)["succeeded"] == 110 and orjson.loads(out)["skipped_done"] == 10
    assert sorted(r["id"] for r in read_results(tmp_path / "out/r.jsonl")) == list(range(120))


def _bad_job(tmp_path: Path, url: str, case: str) -> tuple[Path, str]:
    write_jsonl(tmp_path / "in.jsonl", [{"title": "t"}])
    (tmp_path / "bad.parquet").write_bytes(b"garbage, not parquet")
    inputs = {
        "missing": ({"path": "nope.jsonl"}, "input file not found"),
        "empty_glob": ({"path": "data/*.jsonl"}, "matches no files"),
        "bad_parquet": ({"path": "bad.parquet"}, "not a readable Parquet file"),
        "first_row": ({"path": "in.jsonl", "field": "body"}, "first row: field 'body' missing"),
    }
    values, message = inputs[case]
    return _job(tmp_path, url, "in.jsonl", "out/r.jsonl", input=values), message


@pytest.mark.parametrize("case", ["missing", "empty_glob", "bad_parquet", "first_row"])
def test_bad_input_before_anything_is_sent_exits_2(
    tmp_path: Path, endpoint_app: EndpointApp, case: str
) -> None:
    job_file, message = _bad_job(tmp_path, endpoint_app.url, case)
    code, out, err = _cli("run", str(job_file), "--quiet")
    assert code == 2, err
    assert message in err and err.startswith("batchrun: error: ") and err.count("\n") == 1
    summary = orjson.loads(out)  # printed on every exit, with the error line
    assert summary["exit_code"] == 2 and message in summary["error"] and summary["rows"] == 0
    assert endpoint_app.stats()["requests"] == 0
    assert not (tmp_path / "out/r.jsonl").exists()


def test_token_env_sends_bearer_and_unset_is_exit_2(
    tmp_path: Path, endpoint_app: EndpointApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_jsonl(tmp_path / "in.jsonl", _rows(3))
    job_file = _job(
        tmp_path, endpoint_app.url, "in.jsonl", "out/r.jsonl", endpoint={"token_env": "MY_TOKEN"}
    )
    code, _, err = _cli("run", str(job_file), "--quiet")
    assert code == 2 and "'MY_TOKEN'" in err and "not set" in err
    monkeypatch.setenv("MY_TOKEN", "s3cret-token")
    code, out, err = _cli("run", str(job_file), "--quiet")
    assert code == 0, err
    assert endpoint_app.stats()["last_headers"]["Authorization"] == "Bearer s3cret-token"
    assert "s3cret" not in out + err
    state = tmp_path / "out/r.jsonl.batchrun"
    assert all(b"s3cret" not in p.read_bytes() for p in state.iterdir() if p.is_file())


def test_changed_input_refused_then_restart_says_what_it_discards(
    tmp_path: Path, endpoint_app: EndpointApp
) -> None:
    write_jsonl(tmp_path / "in.jsonl", _rows(20))
    job_file = _job(tmp_path, endpoint_app.url, "in.jsonl", "out/r.jsonl")
    assert _cli("run", str(job_file), "--quiet")[0] == 0
    write_jsonl(tmp_path / "in.jsonl", [{"text": "changed"}, *_rows(25)[1:]])
    code, out, err = _cli("run", str(job_file), "--quiet")
    assert code == 2 and orjson.loads(out)["exit_code"] == 2
    assert "input file in.jsonl changed in its committed part: bytes 0-" in err, err
    assert "(from line 1)" in err and "--restart" in err
    code, out, err = _cli("run", str(job_file), "--quiet", "--restart")
    assert code == 0
    summary = orjson.loads(out)  # the same line is logged at WARNING (stderr in the CLI)
    assert "discarding 20 result(s), 0 error row(s)" in summary["discarded"]
    assert summary["succeeded"] == 25
    assert len(read_results(tmp_path / "out/r.jsonl")) == 25


def test_second_live_run_on_the_same_output_is_refused(
    tmp_path: Path, endpoint_app: EndpointApp
) -> None:
    # the endpoint holds every request until the first run saw its SIGTERM: it stays live
    endpoint_app.configure(hold_after=0)
    write_jsonl(tmp_path / "in.jsonl", _rows())
    job_file = _job(tmp_path, endpoint_app.url, "in.jsonl", "out/r.jsonl", run={"concurrency": 2})
    log = tmp_path / "first.stderr"
    first = start_run(job_file, stderr=log)
    try:
        wait_for(
            lambda: endpoint_app.stats()["statuses"].get("held", 0) > 0,
            what="the first run's requests to be held",
        )
        code, out, err = _cli("run", str(job_file), "--quiet")
        assert code == 8  # busy, not a bad job: a scheduler tries later
        assert orjson.loads(out)["exit_code"] == 8
        assert f"another run is live on this output (pid {first.pid})" in err
        first.terminate()
        wait_for(lambda: "SIGTERM: finishing" in log.read_text(), what="the first run's SIGTERM")
        endpoint_app.configure(hold_after=-1)
        code, summary, _ = finish(first)
        assert code == 143 and summary["stop_reason"] == "sigterm"
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()


def test_set_and_output_overrides(tmp_path: Path, endpoint_app: EndpointApp) -> None:
    write_jsonl(tmp_path / "in.jsonl", _rows(5))
    job_file = _job(tmp_path, endpoint_app.url, "in.jsonl", "out/r.jsonl")
    other = tmp_path / "elsewhere" / "o.parquet"
    code, out, err = _cli(
        "run",
        str(job_file),
        "--quiet",
        "--output",
        str(other),
        "--set",
        'output.keep_fields=["n"]',
        "--set",
        "input.id_field=id",
        "--concurrency",
        "2",
    )
    assert code == 0, err
    assert orjson.loads(out)["output"] == str(other)
    rows = read_results(other)
    assert sorted((r["id"], r["n"]) for r in rows) == [(f"r{i}", i) for i in range(5)]
    assert not (tmp_path / "out").exists()
    (tmp_path / "out/r.jsonl").mkdir(parents=True)
    code, _, err = _cli("run", str(job_file), "--quiet")
    assert code == 2 and "JSONL output must be a file" in err


def test_parquet_commit_parts_are_merged(tmp_path: Path, endpoint_app: EndpointApp) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"text": f"t{i}"} for i in range(2000)])
    job_file = _job(
        tmp_path, endpoint_app.url, "in.jsonl", "out/r.parquet", output={"commit_rows": 10}
    )
    assert run_job(load_job(job_file), progress=False).exit_code == 0
    out = tmp_path / "out/r.parquet"
    parts = sorted(out.glob("part-*.parquet"))
    assert 1 <= len(parts) < 32  # 40 commits of 50 rows, merged 32 at a time
    merged = [p for p in parts if b"batchrun.merged" in (pq.read_schema(p).metadata or {})]
    assert merged
    assert sorted(r["id"] for r in read_results(out)) == list(range(2000))
    assert run_job(load_job(job_file), progress=False).skipped_done == 2000
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in parts]
