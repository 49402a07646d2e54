"""Bad inputs and unusable output locations: one line and exit 2 before anything is sent, or,
for damage found mid-file, one `bad_input` row per damaged file and every row exactly once.

Each run goes through `batchrun run` (in-process with click's runner, or as a real process where
a hang is the failure) against the test endpoint, whose counters show what reached it.
"""

from __future__ import annotations

import gzip
import os
import socket
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from batchrun.cli import main
from tests.support.endpoint_app import EndpointApp, expected_generated_text
from tests.support.run import ROOT, job_sections, read_jsonl, write_job, write_jsonl


def _cli(job: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["run", str(job), "--quiet", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _assert_refused(code: int, stderr: str, app: EndpointApp, *needles: str) -> None:
    """Exit 2, one line `batchrun: error: ...` naming what is wrong, nothing sent."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("batchrun: error: "), stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert app.stats()["requests"] == 0


def _rows(n: int) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "text": f"row {i} " + "x" * 40} for i in range(n)]


def _job(tmp_path: Path, url: str, inp: str, out: str = "out/r.jsonl", **extra: Any) -> Path:
    return write_job(tmp_path / "job.toml", job_sections(url, inp, out, **extra))


# --- special files as input ----------------------------------------------------------------


@pytest.fixture
def special_file(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    kind = request.param
    if kind == "fifo":
        path = tmp_path / "in.jsonl"
        os.mkfifo(path)
        yield str(path)
    elif kind == "socket":
        path = tmp_path / "in.jsonl"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        try:
            yield str(path)
        finally:
            sock.close()
    else:
        yield "/dev/zero"


@pytest.mark.parametrize("special_file", ["socket", "dev-zero"], indirect=True)
def test_an_input_that_is_not_a_regular_file_is_refused(
    tmp_path: Path, endpoint_app: EndpointApp, special_file: str
) -> None:
    job = _job(tmp_path, endpoint_app.url, special_file, input={"format": "jsonl"})
    code, _, err = _cli(job)
    _assert_refused(code, err, endpoint_app, special_file, "not a regular file")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("special_file", ["fifo"], indirect=True)
def test_a_fifo_as_input_is_refused_by_a_real_process_without_hanging(
    tmp_path: Path, endpoint_app: EndpointApp, special_file: str
) -> None:
    job = _job(tmp_path, endpoint_app.url, special_file)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "batchrun", "run", str(job), "--quiet"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=60,
    )
    _assert_refused(proc.returncode, proc.stderr.decode(), endpoint_app, "a FIFO")
    assert not (tmp_path / "out").exists()


# --- the id field --------------------------------------------------------------------------


@pytest.mark.parametrize("id_field", ["ID", "idd", ""])
def test_an_id_field_missing_from_the_first_row_is_refused_and_writes_no_state(
    tmp_path: Path, endpoint_app: EndpointApp, id_field: str
) -> None:
    write_jsonl(tmp_path / "in.jsonl", _rows(20))
    job = _job(tmp_path, endpoint_app.url, "in.jsonl", input={"id_field": id_field})
    code, _, err = _cli(job)
    _assert_refused(code, err, endpoint_app, "id_field")
    assert not (tmp_path / "out").exists()
    # The corrected job runs at once: no --restart needed.
    job = _job(tmp_path, endpoint_app.url, "in.jsonl", input={"id_field": "id"})
    code, out, err = _cli(job)
    assert code == 0, err
    assert orjson.loads(out)["succeeded"] == 20


# --- ragged CSV ----------------------------------------------------------------------------


def test_ragged_csv_rows_become_bad_input_rows_with_a_huge_concurrency(
    tmp_path: Path, endpoint_app: EndpointApp
) -> None:
    lines = [f"r{i},row {i}" for i in range(300)]
    lines[3] = "r3,row 3,an extra field"
    lines[250] = "only-one-field"
    (tmp_path / "in.csv").write_text("id,text\n" + "\n".join(lines) + "\n")
    job = _job(
        tmp_path,
        endpoint_app.url,
        "in.csv",
        input={"id_field": "id"},
        run={"concurrency": 20_000},
    )
    code, _, err = _cli(job)
    assert "Traceback" not in err and code == 3, err
    results = read_jsonl(tmp_path / "out/r.jsonl")
    errors = read_jsonl(tmp_path / "out/r.errors.jsonl")
    assert sorted(int(r["id"][1:]) for r in results) == [i for i in range(300) if i not in (3, 250)]
    assert all(
        r["generated_text"] == expected_generated_text(f"row {r['id'][1:]}") for r in results
    )
    assert [(e["id"], e["status"], e["source"]) for e in errors] == [
        (3, "bad_input", "in.csv:row 3"),
        (250, "bad_input", "in.csv:row 250"),
    ]
    assert "3 field(s), the header 2" in errors[0]["error"]
    sent = endpoint_app.stats()["requests"]
    assert sent == 298
    code, _, err = _cli(job)
    assert code == 3 and endpoint_app.stats()["requests"] == sent, err


def test_a_csv_that_arrow_cannot_read_is_refused_up_front(
    tmp_path: Path, endpoint_app: EndpointApp
) -> None:
    (tmp_path / "in.csv").write_bytes(b"id,text\nr0,\xff\xfe not utf-8\n")
    job = _job(tmp_path, endpoint_app.url, "in.csv")
    code, _, err = _cli(job)
    _assert_refused(code, err, endpoint_app, "in.csv", "not a readable CSV file")
    assert not (tmp_path / "out").exists()


# --- a damaged .jsonl.gz -------------------------------------------------------------------


def _damaged_gzip(path: Path, rows: list[dict[str, Any]], how: str) -> tuple[int, int]:
    """Write `rows` gzipped, then damage the file; returns (rows readable, offset of damage)."""
    data = b"".join(orjson.dumps(r) + b"\n" for r in rows)
    packed = gzip.compress(data, compresslevel=1, mtime=0)
    if how == "truncated":
        packed = packed[: len(packed) * 2 // 3]
        got = zlib.decompressobj(wbits=31).decompress(packed)
        cut = got.rfind(b"\n") + 1
    else:  # a second gzip member whose deflate stream is garbage: zlib.error
        cut = len(data) * 2 // 3
        cut = data.rfind(b"\n", 0, cut) + 1
        member = gzip.compress(data[:cut], compresslevel=1, mtime=0)
        packed = member + b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + b"\xff" * 64
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(packed)
    return data[:cut].count(b"\n"), cut


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_a_damaged_gzip_settles_its_tail_once_and_a_rerun_is_clean(
    tmp_path: Path, endpoint_app: EndpointApp, how: str
) -> None:
    rows = _rows(3000)
    readable, offset = _damaged_gzip(tmp_path / "data/a.jsonl.gz", rows, how)
    job = _job(tmp_path, endpoint_app.url, "data/a.jsonl.gz", output={"commit_rows": 100})
    code, out, err = _cli(job)
    assert "Traceback" not in err and code == 3, err
    results = read_jsonl(tmp_path / "out/r.jsonl")
    errors = read_jsonl(tmp_path / "out/r.errors.jsonl")
    ids = [r["id"] for r in results] + [e["id"] for e in errors]
    assert len(ids) == len(set(ids)), "an id was settled twice"
    tails = [e for e in errors if isinstance(e["id"], str)]
    assert len(tails) == 1 and tails[0]["status"] == "bad_input", errors
    tail = tails[0]
    assert tail["id"].startswith("a.jsonl.gz@") and "the rest of this file" in tail["error"]
    # Every complete line before the damage was sent once, none after it.
    assert tail["id"] == f"a.jsonl.gz@{offset}" and tail["row"] == readable
    assert sorted(r["id"] for r in results) == list(range(readable)) and errors == [tail]
    assert ("EOFError" if how == "truncated" else "zlib.error") in tail["error"]
    summary = orjson.loads(out)
    assert summary["results_total"] == readable and summary["errors_total"] == 1
    sent = endpoint_app.stats()["requests"]
    code, out, err = _cli(job)
    assert "Traceback" not in err and code == 3, err
    assert endpoint_app.stats()["requests"] == sent
    again = orjson.loads(out)
    assert again["rows"] == 0 and again["skipped_done"] == tail["row"] + 1
    assert read_jsonl(tmp_path / "out/r.errors.jsonl") == errors


def test_a_corrupt_parquet_row_group_settles_the_rest_of_the_file_once(
    tmp_path: Path, endpoint_app: EndpointApp
) -> None:
    path = tmp_path / "in.parquet"
    rows = _rows(3000)
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=1000, compression="snappy")
    column = pq.ParquetFile(path).metadata.row_group(2).column(1)
    data = bytearray(path.read_bytes())
    data[column.data_page_offset + 8 : column.data_page_offset + 200] = b"\xff" * 192
    path.write_bytes(bytes(data))
    job = _job(tmp_path, endpoint_app.url, "in.parquet", input={"id_field": "id"})
    code, _, err = _cli(job)
    assert "Traceback" not in err and code == 3, err
    results = read_jsonl(tmp_path / "out/r.jsonl")
    errors = read_jsonl(tmp_path / "out/r.errors.jsonl")
    assert sorted(r["id"] for r in results) == sorted(r["id"] for r in rows[:2000])
    assert [(e["id"], e["status"], e["row"]) for e in errors] == [
        ("in.parquet@row 2000", "bad_input", 2000)
    ]
    sent = endpoint_app.stats()["requests"]
    assert sent == 2000
    code, _, err = _cli(job)
    assert code == 3 and endpoint_app.stats()["requests"] == sent, err


# --- unusable output locations -------------------------------------------------------------


def _prepare(tmp_path: Path, case: str) -> tuple[str, str]:
    """Set the case up under tmp_path/out; returns (output path, a word the message names)."""
    out = tmp_path / "out"
    out.mkdir()
    if case == "under-a-file":
        (out / "f.jsonl").write_text("")
        return "out/f.jsonl/x.jsonl", "is a file"
    if case == "name-too-long":  # the output's name fits, not the names made from it
        return "out/" + "n" * 240 + ".jsonl", "longer than this filesystem allows (255)"
    if case == "nul-byte":
        return "out/a\0b.jsonl", ""  # the job file's own check may refuse it first
    if case == "state-dir-is-a-file":
        (out / "r.jsonl.batchrun").write_text("")
        return "out/r.jsonl", "r.jsonl.batchrun"
    if case == "lock-is-a-directory":
        (out / "r.jsonl.batchrun" / "lock").mkdir(parents=True)
        return "out/r.jsonl", "lock"
    if case == "errors-path-is-a-directory":
        (out / "r.errors.jsonl").mkdir()
        return "out/r.jsonl", "r.errors.jsonl"
    if case == "parquet-output-is-a-file":
        (out / "r.parquet").write_text("")
        return "out/r.parquet", "Parquet output must be a directory, found a file"
    if case == "inside-a-run-state-dir":
        return "out/r.jsonl.batchrun/x.jsonl", "run-state directory"
    assert case == "path-too-long-for-sqlite"
    deep = out
    while len(str(deep)) < 520:
        deep = deep / ("d" * 60)
    deep.mkdir(parents=True)
    return str(deep.relative_to(tmp_path) / "r.jsonl"), "SQLite"


@pytest.mark.parametrize(
    "case",
    [
        "under-a-file",
        "name-too-long",
        "nul-byte",
        "state-dir-is-a-file",
        "lock-is-a-directory",
        "errors-path-is-a-directory",
        "parquet-output-is-a-file",
        "inside-a-run-state-dir",
        "path-too-long-for-sqlite",
    ],
)
def test_an_unusable_output_location_is_refused_before_anything_is_written(
    tmp_path: Path, endpoint_app: EndpointApp, case: str
) -> None:
    write_jsonl(tmp_path / "in.jsonl", _rows(5))
    output, needle = _prepare(tmp_path, case)
    job = _job(tmp_path, endpoint_app.url, "in.jsonl", output)
    before = _tree(tmp_path / "out")
    code, _, err = _cli(job)
    _assert_refused(code, err, endpoint_app, "[output] path", needle)
    assert _tree(tmp_path / "out") == before, "the refused run created something"
